--[[
    lib/focus_stack/results.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    Bringing results home: import a stacked image, make it leader of a group with its sources,
    tag both sides, carry the sources' tags, rating and title over, and bring its depth map
    and aligned frames into the group; import a check's coverage map beside the frames; and
    the text the module shows for a check.

    local results = require "lib/focus_stack/results"
    results.import(images, output, depth_map, aligned_frames) -> the imported image, or nil
    results.import_coverage(map, images) -> the imported map, or nil
    results.is_output(image) -> true for an image this script made (tagged focus stack|...)
    results.check_lines(check, names) -> the check's findings, one line each
]]

local dt = require "darktable"
local _ = require "lib/focus_stack/i18n"
local platform = require "lib/focus_stack/platform"

local results = {}

results.TAG_STACKED = "focus stack|stacked"
results.TAG_SOURCE = "focus stack|source"
results.TAG_DEPTH = "focus stack|depth map"
results.TAG_ALIGNED = "focus stack|aligned"
results.TAG_COVERAGE = "focus stack|coverage"

-- what this script imports (never a frame of a bracket)
local OUTPUT_TAGS = {[results.TAG_STACKED] = true, [results.TAG_DEPTH] = true,
                     [results.TAG_ALIGNED] = true, [results.TAG_COVERAGE] = true}

local function is_own_or_internal_tag(tag)
  local name = tag.name
  return name:match("^darktable|") or name:match("^focus stack|") or name == "focus stack"
end

function results.is_output(image)
  for _, tag in ipairs(dt.tags.get_tags(image)) do
    if OUTPUT_TAGS[tag.name] then return true end
  end
  return false
end

-- import a side file of `result` into its group, tagged `tag`; returns it or nil
local function import_beside(path, result, tag)
  if not path or path == "" or not platform.file_exists(path) then return nil end
  local img = dt.database.import(path)
  if img then
    img:group_with(result)
    dt.tags.attach(dt.tags.create(tag), img)
  end
  return img
end

-- import `output` (and the depth map and aligned frames beside it, when there are some) for
-- the sources `images` (sorted: the middle one is the reference frame); returns the imported
-- image or nil
function results.import(images, output, depth_map, aligned_frames)
  local result = dt.database.import(output)
  if not result then return nil end
  local reference = images[math.floor((#images - 1) / 2) + 1]

  -- group: every source joins the result's group, the result leads
  for _, img in ipairs(images) do img:group_with(result) end
  result:make_group_leader()

  -- tags: the union of the sources' own tags, plus ours
  local seen = {}
  for _, img in ipairs(images) do
    for _, tag in ipairs(dt.tags.get_tags(img)) do
      if not is_own_or_internal_tag(tag) and not seen[tag.name] then
        seen[tag.name] = true
        dt.tags.attach(tag, result)
      end
    end
  end
  dt.tags.attach(dt.tags.create(results.TAG_STACKED), result)
  local source_tag = dt.tags.create(results.TAG_SOURCE)
  for _, img in ipairs(images) do dt.tags.attach(source_tag, img) end

  -- rating and title: the reference frame's, title falls back to the first non-empty one
  local rating = reference.rating
  if type(rating) == "number" and rating >= 0 then result.rating = rating end
  local title = reference.title
  if not title or title == "" then
    for _, img in ipairs(images) do
      if img.title and img.title ~= "" then title = img.title; break end
    end
  end
  if title and title ~= "" then result.title = title end

  import_beside(depth_map, result, results.TAG_DEPTH)
  -- the aligned frames, for retouching (docs/retouch.md): in the group, tagged
  for _, frame in ipairs(type(aligned_frames) == "table" and aligned_frames or {}) do
    import_beside(frame, result, results.TAG_ALIGNED)
  end
  result:make_group_leader()
  return result
end

-- a check's coverage map joins the group of the first checked image (a group of its own
-- when that image has none), tagged focus stack|coverage; the group's leader stays
function results.import_coverage(map, images)
  return import_beside(map, images[1], results.TAG_COVERAGE)
end

-- the findings of a check (the bridge's check JSON, frames counted from 0) with the frames'
-- `names` (1-based, in the order checked), one line each
function results.check_lines(check, names)
  local function name(i) return names[(tonumber(i) or -1) + 1] or tostring(i) end
  local function list(indexes)
    local out = {}
    for i, k in ipairs(indexes or {}) do out[i] = name(k) end
    return table.concat(out, ", ")
  end
  local function percent(x) return string.format("%.1f %%", 100 * (tonumber(x) or 0)) end
  local lines = {}
  local function add(fmt, ...) lines[#lines + 1] = string.format(fmt, ...) end
  -- each finding: its items, its message, and the message's arguments for one item
  local FINDINGS = {
    {check.gap_details, _("gap between %s and %s: %s of the picture is sharp in neither"),
     function(g) return name(g.between[1]), name(g.between[2]), percent(g.area_fraction) end},
    {check.duplicates, _("duplicates: %s and %s are focused alike"),
     function(d) return name(d[1]), name(d[2]) end},
    {check.exposure_jumps, "%s", function(e)
      local change = tonumber(e.change) or 0
      if change >= 1 then  -- a frame was black: no percent helps
        return string.format(_("exposure jump: %s is %.1f times as bright as %s"),
          name(e.between[2]), 1 + change, name(e.between[1]))
      end
      local message = change >= 0 and _("exposure jump: %s is %.1f %% brighter than %s")
        or _("exposure jump: %s is %.1f %% darker than %s")
      return string.format(message, name(e.between[2]), 100 * math.abs(change), name(e.between[1]))
    end},
    {check.motion, _("subject motion between %s and %s: %s of the picture"),
     function(m) return name(m.between[1]), name(m.between[2]), percent(m.area_fraction) end},
  }
  local problems = false
  local stray = check.stray or {}
  for k = 1, #stray do  -- (not `for _, ...`: `_` is the translation function)
    problems = true
    add(_("%s does not belong to the bracket: it lines up with no frame of the bracket beside it "
      .. "and looks like none (left out of the rest)"), name(stray[k]))
  end
  if check.order == "out of order" then
    problems = true
    add(_("out of focus order: in focus order they would be %s"), list(check.suggested_order))
  else
    add(_("order: %s"), tostring(check.order or "?"))
  end
  for i, finding in ipairs(FINDINGS) do
    local items, message, args = finding[1], finding[2], finding[3]
    for _, item in ipairs(items or {}) do
      problems = true
      add(message, args(item))
    end
    if i == 1 and check.wasted and #check.wasted > 0 then  -- after the gaps
      problems = true
      add(_("wasted: %s (the sharpest nowhere)"), list(check.wasted))
    end
  end
  local note = _("note: %s")
  for _, text in ipairs(check.notes or {}) do add(note, tostring(text)) end
  if not problems then  -- the notes may say what was not judged
    add("%s", check.judged_all == false and _("no problems found in what could be judged")
      or _("no problems found"))
  end
  return lines
end

return results
