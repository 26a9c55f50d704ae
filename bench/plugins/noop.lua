-- bench/plugins.sh test plugin: an access phase that does nothing, to
-- measure what running one plugin costs a route.
return {
  name = "noop",
  access = function(conf, req) end,
}
