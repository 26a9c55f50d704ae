-- Test plugin with a syntax error on line 3.
return {
  access = function(conf, req) if then end,
}
