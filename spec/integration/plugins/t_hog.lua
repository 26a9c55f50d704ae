-- Test plugin: allocates without bound (fresh strings kept in a table).
return {
  name = "t_hog",
  access = function(conf, req)
    local keep = {}
    local i = 0
    while true do
      i = i + 1
      keep[i] = string.rep("x", 4096) .. i
    end
  end,
}
