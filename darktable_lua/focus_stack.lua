--[[

    focus_stack.lua - focus stacking for darktable through the focusbridge program

    Copyright (C) 2025 the focusbridge authors

    This program is free software: you can redistribute it and/or modify
    it under the terms of the GNU General Public License as published by
    the Free Software Foundation; either version 3 of the License, or
    (at your option) any later version.

    This program is distributed in the hope that it will be useful,
    but WITHOUT ANY WARRANTY; without even the implied warranty of
    MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
    GNU General Public License for more details.

    You should have received a copy of the GNU General Public License
    along with this program.  If not, see <http://www.gnu.org/licenses/>.
]]
--[[
    focus_stack - stack a focus bracket and get the result back in the library

    Select the frames of a focus bracket in the lighttable and press "focus stack" in the
    "focus stack" module (right panel), or pick the "focus stack" export target in the
    export module.  The frames are exported with their darktable edits as 16-bit TIFF,
    stacked by focusbridge, and the result is imported, made leader of a group with its
    sources and tagged "focus stack|stacked" (the sources get "focus stack|source").
    The sources' tags, and the reference (middle) frame's rating and title, carry over.
    A selection of several brackets (darktable groups, or found by capture time) is split and
    stacked as one queue, each result grouped with its own frames; "check bracket" looks for
    gaps in focus, wasted frames and order, and imports a coverage map. Optionally the
    aligned frames come back too, for retouching.

    The same module has a lens section that rewrites the lens metadata of the selected
    images' original files (focusbridge lens set), shows the outcome per file and can undo.

    ADDITIONAL SOFTWARE NEEDED FOR THIS SCRIPT
    * focusbridge (the `focusbridge` program, with its `run-job` command) and exiftool

    USAGE
    * this script comes with its library folder lib/focus_stack/: install both, either
      - into lua-scripts' tree: this file to <configdir>/lua/contrib/, the folder to
        <configdir>/lua/lib/focus_stack/; start it in the script manager, or add
        require "contrib/focus_stack"  to <configdir>/luarc
      - or standalone: this file to <configdir>/lua/, the folder to
        <configdir>/lua/lib/focus_stack/, and  require "focus_stack"  in <configdir>/luarc
      (the script finds lib/focus_stack/ beside itself or one folder up)
    * select two or more images, press "focus stack" (or "check bracket")

    SAFETY
    * no file name ever appears in a shell command: every name travels inside a JSON
      job manifest written to a private temporary folder (random name, created
      exclusively), and the one command run is `<focusbridge> run-job <manifest>`; on
      Windows through a pure-ASCII run.bat in that folder that names the folder only as
      %~dp0.  Cancel writes a cancel file the bridge honours; a bridge still running after
      a grace period is ended through the pid it wrote itself (kill / taskkill).

    BUGS, COMMENTS, SUGGESTIONS
    * https://github.com/focusbridge/focusbridge/issues
]]

local dt = require "darktable"

local MODULE = "focus_stack"
local MIN_API = "9.0.0"

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- the script's libraries (lib/focus_stack/)
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

-- lib/focus_stack/ lies beside this file (standalone: <dir>/focus_stack.lua) or one folder up
-- (lua-scripts: <lua>/contrib/focus_stack.lua, <lua>/lib/focus_stack/); the folder holding
-- lib/ goes on package.path, as lua-scripts' script manager does for every lib/ it finds
local function find_own_libs()
  local file = debug.getinfo(1, "S").source:match("^@(.+)$")
  if not file then return end
  local function parent(path) return path:match("^(.*)[/\\][^/\\]*$") or "." end
  local dir = parent(file)
  for _, root in ipairs({dir, parent(dir)}) do
    local probe = io.open(root .. "/lib/focus_stack/runner.lua", "rb")
    if probe then
      probe:close()
      local entry = root .. "/?.lua"
      if not package.path:find(entry, 1, true) then package.path = entry .. ";" .. package.path end
      return true
    end
  end
  return false
end

local libs_found = find_own_libs()

local has_libs, libs_err = pcall(require, "lib/focus_stack/runner")
if not has_libs then
  -- no gettext here: it comes from the libraries
  local problem = libs_found and "could not be loaded" or "was not found beside the script or one folder up"
  dt.print("focus stack: its folder lib/focus_stack/ " .. problem .. " (install it with the script)")
  error("focus_stack: lib/focus_stack/ " .. problem .. ": " .. tostring(libs_err), 0)
end

local _ = require "lib/focus_stack/i18n"
local json = require "lib/focus_stack/json"
local lens = require "lib/focus_stack/lens"
local naming = require "lib/focus_stack/naming"
local options = require "lib/focus_stack/options"
local platform = require "lib/focus_stack/platform"
local results = require "lib/focus_stack/results"
local runner = require "lib/focus_stack/runner"
local shell = require "lib/focus_stack/shell"

local PS = platform.PS

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- API version check (lib/dtutils when present, our own otherwise)
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local function api_at_least(min_api)
  local function parts(v)
    local t = {}
    for n in tostring(v):gmatch("%d+") do t[#t + 1] = tonumber(n) end
    return t
  end
  local have, want = parts(dt.configuration.api_version_string), parts(min_api)
  for i = 1, 3 do
    local h, w = have[i] or 0, want[i] or 0
    if h ~= w then return h > w end
  end
  return true
end

local has_du, du = pcall(require, "lib/dtutils")
if has_du and type(du) == "table" and du.check_min_api_version then
  du.check_min_api_version(MIN_API, MODULE)
elseif not api_at_least(MIN_API) then
  dt.print(string.format(_("focus stack needs darktable 4.2 (Lua API %s) or later"), MIN_API))
  error("Minimum API " .. MIN_API .. " not met for " .. MODULE .. ".", 0)
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- script_manager data
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local script_data = {}

script_data.metadata = {
  name = _("focus stack"),
  purpose = _("focus stack a bracket with focusbridge and import the result"),
  author = "focusbridge authors",
  help = "https://github.com/focusbridge/focusbridge/blob/main/docs/darktable-plugin.md"
}

script_data.destroy = nil
script_data.destroy_method = nil
script_data.restart = nil
script_data.show = nil

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- state
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local state = {
  busy = false,              -- a bridge job runs (the runner keeps it)
  current_job = nil,         -- that job (runner); current_job.on_cancel() cancels it
  widgets = {},              -- the module's widgets by name
  module_installed = false,
  event_registered = false,
  storage_runs = 0,          -- export target runs finished
  last_message = nil,        -- the last message shown
  last_command = nil,        -- the last shell command (runner)
  last_manifest = nil,       -- the last manifest written (runner)
  last_result = nil,         -- the last stacked image imported
  last_results = nil,        -- every stacked image the last run imported (one per bracket)
  last_outcome = nil,        -- the module's text about the last run (brackets, results, check)
  last_check = nil,          -- the last check's status (its findings under .check)
  last_coverage = nil,       -- the last check's coverage map, imported
  last_lens_images = nil,    -- the images of the last lens change (undo acts on them)
  last_lens_outcome = nil,   -- the lens section's outcome text
}

local jobs = runner.new(state)

local function notify(msg)
  state.last_message = msg
  dt.print(msg)
  dt.print_log("focus_stack: " .. msg)
end

-- the refusals every job shares, before anything is made: one job at a time, enough
-- images, a program to run; returns the program for run_bridge_job, or nil (message shown)
local function claim_bridge(count, min_count, too_few)
  if state.busy then
    notify(_("focus stack is already running"))
    return nil
  end
  if count < min_count then
    notify(too_few)
    return nil
  end
  local exe, exe_err, from_path = runner.find_bridge(options.read("executable"))
  if not exe then
    notify(exe_err)
    return nil
  end
  return {exe = exe, from_path = from_path}
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- stacking
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

-- what a flow run under pcall gave: its result, or nil once the user was told why not
-- (`ok`, `result`, `message`: pcall's; `failed`: the message with a %s for a Lua error)
local function flow_result(ok, result, message, failed)
  if not ok then
    notify(string.format(failed, tostring(result)))
    return nil
  end
  if not result then notify(message or string.format(failed, _("unknown error"))) end
  return result
end

-- the module's text about the last run (brackets found, results, a check's findings)
local function show_outcome(lines)
  local text = table.concat(lines, "\n")
  state.last_outcome = text
  if state.widgets.stack_outcome then state.widgets.stack_outcome.text = text end
end

-- export the images as 16-bit TIFF into the job folder; returns the frame list or nil
local function export_frames(job, images, progress_cb)
  local fmt = dt.new_format("tiff")
  fmt.bpp = 16
  pcall(function() fmt.max_width = 0; fmt.max_height = 0 end)
  local frames = {}
  job.frames = frames
  for i, img in ipairs(images) do
    if job.cancelled then return nil end
    local path = string.format("%s%sframe_%03d.tif", job.dir, PS, i)
    frames[i] = path
    -- write_image returns false on success on darktable 4.2: trust the file, not the result
    fmt:write_image(img, path)
    local size = platform.file_size(path)
    if not size or size == 0 then
      return nil, string.format(_("the export of %s produced nothing"), img.filename)
    end
    progress_cb(i / #images)
  end
  return frames
end

-- frames darktable exported for `images` (export target): each must hold something
local function check_exports(images, frames)
  for i, img in ipairs(images) do
    local size = frames[i] and platform.file_size(frames[i])
    if not size or size == 0 then
      return nil, string.format(_("the export of %s produced nothing"), img.filename)
    end
  end
  return true
end

-- the stack manifest's options, with the aligned frames' folder when the user wants them
local function stack_options(output, opts)
  if options.read("aligned_frames") then opts.aligned_frames = naming.aligned_folder(output) end
  return opts
end

-- the bridge's warnings (a frame it could not align, a colour profile it could not use) go
-- to the log, and the first one into `msg`, the message shown
local function with_warnings(msg, warnings)
  if type(warnings) ~= "table" or #warnings == 0 then return msg end
  for i = 1, #warnings do dt.print_log("focus_stack: warning: " .. tostring(warnings[i])) end
  msg = msg .. "; " .. string.format(_("warning: %s"), tostring(warnings[1]))
  if #warnings > 1 then
    msg = msg .. " " .. string.format(_("(%d more in the log)"), #warnings - 1)
  end
  return msg
end

-- one bracket, as ever; `images` sorted darktable images, `frames` files darktable exported
-- for them into `job_dir` (export target) or nil, `job_frames` every frame in that folder
-- (nil: `frames`); returns true on success (a message is shown)
local function stack(images, frames, job_dir, job_frames)
  local bridge = claim_bridge(#images, 2, _("focus stack: select at least two images"))
  if not bridge then return false end
  local warnings
  local ok, result, message = pcall(function()
    local sources = {}
    for i, img in ipairs(images) do sources[i] = naming.image_file(img) end
    local output
    -- the manifest, once the job folder exists: the frames first (export: 0-25 %)
    local function manifest(job, bar)
      if not frames then
        local export_err
        frames, export_err = export_frames(job, images, function(f) bar.percent = 0.25 * f end)
        if not frames then
          if job.cancelled then return nil, _("focus stack cancelled") end
          return nil, export_err
        end
      else
        local exported, export_err = check_exports(images, frames)
        if not exported then return nil, export_err end
      end
      if job.cancelled then return nil, _("focus stack cancelled") end
      local opts = options.manifest_options()
      output = naming.output_path(sources, options.read("output_folder"), opts.format,
        {aligned = options.read("aligned_frames")})
      if not output then return nil, _("focus stack: no free name for the result") end
      return {frames = frames, sources = sources, output = output, options = stack_options(output, opts)}
    end
    local status, err = jobs.run_bridge_job("stack", manifest,
      function(bar, f) bar.percent = 0.25 + 0.75 * f end,
      {bridge = bridge, dir = job_dir, frames = job_frames or frames})
    if not status then return nil, err end
    if status.cancelled then return nil, _("focus stack cancelled") end
    if not status.ok then
      return nil, string.format(_("focus stack failed: %s"), tostring(status.error or _("unknown error")))
    end
    local out = status.output or output
    if not platform.file_exists(out) then
      return nil, string.format(_("focus stack failed: %s was not written"), out)
    end
    local imported = results.import(images, out, status.depth_map, status.aligned_frames)
    if not imported then
      return nil, string.format(_("focus stack: could not import %s"), out)
    end
    warnings = status.warnings
    return imported
  end)
  result = flow_result(ok, result, message, _("focus stack failed: %s"))
  if not result then return false end
  notify(with_warnings(string.format(_("focus stack: imported %s"), result.filename), warnings))
  state.last_result = result
  state.last_results = {result}
  return true
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- several brackets in one selection
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

-- the selected images' own darktable groups: 0-based indexes into `images` of the images
-- that share a group leader, for every leader shared by images of two or more files
local function user_groups(images)
  local members, leaders = {}, {}
  for i, img in ipairs(images) do
    local ok, leader = pcall(function() return img.group_leader end)
    local key = (ok and leader and leader.id) or img.id
    if not members[key] then
      members[key] = {}
      leaders[#leaders + 1] = key
    end
    table.insert(members[key], i - 1)
  end
  -- a group of one file is no bracket: darktable puts a duplicate into its original's group
  local groups = {}
  for _, key in ipairs(leaders) do
    local files, distinct = {}, 0
    for _, i in ipairs(members[key]) do
      local file = naming.image_file(images[i + 1])
      if not files[file] then files[file] = true; distinct = distinct + 1 end
    end
    if distinct >= 2 then groups[#groups + 1] = members[key] end
  end
  return groups
end

-- detection can change something: two images carry a capture time in the library, or two
-- share a group (without either, the bridge would find no bracket and the selection is
-- stacked as one, as it always was)
local function worth_detecting(images, groups)
  local timed = 0
  for _, img in ipairs(images) do
    local ok, taken = pcall(function() return img.exif_datetime_taken end)
    if ok and type(taken) == "string" and taken:match("%d") then timed = timed + 1 end
  end
  return timed >= 2 or #groups > 0
end

-- the brackets among `images` (sorted by name). What this script made (results, maps,
-- aligned frames) is never a frame; one darktable group is one bracket; otherwise darktable
-- groups stay as they are and the rest goes through the bridge's detection (`focusbridge
-- brackets`). Returns {brackets = {{image...}}, unassigned = {{image =, reason =}}, detected
-- = true when there is something to show, note = a line for the module} or nil and a
-- message (cancelled, or the bridge never ran)
local function find_brackets(images, bridge)
  local frames, unassigned = {}, {}
  local not_a_frame = _("a focus stack output, not a frame")
  for _, img in ipairs(images) do
    if results.is_output(img) then
      unassigned[#unassigned + 1] = {image = img, reason = not_a_frame}
    else
      frames[#frames + 1] = img
    end
  end
  -- outputs only (and one frame at most): nothing to split, the selection is stacked as ever
  if #frames < 2 then return {brackets = {images}, unassigned = {}} end
  local plan = {brackets = {frames}, unassigned = unassigned, detected = #unassigned > 0}
  local groups = user_groups(frames)
  if (#groups == 1 and #groups[1] == #frames) or not worth_detecting(frames, groups) then
    return plan
  end
  local sources = {}
  for i, img in ipairs(frames) do sources[i] = naming.image_file(img) end
  local manifest = {sources = sources}
  if #groups > 0 then manifest.groups = groups end
  local status, err = jobs.run_bridge_job("brackets", manifest, nil, {bridge = bridge})
  if not status then return nil, err end
  if status.cancelled or status.cancel_requested then return nil, _("focus stack cancelled") end
  if not status.ok then
    plan.note = string.format(_("finding the brackets failed (%s): the selection is stacked as one"),
      tostring(status.error or _("unknown error")))
    return plan
  end
  local brackets = {}
  for _, b in ipairs(status.brackets or {}) do
    local bracket = {}
    for _, k in ipairs(b.indexes or {}) do bracket[#bracket + 1] = frames[k + 1] end
    if #bracket >= 2 then brackets[#brackets + 1] = bracket end
  end
  if #brackets == 0 then
    plan.note = _("no bracket found by capture time or group: the selection is stacked as one")
    return plan
  end
  for _, u in ipairs(status.unassigned or {}) do
    local img = frames[(tonumber(u.index) or -1) + 1]
    if img then unassigned[#unassigned + 1] = {image = img, reason = tostring(u.reason or "")} end
  end
  return {brackets = brackets, unassigned = unassigned, detected = true}
end

-- what the module shows of a plan before it starts: "3 brackets: 6, 5, 6 frames", then each
-- image left out and why
local function plan_lines(plan)
  local lines = {}
  if plan.note then lines[#lines + 1] = plan.note end
  if plan.detected then
    local counts = {}
    for i, b in ipairs(plan.brackets) do counts[i] = tostring(#b) end
    if #plan.brackets == 1 then
      lines[#lines + 1] = string.format(_("1 bracket: %s frames"), counts[1])
    else
      lines[#lines + 1] = string.format(_("%d brackets: %s frames"), #plan.brackets, table.concat(counts, ", "))
    end
  end
  local left_out = _("not stacked: %s (%s)")
  for _, u in ipairs(plan.unassigned) do
    lines[#lines + 1] = string.format(left_out, u.image.filename, u.reason)
  end
  return lines
end

-- several brackets as one queue: one export, one bridge job ("batch": the stacks one after
-- another), one progress bar and cancel; each result comes home grouped with exactly its own
-- frames. `frame_of` {[image id] = exported frame} (export target) or nil, `job_dir` and
-- `job_frames` the export target's folder and every frame in it. Returns true when all
-- were stacked (a message is shown either way)
local function stack_batch(brackets, frame_of, job_dir, job_frames, lines)
  local count = 0
  for _, b in ipairs(brackets) do count = count + #b end
  local bridge = claim_bridge(count, 2, _("focus stack: select at least two images"))
  if not bridge then return false end
  local ok, result, message = pcall(function()
    local stacks
    local function manifest(job, bar)
      if not frame_of then
        -- every frame of every bracket exported once, bracket after bracket: 0-25 %
        local all = {}
        for _, b in ipairs(brackets) do for _, img in ipairs(b) do all[#all + 1] = img end end
        local frames, export_err = export_frames(job, all, function(f) bar.percent = 0.25 * f end)
        if not frames then
          if job.cancelled then return nil, _("focus stack cancelled") end
          return nil, export_err
        end
        frame_of = {}
        for i, img in ipairs(all) do frame_of[img.id] = frames[i] end
      end
      if job.cancelled then return nil, _("focus stack cancelled") end
      local opts = options.manifest_options()
      local taken = {}
      stacks = {}
      for i, b in ipairs(brackets) do
        local sources, frames = {}, {}
        for k, img in ipairs(b) do
          sources[k] = naming.image_file(img)
          frames[k] = frame_of[img.id]
        end
        local exported, export_err = check_exports(b, frames)
        if not exported then return nil, export_err end
        local output = naming.output_path(sources, options.read("output_folder"), opts.format,
          {aligned = options.read("aligned_frames"), taken = taken})
        if not output then return nil, _("focus stack: no free name for the result") end
        stacks[i] = {frames = frames, sources = sources, output = output}
        if options.read("aligned_frames") then stacks[i].aligned_frames = naming.aligned_folder(output) end
      end
      return {stacks = stacks, options = opts}
    end
    local status, err = jobs.run_bridge_job("batch", manifest,
      function(bar, f) bar.percent = 0.25 + 0.75 * f end,
      {bridge = bridge, dir = job_dir, frames = job_frames})
    if not status then return nil, err end
    if not status.results then
      if status.cancelled then return nil, _("focus stack cancelled") end
      return nil, string.format(_("focus stack failed: %s"), tostring(status.error or _("unknown error")))
    end
    -- every stack the bridge finished comes home, whatever happened to the others
    local imported, first_error, warnings = {}, nil, {}
    for i, b in ipairs(brackets) do
      local r = status.results[i] or {}
      local name = stacks and stacks[i] and platform.basename(stacks[i].output) or b[1].filename
      local img
      if r.ok and r.output and platform.file_exists(r.output) then
        img = results.import(b, r.output, r.depth_map, r.aligned_frames)
      end
      if img then
        imported[#imported + 1] = img
        lines[#lines + 1] = string.format(_("%s: %d frames"), img.filename, #b)
        local said = type(r.warnings) == "table" and r.warnings or {}
        for k = 1, #said do  -- (not `for _, ...`: `_` is the translation function)
          warnings[#warnings + 1] = string.format("%s: %s", img.filename, tostring(said[k]))
          lines[#lines + 1] = string.format(_("%s: warning: %s"), img.filename, tostring(said[k]))
        end
      elseif r.cancelled then
        lines[#lines + 1] = string.format(_("%s: cancelled"), name)
      else
        local why = r.ok and string.format(_("could not import %s"), tostring(r.output))
          or tostring(r.error or _("unknown error"))
        first_error = first_error or string.format("%s: %s", name, why)
        lines[#lines + 1] = string.format(_("%s: failed: %s"), name, why)
      end
    end
    return {imported = imported, cancelled = status.cancelled, error = first_error,
      warnings = warnings}
  end)
  local text
  if not ok then
    text = string.format(_("focus stack failed: %s"), tostring(result))
  elseif not result then
    text = message or _("focus stack failed")
  else
    local n, total = #result.imported, #brackets
    if result.cancelled then
      text = string.format(_("focus stack cancelled: %d of %d brackets stacked"), n, total)
    elseif n < total then
      text = string.format(_("focus stack: %d of %d brackets stacked; %s"), n, total, tostring(result.error))
    else
      local names = {}
      for i, img in ipairs(result.imported) do names[i] = img.filename end
      text = string.format(_("focus stack: imported %d results: %s"), n, table.concat(names, ", "))
      text = with_warnings(text, result.warnings)
    end
    if n > 0 then
      state.last_result = result.imported[n]
      state.last_results = result.imported
    end
  end
  lines[#lines + 1] = text
  show_outcome(lines)
  notify(text)
  return ok and result and not result.cancelled and #result.imported == #brackets or false
end

-- the whole flow for a selection: split it into brackets (darktable groups, then the
-- bridge's detection), show what was found, then stack one bracket as ever or several as
-- one queue. `images` sorted; `frames`/`job_dir` as stack(). Returns true on success
local function stack_selection(images, frames, job_dir)
  local bridge = claim_bridge(#images, 2, _("focus stack: select at least two images"))
  if not bridge then return false end
  local ok, plan, err = pcall(find_brackets, images, bridge)
  if not ok then
    notify(string.format(_("focus stack failed: %s"), tostring(plan)))
    return false
  end
  if not plan then
    notify(err)
    return false
  end
  local lines = plan_lines(plan)
  show_outcome(lines)
  -- tell the user before the queue starts, unless it is the one bracket selected
  if #plan.brackets > 1 or #plan.unassigned > 0 or plan.note then notify(table.concat(lines, "; ")) end
  local frame_of
  if frames then
    frame_of = {}
    for i, img in ipairs(images) do frame_of[img.id] = frames[i] end
  end
  if #plan.brackets == 1 then
    local bracket = plan.brackets[1]
    local own
    if frames then
      own = {}
      for i, img in ipairs(bracket) do own[i] = frame_of[img.id] end
    end
    local stacked = stack(bracket, own, job_dir, frames)
    if plan.detected or plan.note then
      lines[#lines + 1] = state.last_message
      show_outcome(lines)
    end
    return stacked
  end
  return stack_batch(plan.brackets, frame_of, job_dir, frames, lines)
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- checking a bracket
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

-- the file types the bridge reads itself (pybridge.frames); others are checked on exports
local BRIDGE_READS = {}
for ext in ([[3fr ari arw bay braw cap cr2 cr3 crw cs1 dcr dcs dng drf eip erf fff gpr iiq jfif
  jpe jpeg jpg k25 kc2 kdc mdc mef mos mrw nef nrw obm orf ori pef png ptx pxn qtk r3d raf raw
  rdc rw2 rwl rwz sr2 srf srw sti tif tiff x3f]]):gmatch("%w+") do BRIDGE_READS[ext] = true end

-- "check bracket": the bridge's quick look at the selected frames (sorted), on the original
-- files where it reads them (else on 16-bit exports), with a coverage map beside the first
-- one, imported into its group. Returns the check's status, or nil (a message is shown)
local function check_selection(images)
  -- what this script made (a result, its maps, aligned frames: a stacked group selected
  -- whole) is no frame of the bracket, as in find_brackets
  local not_ours = {}
  for _, img in ipairs(images) do
    if not results.is_output(img) then not_ours[#not_ours + 1] = img end
  end
  if #not_ours >= 2 then images = not_ours end
  local bridge = claim_bridge(#images, 2, _("check bracket: select at least two images"))
  if not bridge then return nil end
  local ok, result, message = pcall(function()
    local sources, names, direct = {}, {}, true
    for i, img in ipairs(images) do
      sources[i] = naming.image_file(img)
      names[i] = img.filename
      if not BRIDGE_READS[(img.filename:match("%.([^.]+)$") or ""):lower()] then direct = false end
    end
    local coverage = naming.free_path(platform.dirname(sources[1]),
      platform.basename_noext(sources[1]) .. "_coverage", ".png")
    if not coverage then return nil, _("check bracket: no free name for the coverage map") end
    local function manifest(job, bar)
      local fields = {frames = sources, coverage_map = coverage}
      if not direct then
        local frames, export_err = export_frames(job, images, function(f) bar.percent = 0.5 * f end)
        if not frames then
          if job.cancelled then return nil, _("check bracket cancelled") end
          return nil, export_err
        end
        fields.frames, fields.sources = frames, sources
      end
      if job.cancelled then return nil, _("check bracket cancelled") end
      return fields
    end
    local share = direct and 0 or 0.5
    local status, err = jobs.run_bridge_job("check", manifest,
      function(bar, f) bar.percent = share + (1 - share) * f end, {bridge = bridge})
    if not status then return nil, err end
    if status.cancelled then return nil, _("check bracket cancelled") end
    if not status.ok then
      return nil, string.format(_("check bracket failed: %s"), tostring(status.error or _("unknown error")))
    end
    local lines = results.check_lines(status.check or {}, names)
    local map = status.coverage_map and results.import_coverage(status.coverage_map, images)
    if map then lines[#lines + 1] = string.format(_("coverage map: %s"), map.filename) end
    return {status = status, lines = lines, map = map}
  end)
  result = flow_result(ok, result, message, _("check bracket failed: %s"))
  if not result then return nil end
  show_outcome(result.lines)
  state.last_check = result.status
  state.last_coverage = result.map
  notify(string.format(_("check bracket: %s"), table.concat(result.lines, "; ")))
  return result.status
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- lens metadata
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local function refresh_exif(images)
  -- darktable 4.2 has no Lua call to re-read EXIF: run the "selected image[s]" module's
  -- "refresh EXIF" button through its action, acting on a temporary selection
  local previous = dt.gui.selection()
  dt.gui.selection(images)
  local ok = pcall(dt.gui.action, "lib/image/refresh EXIF", 0, "", "", 1.0)
  dt.gui.selection(previous)
  return ok
end

-- one lens job; returns its status (never nil once it was not refused), nil when refused
local function run_lens_job(images, action, preset, fields)
  local bridge = claim_bridge(#images, 1, _("lens data: select at least one image"))
  if not bridge then return nil end
  -- each file once: darktable's duplicates of an image share its file, and an undo that names
  -- a file twice restores it twice (the change before the last one too)
  local files, seen = {}, {}
  for _, img in ipairs(images) do
    local file = naming.image_file(img)
    if not seen[file] then
      seen[file] = true
      files[#files + 1] = file
    end
  end
  local manifest = {action = action, files = files, dry_run = false}
  if action == "set" then
    if preset and preset ~= "" then manifest.preset = preset end
    if fields and next(fields) then manifest.fields = fields end
  end
  local ok, status, message = pcall(jobs.run_bridge_job, "lens", manifest, nil, {bridge = bridge})
  if not ok then return {ok = false, error = tostring(status)} end
  return status or {ok = false, error = message}
end

-- the images whose files have `outcome` in a lens job's results
local function images_with_outcome(images, status, outcome)
  local wanted = {}
  for _, r in ipairs(type(status.results) == "table" and status.results or {}) do
    if type(r) == "table" and r.outcome == outcome then wanted[tostring(r.file)] = true end
  end
  local out = {}
  for _, img in ipairs(images) do
    if wanted[naming.image_file(img)] then out[#out + 1] = img end
  end
  return out
end

local function show_lens_outcome(status)
  local text = lens.outcome_text(status)
  if state.widgets.lens_outcome then state.widgets.lens_outcome.text = text end
  state.last_lens_outcome = text
end

-- "set": write the preset / fields into the selected images' files; "undo": restore the
-- files of the last change. Returns the job's status, or nil when nothing ran
local function lens_apply(action)
  local images
  if action == "undo" then
    images = state.last_lens_images or {}
    if #images == 0 then
      notify(_("lens data: nothing to undo"))
      return nil
    end
  else
    images = {}
    for _, img in ipairs(dt.gui.action_images) do images[#images + 1] = img end
  end
  local status
  if action == "set" then
    local preset = lens.trim(state.widgets.lens_preset and state.widgets.lens_preset.text or "")
    local fields = lens.fields_from(state.widgets)
    if preset == "" and not next(fields) then
      notify(_("lens data: choose a preset or fill in at least one field"))
      return nil
    end
    options.write("lens_preset", preset)
    status = run_lens_job(images, "set", preset, fields)
  else
    status = run_lens_job(images, "undo")
  end
  if not status then return nil end
  show_lens_outcome(status)
  if not status.ok then
    local fmt = action == "set" and _("lens data failed: %s") or _("lens undo failed: %s")
    notify(string.format(fmt, tostring(status.error or _("see the module"))))
    -- failed on some files only: the files it changed all the same stay undoable (a set), or
    -- are no longer to undo (an undo: the next one acts on the files that failed)
    local done = images_with_outcome(images, status, action == "set" and "updated" or "restored")
    if #done > 0 then
      refresh_exif(done)
      state.last_lens_images = action == "set" and done or images_with_outcome(images, status, "error")
    end
  elseif action == "set" then
    state.last_lens_images = images
    refresh_exif(images)
    notify(string.format(_("lens data written to %d image(s)"), #images))
  else
    refresh_exif(images)
    state.last_lens_images = nil
    notify(_("lens data restored"))
  end
  return status
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- GUI
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

-- the stacking options shown in the module and in the export target (kept in step)
local STACK_OPTIONS = {"method", "align", "format", "depth_map", "noise_averaging", "aligned_frames"}

-- one set of them: by name, and in STACK_OPTIONS' order
local function make_option_widgets()
  local set = {}
  for i, name in ipairs(STACK_OPTIONS) do
    set[name] = options.widget(name)
    set[i] = set[name]
  end
  return set
end

local function bridge_status_text()
  local exe, err = runner.find_bridge(options.read("executable"))
  if exe then return string.format(_("focusbridge: %s"), exe) end
  return err
end

local function build_module_widgets()
  local w = state.widgets
  w.options = make_option_widgets()

  w.output_folder = options.widget("output_folder")
  w.output_next_to_source = dt.new_widget("button"){
    label = _("next to the first source"),
    tooltip = _("write the result in the folder of the first selected image"),
    clicked_callback = function()
      options.write("output_folder", "")
      w.output_folder.value = ""
      notify(_("the result goes next to the first source"))
    end
  }
  w.executable = options.widget("executable", function()
    w.bridge_label.label = bridge_status_text()
  end)
  w.bridge_label = dt.new_widget("label"){label = bridge_status_text(), ellipsize = "middle"}

  local function selected()
    local images = {}
    for _, img in ipairs(dt.gui.action_images) do images[#images + 1] = img end
    return naming.sort_by_name(images)
  end
  w.stack_button = dt.new_widget("button"){
    label = _("focus stack"),
    tooltip = _("stack the selected images and import the result; a selection of several "
                .. "brackets (darktable groups, or found by capture time) is stacked bracket by bracket"),
    clicked_callback = function() stack_selection(selected()) end
  }
  w.check_button = dt.new_widget("button"){
    label = _("check bracket"),
    tooltip = _("look for gaps in focus, wasted frames and frames out of order in the selected "
                .. "bracket, and import a coverage map (red: sharp in no frame)"),
    clicked_callback = function() check_selection(selected()) end
  }
  w.stack_outcome = dt.new_widget("text_view"){text = "", editable = false,
    tooltip = _("what the last run found: brackets, results, a check's findings")}

  w.lens_preset = options.widget("lens_preset")
  for _, f in ipairs(lens.FIELDS) do
    w["lens_" .. f[1]] = dt.new_widget("entry"){text = "", placeholder = f[2], tooltip = f[2], editable = true}
  end
  w.lens_apply = dt.new_widget("button"){
    label = _("write lens data"),
    tooltip = _("rewrite the lens metadata of the selected images' original files"),
    clicked_callback = function() lens_apply("set") end
  }
  w.lens_undo = dt.new_widget("button"){
    label = _("undo lens data"),
    tooltip = _("restore the lens metadata from before the last change"),
    clicked_callback = function() lens_apply("undo") end
  }
  w.lens_outcome = dt.new_widget("text_view"){text = "", editable = false,
    tooltip = _("outcome of the last lens change, per file")}

  local children = {dt.new_widget("section_label"){label = _("stacking")}, table.unpack(w.options)}
  local function add(...) for _, widget in ipairs({...}) do children[#children + 1] = widget end end
  add(dt.new_widget("section_label"){label = _("output folder")},
    w.output_folder, w.output_next_to_source,
    dt.new_widget("section_label"){label = _("focusbridge program")},
    w.executable, w.bridge_label,
    dt.new_widget("box"){orientation = "horizontal", w.stack_button, w.check_button},
    w.stack_outcome,
    dt.new_widget("section_label"){label = _("lens metadata")},
    w.lens_preset)
  for _, f in ipairs(lens.FIELDS) do add(w["lens_" .. f[1]]) end
  children[#children + 1] = dt.new_widget("box"){orientation = "horizontal", w.lens_apply, w.lens_undo}
  children[#children + 1] = w.lens_outcome
  return dt.new_widget("box"){orientation = "vertical", table.unpack(children)}
end

local module_widget = build_module_widgets()

local function install_module()
  if state.module_installed then return end
  dt.register_lib(
    MODULE,
    _("focus stack"),
    true,
    false,
    {[dt.gui.views.lighttable] = {"DT_UI_CONTAINER_PANEL_RIGHT_CENTER", 100}},
    module_widget,
    nil,
    nil
  )
  state.module_installed = true
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- export target
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local function storage_supported(_storage, format)
  -- the bridge gets the frames as TIFF (set it to 16 bit in the format's options)
  return format.extension == "tif" or format.extension == "tiff"
end

-- NOTE: initialize never returns a new image list: on darktable 4.2.1 returning {} (or any
-- replacement list) makes the export job crash when it is disposed (seen under Xvfb).
-- Refusing or re-exporting is done by discarding darktable's files in store instead.
local function storage_initialize(_storage, format, images, _high_quality, extra)
  extra.images = {}
  for _, img in ipairs(images) do extra.images[#extra.images + 1] = img end
  -- the refusals of stack() itself, before darktable exports anything for nothing
  if not claim_bridge(#extra.images, 2, _("focus stack: select at least two images")) then
    extra.refused = true
    return nil
  end
  if tonumber(format.bpp) ~= 16 then
    -- darktable 4.2 ignores a bit depth changed here: finalize exports the frames again
    -- at 16 bit itself (darktable's 8-bit files are discarded in store)
    extra.self_export = true
    return nil
  end
  local dir_err
  extra.dir, dir_err = jobs.make_job_dir()
  if not extra.dir then
    notify(dir_err)
    extra.refused = true
    return nil
  end
  extra.frames = {}
  extra.frame_images = {}
  return nil
end

local function storage_store(_storage, image, _format, filename, number, _total, _high_quality, extra)
  extra.stored = extra.stored or {}
  extra.stored[image.id] = true
  if extra.refused or extra.self_export or not extra.dir then
    os.remove(filename)
    return
  end
  -- move darktable's temp file (named after the source: names can collide) into our folder
  local target = string.format("%s%sframe_%03d.tif", extra.dir, PS, number)
  if not os.rename(filename, target) then
    target = filename
  end
  extra.frames[#extra.frames + 1] = target
  extra.frame_images[#extra.frame_images + 1] = image
end

local function storage_finalize_flow(image_table, extra)
  if extra.refused then
    for _, tmpfile in pairs(image_table) do os.remove(tmpfile) end
    return
  end
  -- darktable calls finalize also when it skipped an image (its file is missing), or stopped
  -- at a cancel or a failed export: a bracket with a frame missing is not stacked
  local selected = naming.sort_by_name(extra.images or {})
  for i = 1, #selected do
    local img = selected[i]  -- (not `for _, img`: _ is gettext here)
    if not (extra.stored and extra.stored[img.id]) then
      notify(string.format(_("focus stack: %s was not exported (missing, failed or cancelled): nothing stacked"),
        img.filename))
      for _, tmpfile in pairs(image_table) do os.remove(tmpfile) end
      if extra.dir then jobs.remove_job_dir({dir = extra.dir, frames = extra.frames}) end
      return
    end
  end
  if extra.self_export then
    stack_selection(naming.sort_by_name(extra.images or {}))
    return
  end
  if not extra.dir then return end
  -- pair the frames with their images, sorted by the sources' names
  local pairs_list = {}
  for i, img in ipairs(extra.frame_images) do pairs_list[i] = {img = img, frame = extra.frames[i]} end
  -- images darktable exported without telling store (should not happen) count as missing
  for img, tmpfile in pairs(image_table) do
    local known = false
    for _, p in ipairs(pairs_list) do if p.img.id == img.id then known = true end end
    if not known then pairs_list[#pairs_list + 1] = {img = img, frame = tmpfile, foreign = true} end
  end
  table.sort(pairs_list, function(a, b)
    local fa, fb = naming.image_file(a.img), naming.image_file(b.img)
    if fa == fb then return a.img.id < b.img.id end
    return fa < fb
  end)
  local images, frames = {}, {}
  for i, p in ipairs(pairs_list) do images[i] = p.img; frames[i] = p.frame end
  if #frames == 0 then
    notify(_("focus stack: the export produced nothing"))
    jobs.remove_job_dir({dir = extra.dir, frames = {}})
    return
  end
  local ok = stack_selection(images, frames, extra.dir)
  -- darktable's own temp files that never reached store (foreign) are removed too
  for _, p in ipairs(pairs_list) do if p.foreign then os.remove(p.frame) end end
  -- refused before the job started (busy, no program): the folder is still there
  if not ok then jobs.remove_job_dir({dir = extra.dir, frames = frames}) end
end

local function storage_finalize(_storage, image_table, extra)
  local ok, err = pcall(storage_finalize_flow, image_table, extra)
  if not ok then notify(string.format(_("focus stack failed: %s"), tostring(err))) end
  state.storage_runs = state.storage_runs + 1
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- registration
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local storage_children = make_option_widgets()
storage_children[#storage_children + 1] =
  dt.new_widget("label"){label = _("output folder and program: see the focus stack module")}
local storage_widget = dt.new_widget("box"){orientation = "vertical", table.unpack(storage_children)}

local function register_storage()
  dt.register_storage(MODULE, _("focus stack"), storage_store, storage_finalize,
    storage_supported, storage_initialize, storage_widget)
end

register_storage()

if dt.gui.current_view().id == "lighttable" then
  install_module()
else
  dt.register_event(MODULE, "view-changed",
    function(_event, _old_view, new_view)
      if new_view.name == "lighttable" then install_module() end
    end
  )
  state.event_registered = true
end

local function destroy()
  dt.destroy_storage(MODULE)
  if state.module_installed then dt.gui.libs[MODULE].visible = false end
  if state.event_registered then
    pcall(dt.destroy_event, MODULE, "view-changed")
    state.event_registered = false
  end
end

local function restart()
  register_storage()
  if state.module_installed then
    dt.gui.libs[MODULE].visible = true
  else
    install_module()
  end
end

script_data.destroy = destroy
script_data.restart = restart
script_data.destroy_method = "hide"
script_data.show = restart

-- for tests and for other scripts: the module's widgets and internals (read-only use)
script_data.focus_stack = {
  widgets = state.widgets,
  state = state,
  json = json,
  quote = shell.quote,
  stack = function(images) return stack_selection(naming.sort_by_name(images)) end,
  check = function(images) return check_selection(naming.sort_by_name(images)) end,
  lens = lens_apply,
  -- what the progress job's cancel button does
  cancel = function()
    local job = state.current_job
    if job and job.on_cancel then job.on_cancel(); return true end
    return false
  end,
}

return script_data
