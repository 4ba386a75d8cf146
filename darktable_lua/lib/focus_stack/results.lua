--[[
    lib/focus_stack/results.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    Bringing a stacked image home: import it, make it leader of a group with its sources,
    tag both sides, and carry the sources' tags, rating and title over.

    local results = require "lib/focus_stack/results"
    results.import(images, output, depth_map) -> the imported image, or nil
]]

local dt = require "darktable"
local platform = require "lib/focus_stack/platform"

local results = {}

results.TAG_STACKED = "focus stack|stacked"
results.TAG_SOURCE = "focus stack|source"
results.TAG_DEPTH = "focus stack|depth map"

local function is_own_or_internal_tag(tag)
  local name = tag.name
  return name:match("^darktable|") or name:match("^focus stack|") or name == "focus stack"
end

-- import `output` (and the depth map beside it, when there is one) for the sources `images`
-- (sorted: the middle one is the reference frame); returns the imported image or nil
function results.import(images, output, depth_map)
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

  if depth_map and depth_map ~= "" and platform.file_exists(depth_map) then
    local dm = dt.database.import(depth_map)
    if dm then
      dm:group_with(result)
      dt.tags.attach(dt.tags.create(results.TAG_DEPTH), dm)
    end
  end
  result:make_group_leader()
  return result
end

return results
