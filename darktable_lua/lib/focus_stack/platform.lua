--[[
    lib/focus_stack/platform.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    The operating system, its path separator, and files through Lua's io / os.remove only
    (never a shell).

    local platform = require "lib/focus_stack/platform"
]]

local dt = require "darktable"

local platform = {}

-- darktable's word for the system, read once at load
platform.IS_WINDOWS = dt.configuration.running_os == "windows"
platform.PS = platform.IS_WINDOWS and "\\" or "/"

-- what `use(f)` returns for the file at `path` opened for reading, or nil when it cannot be
-- opened
local function reading(path, use)
  local f = io.open(path, "rb")
  if not f then return nil end
  local result = use(f)
  f:close()
  return result
end

function platform.file_exists(path)
  return reading(path, function() return true end) or false
end

function platform.is_regular_file(path)
  -- reading a directory fails with an error ("Is a directory"); a file gives data or EOF
  return reading(path, function(f) local _, err = f:read(1); return err == nil end) or false
end

function platform.file_size(path)
  return reading(path, function(f) return f:seek("end") end)
end

function platform.read_file(path)
  return reading(path, function(f) return f:read("a") end)
end

function platform.write_file(path, data)
  local f, err = io.open(path, "wb")
  if not f then return false, err end
  f:write(data)
  f:close()
  return true
end

-- the separators of a path: on Windows both, elsewhere only "/" (there a backslash is a
-- character of the file's name)
local SEP = platform.IS_WINDOWS and "[/\\]" or "/"
local NOT_SEP = platform.IS_WINDOWS and "[^/\\]" or "[^/]"

function platform.dirname(path)
  return path:match("^(.*)" .. SEP .. NOT_SEP .. "*$") or "."
end

function platform.basename(path)
  return path:match("(" .. NOT_SEP .. "*)$")
end

function platform.basename_noext(path)
  local base = platform.basename(path)
  return base:match("^(.*)%.[^.]*$") or base
end

-- the first `program` on PATH (on Windows program.exe, .cmd or .bat), or nil
function platform.find_on_path(program)
  local sep = platform.IS_WINDOWS and ";" or ":"
  local names = platform.IS_WINDOWS and {program .. ".exe", program .. ".cmd", program .. ".bat"}
    or {program}
  for dir in (os.getenv("PATH") or ""):gmatch("[^" .. sep .. "]+") do
    for _, name in ipairs(names) do
      local candidate = dir .. platform.PS .. name
      if platform.is_regular_file(candidate) then return candidate end
    end
  end
  return nil
end

return platform
