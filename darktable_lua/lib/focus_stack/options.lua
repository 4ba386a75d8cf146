--[[
    lib/focus_stack/options.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    The options, in one table (options.TABLE, one row an option). Their preferences, their
    widgets and the stack manifest's "options" are all made from it.

    A row:
      name      the preference key (under "focus_stack/") and the manifest's options key
      type      "choice" (a combobox), "bool" (a check button), "folder" / "file" (a file
                chooser button), "text" (an entry; saved by the script when it is used)
      default   the value before the user chose one
      values    choice: the allowed values, in the combobox's order
      labels    choice: what the combobox shows for each value
      label     the widget's label (file chooser: its title; entry: its placeholder)
      tooltip   the widget's tooltip
      manifest  true: sent in the stack manifest's options as it stands (aligned_frames is
                not: the flows turn it into the folder the manifest names)
      fixed     true: not a preference nor a widget, always the default (the manifest's
                settings the module does not offer)

    local options = require "lib/focus_stack/options"
    options.read(name), options.write(name, value)
    options.manifest_options() -> {name = value} for every manifest row
    options.widget(name, on_change) -> a new widget for the row; choice and bool widgets made
      for one name (module and export target) stay in step
]]

local dt = require "darktable"
local _ = require "lib/focus_stack/i18n"

local options = {}

-- the preferences' namespace (darktable stores them as focus_stack/<name>)
local MODULE = "focus_stack"

options.TABLE = {
  {name = "method", type = "choice", default = "pyramid",
   values = {"pyramid", "depthmap"},
   labels = {_("pyramid (sharpest detail)"), _("depth map (smooth surfaces)")},
   label = _("fusion method"),
   tooltip = _("pyramid keeps the finest detail; depth map gives smoother surfaces and fewer halos"),
   manifest = true},
  {name = "align", type = "bool", default = true,
   label = _("align frames"),
   tooltip = _("correct focus breathing and shifts between the frames"),
   manifest = true},
  {name = "noise_averaging", type = "bool", default = true,
   label = _("average noise in flat areas"),
   tooltip = _("where several frames are equally sharp, average them: backgrounds come out "
               .. "less noisy than any single frame; the sharpest detail is kept as it is"),
   manifest = true},
  {name = "format", type = "choice", default = "tiff",
   values = {"tiff", "jpeg", "png"},
   labels = {_("TIFF 16-bit"), _("JPEG"), _("PNG 16-bit")},
   label = _("output format"),
   tooltip = _("16-bit TIFF keeps all the tonal range for further editing"),
   manifest = true},
  {name = "depth_map", type = "bool", default = false,
   label = _("save depth map"),
   tooltip = _("also write and import a depth map beside the result"),
   manifest = true},
  -- not a manifest row as it stands: the flow sends the folder (<result>_aligned) instead
  {name = "aligned_frames", type = "bool", default = false,
   label = _("import aligned frames for retouching"),
   tooltip = _("also write every frame aligned onto the result (<result>_aligned/) and import "
               .. "them into the result's group, tagged focus stack|aligned: paint them into "
               .. "the result with the composite module or an external editor")},
  {name = "reference", type = "choice", default = "middle", values = {"middle"},
   fixed = true, manifest = true},
  {name = "overwrite", type = "bool", default = false, fixed = true, manifest = true},
  {name = "crop", type = "bool", default = false, fixed = true, manifest = true},
  {name = "metadata", type = "bool", default = true, fixed = true, manifest = true},
  {name = "output_folder", type = "folder", default = "",
   label = _("folder for the stacked image"),
   tooltip = _("where the result is written; empty: next to the first source")},
  {name = "executable", type = "file", default = "",
   label = _("focusbridge program"),
   tooltip = _("the focusbridge program; leave unset to find it on PATH")},
  {name = "lens_preset", type = "text", default = "",
   label = _("lens preset name"),
   tooltip = _("a focusbridge lens preset; fields below override it")},
}

-- each type's preference type
local PREF_TYPE = {choice = "string", bool = "bool", folder = "string", file = "string",
                   text = "string"}

local ROWS = {}
for _, row in ipairs(options.TABLE) do ROWS[row.name] = row end

local function row_of(name)
  return ROWS[name] or error("focus_stack: no option " .. tostring(name), 2)
end

function options.read(name)
  local row = row_of(name)
  if row.fixed or not dt.preferences.read(MODULE, "initialized", "bool") then
    return row.default
  end
  local value = dt.preferences.read(MODULE, name, PREF_TYPE[row.type])
  -- a choice outside its list (a hand-edited or older darktablerc, an unset key read as "")
  -- falls back to the default: the bridge refuses unknown values
  if row.type == "choice" then
    for _, v in ipairs(row.values) do
      if v == value then return value end
    end
    return row.default
  end
  return value
end

-- the first write stores every default too, so that a later read finds them all
function options.write(name, value)
  local row = row_of(name)
  assert(not row.fixed, name)
  if not dt.preferences.read(MODULE, "initialized", "bool") then
    for _, r in ipairs(options.TABLE) do
      if not r.fixed then dt.preferences.write(MODULE, r.name, PREF_TYPE[r.type], r.default) end
    end
    dt.preferences.write(MODULE, "initialized", "bool", true)
  end
  dt.preferences.write(MODULE, name, PREF_TYPE[row.type], value)
end

function options.manifest_options()
  local out = {}
  for _, row in ipairs(options.TABLE) do
    if row.manifest then out[row.name] = options.read(row.name) end
  end
  return out
end

local function index_of(list, value)
  for i, v in ipairs(list) do if v == value then return i end end
  return 1
end

-- choice and bool widgets, by option name: all of one name show the same value
local bound = {}
local syncing = false
-- darktable 4.2 may run a widget's callback while the widget is being made (when the table
-- sets the value after the callback): that is no user's choice, and must not write over one
local building = false

local function show(row, w)
  if row.type == "choice" then
    w.selected = index_of(row.values, options.read(row.name))
  else
    w.value = options.read(row.name)
  end
end

local function changed(row, w)
  if syncing or building then return end
  if row.type == "choice" then
    options.write(row.name, row.values[w.selected] or row.default)
  else
    options.write(row.name, w.value)
  end
  -- never left set by an error, or every later change would be ignored
  syncing = true
  local ok, err = pcall(function()
    for _, other in ipairs(bound[row.name] or {}) do show(row, other) end
  end)
  syncing = false
  if not ok then error(err, 0) end
end

local function make_widget(row, name, on_change)
  local w
  if row.type == "choice" then
    w = dt.new_widget("combobox"){
      label = row.label,
      tooltip = row.tooltip,
      selected = index_of(row.values, options.read(name)),
      changed_callback = function(self) changed(row, self) end,
      table.unpack(row.labels)
    }
  elseif row.type == "bool" then
    w = dt.new_widget("check_button"){
      label = row.label,
      tooltip = row.tooltip,
      value = options.read(name),
      clicked_callback = function(self) changed(row, self) end
    }
  elseif row.type == "folder" or row.type == "file" then
    local value = options.read(name)
    w = dt.new_widget("file_chooser_button"){
      title = row.label,
      is_directory = row.type == "folder",
      tooltip = row.tooltip,
      value = value ~= "" and value or nil,
      changed_callback = function(self)
        if building then return end
        options.write(name, self.value or "")
        if on_change then on_change(self) end
      end
    }
  else
    w = dt.new_widget("entry"){
      text = options.read(name),
      placeholder = row.label,
      tooltip = row.tooltip,
      editable = true,
    }
  end
  return w
end

-- a new widget for the option `name`; `on_change(widget)` runs after the preference is
-- written (file choosers)
function options.widget(name, on_change)
  local row = row_of(name)
  assert(not row.fixed, name)
  building = true
  local ok, w = pcall(make_widget, row, name, on_change)
  building = false
  if not ok then error(w, 0) end
  if row.type == "choice" or row.type == "bool" then
    bound[name] = bound[name] or {}
    table.insert(bound[name], w)
  end
  return w
end

return options
