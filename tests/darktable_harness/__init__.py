"""Run the real darktable 4.2 under Xvfb with the focus_stack plugin and a Lua driver."""
