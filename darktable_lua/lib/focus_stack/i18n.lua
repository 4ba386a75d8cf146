--[[
    lib/focus_stack/i18n.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    gettext for the script and its libraries: every user string goes through _(), in the
    text domain "focus_stack" (catalogues in <configdir>/lua/locale/, as lua-scripts does).

    local _ = require "lib/focus_stack/i18n"
]]

local dt = require "darktable"

local DOMAIN = "focus_stack"

local gettext = dt.gettext
pcall(function()
  gettext.bindtextdomain(DOMAIN, dt.configuration.config_dir .. "/lua/locale/")
end)

local function translate(msgid)
  local ok, text = pcall(gettext.dgettext, DOMAIN, msgid)
  if ok and text then return text end
  return msgid
end

return translate
