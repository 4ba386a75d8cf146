--[[
    lib/focus_stack/naming.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    Names: random names for job folders, the order of the frames, and a free name for the
    result together with the maps the bridge writes beside it.

    local naming = require "lib/focus_stack/naming"
]]

local dt = require "darktable"
local platform = require "lib/focus_stack/platform"

local IS_WINDOWS, PS = platform.IS_WINDOWS, platform.PS

local naming = {}

-- the extension of the result for each output format
naming.FORMAT_EXT = {tiff = ".tif", jpeg = ".jpg", png = ".png"}

local function to_hex(bytes)
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- FNV-1a, 64 bit (Lua integers wrap around)
local function fnv1a(text, h)
  h = h or 0xcbf29ce484222325
  for i = 1, #text do
    h = (h ~ text:byte(i)) * 0x100000001b3
  end
  return h
end

local name_counter = 0

-- 24 hex digits no other user can guess; never math.randomseed: that would reseed the
-- generator every other script shares
function naming.random_name()
  if not IS_WINDOWS then
    local f = io.open("/dev/urandom", "rb")
    if f then
      local bytes = f:read(12)
      f:close()
      if bytes and #bytes == 12 then return to_hex(bytes) end
    end
  end
  -- Windows has no /dev/urandom: mix what changes between calls and processes
  name_counter = name_counter + 1
  local tmpname = ""
  if IS_WINDOWS then
    -- Lua on Windows uses the C library's tmpnam: it only makes up a name, creates nothing
    local ok, name = pcall(os.tmpname)
    if ok and name then tmpname = name end
  end
  local material = table.concat({tmpname, tostring(os.clock()), tostring(os.time()),
    tostring({}), tostring(naming.random_name), tostring(name_counter),
    tostring(dt.configuration.tmp_dir)}, "|")
  local h1 = fnv1a(material)
  local h2 = fnv1a(material, h1 ~ 0x5bd1e995)
  return string.format("%016x%08x", h1, h2 & 0xffffffff)
end

-- the original file of a darktable image
function naming.image_file(image)
  return image.path .. PS .. image.filename
end

-- the images sorted by their files' paths (near-to-far as cameras number them), then by id
function naming.sort_by_name(images)
  local sorted = {}
  for _, img in ipairs(images) do sorted[#sorted + 1] = img end
  table.sort(sorted, function(a, b)
    local fa, fb = naming.image_file(a), naming.image_file(b)
    if fa == fb then return a.id < b.id end
    return fa < fb
  end)
  return sorted
end

-- the folder of a result's aligned frames: <folder>/<result stem>_aligned
function naming.aligned_folder(output)
  return platform.dirname(output) .. PS .. platform.basename_noext(output) .. "_aligned"
end

-- a file or a folder of that name exists
local function taken_on_disk(path)
  return platform.file_exists(path) or platform.file_exists(path .. PS .. ".")
end

-- the first <folder>/<first source>_stacked[_N].<ext> whose whole set is free: the result and
-- the maps the bridge writes beside it (pybridge.pipeline.side_path: <stem>_depth.tif,
-- <stem>_confidence.tif); the bridge never overwrites, and the GUI offers no --overwrite.
-- `folder` "" or nil: the first source's folder. nil when all 9999 names are taken.
-- `also` (optional): aligned = true: the aligned frames' folder <stem>_aligned must be free
-- too; taken = {[stem] = true}: stems given to other results of the same run (a batch)
function naming.output_path(sources, folder, format, also)
  also = also or {}
  if not folder or folder == "" then folder = platform.dirname(sources[1]) end
  local base = folder .. PS .. platform.basename_noext(sources[1]) .. "_stacked"
  local ext = naming.FORMAT_EXT[format] or ".tif"
  for n = 1, 9999 do
    local stem = n == 1 and base or base .. "_" .. n
    if not (platform.file_exists(stem .. ext) or platform.file_exists(stem .. "_depth.tif")
            or platform.file_exists(stem .. "_confidence.tif")
            or (also.aligned and taken_on_disk(stem .. "_aligned"))
            or (also.taken and also.taken[stem])) then
      if also.taken then also.taken[stem] = true end
      return stem .. ext
    end
  end
  return nil
end

-- the first free <folder>/<stem>[_N]<ext> (a file beside the sources, e.g. a coverage map)
function naming.free_path(folder, stem, ext)
  for n = 1, 9999 do
    local path = folder .. PS .. stem .. (n == 1 and "" or "_" .. n) .. ext
    if not taken_on_disk(path) then return path end
  end
  return nil
end

return naming
