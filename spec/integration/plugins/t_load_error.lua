-- Test plugin that raises while it is loaded.
error("t_load_error refuses to load")
