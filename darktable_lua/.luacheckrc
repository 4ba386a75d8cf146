-- luacheck configuration for the darktable plugin (focus_stack.lua and lib/focus_stack/).
-- Run from the repository root:  luacheck --config darktable_lua/.luacheckrc darktable_lua
-- (luacheck looks for .luacheckrc in the current folder and above, not beside the files),
-- or inside darktable_lua/:  luacheck .

-- darktable 4.2 and later embed Lua 5.4
std = "lua54"

-- darktable's API arrives through require "darktable": the plugin defines and reads no
-- globals beyond Lua's own (std above), so none are allowed here

-- lines up to 120 characters; the two message ids longer than that are marked in place
-- (-- luacheck: push no max line length), so plain `luacheck darktable_lua` passes too
max_line_length = 120
