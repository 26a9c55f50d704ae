-- Test plugin: never returns. mode "plain": a bare endless loop; "pcall": the
-- loop swallows every error it can; "sort": spins inside a comparator that C
-- (table.sort) calls, where the coroutine cannot yield.
return {
  name = "t_loop",
  schema = { mode = { type = "string", default = "plain", one_of = { "plain", "pcall", "sort" } } },
  access = function(conf, req)
    local n = 0
    if conf.mode == "plain" then
      while true do n = n + 1 end
    elseif conf.mode == "pcall" then
      while true do
        pcall(function() while true do n = n + 1 end end)
      end
    else
      while true do
        pcall(table.sort, { 3, 2, 1 }, function(a, b) while true do n = n + 1 end end)
      end
    end
  end,
}
