-- Test plugin: never returns. mode "plain": a bare endless loop; "pcall": the
-- loop swallows every error it can; "sort": spins inside a comparator that C
-- (table.sort) calls, where the coroutine cannot yield; "wrap" and "resume":
-- spins inside a coroutine of the plugin's own (coroutine.wrap, or
-- coroutine.create + resume), again and again when it is stopped.
return {
  name = "t_loop",
  schema = { mode = { type = "string", default = "plain", one_of = { "plain", "pcall", "sort", "wrap", "resume" } } },
  access = function(conf, req)
    local n = 0
    if conf.mode == "plain" then
      while true do n = n + 1 end
    elseif conf.mode == "pcall" then
      while true do
        pcall(function() while true do n = n + 1 end end)
      end
    elseif conf.mode == "wrap" then
      while true do
        pcall(coroutine.wrap(function() while true do n = n + 1 end end))
      end
    elseif conf.mode == "resume" then
      while true do
        coroutine.resume(coroutine.create(function() while true do n = n + 1 end end))
      end
    else
      while true do
        pcall(table.sort, { 3, 2, 1 }, function(a, b) while true do n = n + 1 end end)
      end
    end
  end,
}
