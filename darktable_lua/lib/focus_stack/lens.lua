--[[
    lib/focus_stack/lens.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    The lens section's fields, read from its entries into a lens job's "fields", and the
    outcome of a lens job as text for the module.

    local lens = require "lib/focus_stack/lens"
    lens.FIELDS, lens.fields_from(widgets), lens.outcome_text(status)
]]

local _ = require "lib/focus_stack/i18n"
local json = require "lib/focus_stack/json"
local platform = require "lib/focus_stack/platform"

local lens = {}

-- {field name in the lens job, the entry's placeholder}; the entries are widgets.lens_<name>
lens.FIELDS = {
  {"make", _("make")},
  {"model", _("model")},
  {"focal_length", _("focal length (mm)")},
  {"aperture", _("aperture (f-number)")},
  {"lens_info", _("lens info: min/max focal, max aperture at each")},
  {"serial", _("serial number")},
}

local function trim(text)
  return (text:gsub("^%s+", ""):gsub("%s+$", ""))
end
lens.trim = trim

-- a plain decimal ("2.8", "25", "2,8"), locale-free; nil for anything else
local function decimal(text)
  local normalized = text:gsub(",", ".")
  if not normalized:match("^%d+%.?%d*$") then return nil end
  return json.number(normalized)
end

-- the non-empty entries as a lens job's fields: numbers where the bridge wants numbers
-- (a decimal comma is accepted), text otherwise
function lens.fields_from(widgets)
  local fields = {}
  for _, f in ipairs(lens.FIELDS) do
    local w = widgets["lens_" .. f[1]]
    local text = trim(w and w.text or "")
    if text ~= "" then
      if f[1] == "lens_info" then
        -- "25 25 2.8 2.8" (or with decimal commas): min/max focal, max aperture at each
        local nums = {}
        for n in text:gsub("(%d),(%d)", "%1.%2"):gmatch("%d+%.?%d*") do nums[#nums + 1] = decimal(n) end
        fields.lens_info = (#nums == 4) and nums or text
      elseif f[1] == "focal_length" or f[1] == "aperture" then
        fields[f[1]] = decimal(text) or text
      else
        fields[f[1]] = text
      end
    end
  end
  return fields
end

-- one line a file ("name: outcome (message)"), and the job's error last
function lens.outcome_text(status)
  local lines = {}
  if status and status.results then
    for _, r in ipairs(status.results) do
      local line = platform.basename(tostring(r.file or "")) .. ": " .. tostring(r.outcome or "?")
      if r.message and r.message ~= "" then line = line .. " (" .. tostring(r.message) .. ")" end
      lines[#lines + 1] = line
    end
  end
  if status and not status.ok and status.error then
    lines[#lines + 1] = string.format(_("error: %s"), tostring(status.error))
  end
  return table.concat(lines, "\n")
end

return lens
