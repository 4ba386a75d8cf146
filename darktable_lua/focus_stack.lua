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

    The same module has a lens section that rewrites the lens metadata of the selected
    images' original files (focusbridge lens set), shows the outcome per file and can undo.

    ADDITIONAL SOFTWARE NEEDED FOR THIS SCRIPT
    * focusbridge (the `focusbridge` program, with its `run-job` command) and exiftool

    USAGE
    * copy this file to <configdir>/lua/contrib/ and add  require "contrib/focus_stack"
      to <configdir>/luarc, or enable it in lua-scripts' script manager
    * select two or more images, press "focus stack"

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

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- gettext
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local gettext = dt.gettext
pcall(function()
  gettext.bindtextdomain(MODULE, dt.configuration.config_dir .. "/lua/locale/")
end)

local function _(msgid)
  local ok, text = pcall(gettext.dgettext, MODULE, msgid)
  if ok and text then return text end
  return msgid
end

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
-- constants and state
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local IS_WINDOWS = dt.configuration.running_os == "windows"
local PS = IS_WINDOWS and "\\" or "/"

local POLL_MS = 200
-- watchdog: give up when the bridge reports nothing new for this long
local STALL_LIMIT_S = 30 * 60
-- after a cancel request, how long the bridge gets before it is killed
local CANCEL_GRACE_S = 20

local METHODS = {"pyramid", "depthmap"}
local METHOD_LABELS = {_("pyramid (sharpest detail)"), _("depth map (smooth surfaces)")}
local FORMATS = {"tiff", "jpeg"}
local FORMAT_LABELS = {_("TIFF 16-bit"), _("JPEG")}
local FORMAT_EXT = {tiff = ".tif", jpeg = ".jpg", png = ".png"}

local TAG_STACKED = "focus stack|stacked"
local TAG_SOURCE = "focus stack|source"
local TAG_DEPTH = "focus stack|depth map"

local fs = {
  busy = false,
  widgets = {},
  module_installed = false,
  event_registered = false,
  storage_jobs = {},
  last_lens_files = nil,
}

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- preferences (persist the user's choices)
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local DEFAULTS = {
  method = {"string", "pyramid"},
  align = {"bool", true},
  format = {"string", "tiff"},
  depth_map = {"bool", false},
  output_folder = {"string", ""},
  executable = {"string", ""},
  lens_preset = {"string", ""},
}

local function pref_read(key)
  local kind, default = DEFAULTS[key][1], DEFAULTS[key][2]
  if not dt.preferences.read(MODULE, "initialized", "bool") then return default end
  return dt.preferences.read(MODULE, key, kind)
end

local function pref_write(key, value)
  if not dt.preferences.read(MODULE, "initialized", "bool") then
    for k, d in pairs(DEFAULTS) do dt.preferences.write(MODULE, k, d[1], d[2]) end
    dt.preferences.write(MODULE, "initialized", "bool", true)
  end
  dt.preferences.write(MODULE, key, DEFAULTS[key][1], value)
end

local function index_of(list, value)
  for i, v in ipairs(list) do if v == value then return i end end
  return 1
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- JSON (enough for manifests, progress lines and status files)
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local json = {}

local ESCAPES = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                 ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode_number(n)
  if n ~= n or n == math.huge or n == -math.huge then return "null" end
  if math.type(n) == "integer" or (n == math.floor(n) and math.abs(n) < 2^53) then
    return string.format("%d", math.floor(n))
  end
  -- never trust the locale's decimal separator
  return (string.format("%.10g", n):gsub(",", "."))
end

function json.encode(v, indent)
  indent = indent or ""
  local t = type(v)
  if v == nil or v == json.null then return "null"
  elseif t == "boolean" then return v and "true" or "false"
  elseif t == "number" then return encode_number(v)
  elseif t == "string" then return encode_string(v)
  elseif t == "table" then
    local inner = indent .. "  "
    if v[1] ~= nil or next(v) == nil and getmetatable(v) == json.array_mt then
      local out = {}
      for _, item in ipairs(v) do out[#out + 1] = inner .. json.encode(item, inner) end
      if #out == 0 then return "[]" end
      return "[\n" .. table.concat(out, ",\n") .. "\n" .. indent .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local out = {}
    for _, k in ipairs(keys) do
      out[#out + 1] = inner .. encode_string(k) .. ": " .. json.encode(v[k], inner)
    end
    if #out == 0 then return "{}" end
    return "{\n" .. table.concat(out, ",\n") .. "\n" .. indent .. "}"
  end
  error("cannot encode " .. t)
end

json.null = setmetatable({}, {__tostring = function() return "null" end})
json.array_mt = {}

function json.decode(s)
  local pos = 1
  local function fail(msg) error("bad JSON at " .. pos .. ": " .. msg, 0) end
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1; break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local map = {b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\", ["/"] = "/"}
        if e == "u" then
          local cp = tonumber(s:sub(pos + 2, pos + 5), 16) or fail("bad \\u escape")
          pos = pos + 6
          if cp >= 0xD800 and cp <= 0xDBFF and s:sub(pos, pos + 1) == "\\u" then
            local lo = tonumber(s:sub(pos + 2, pos + 5), 16)
            if lo and lo >= 0xDC00 and lo <= 0xDFFF then
              cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
              pos = pos + 6
            end
          end
          out[#out + 1] = utf8.char(cp)
        elseif map[e] then
          out[#out + 1] = map[e]; pos = pos + 2
        else fail("bad escape") end
      else
        local stop = s:find('["\\]', pos) or #s + 1
        out[#out + 1] = s:sub(pos, stop - 1)
        pos = stop
      end
    end
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local obj = {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return obj end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail("expected key") end
        local k = str(); ws()
        if s:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        local v = value()
        if v ~= json.null then obj[k] = v end
        ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "}" then return obj elseif d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      local arr = setmetatable({}, json.array_mt)
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return arr end
      while true do
        arr[#arr + 1] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "]" then return arr elseif d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return json.null
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then fail("unexpected character") end
      pos = pos + #num
      local n = math.tointeger(tonumber(num)) or tonumber(num)
      if not n then
        -- tonumber may follow a decimal-comma locale: parse by hand
        local sign, int, frac, exp = num:match("^(-?)(%d+)%.?(%d*)[eE]?([-+]?%d*)$")
        n = tonumber(int) + (frac ~= "" and tonumber(frac) / 10 ^ #frac or 0)
        if exp ~= "" then n = n * 10 ^ tonumber(exp) end
        if sign == "-" then n = -n end
      end
      return n
    end
  end
  local ok, result = pcall(value)
  if not ok then return nil, result end
  return result
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- files (no shell: only Lua io / os.remove / os.rename)
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close(); return true end
  return false
end

local function is_regular_file(path)
  local f = io.open(path, "rb")
  if not f then return false end
  -- reading a directory fails with an error ("Is a directory"); a file gives data or EOF
  local _, err = f:read(1)
  f:close()
  return err == nil
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  f:close()
  return size
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("a")
  f:close()
  return data
end

local function write_file(path, data)
  local f, err = io.open(path, "wb")
  if not f then return false, err end
  f:write(data)
  f:close()
  return true
end

local function dirname(path)
  return path:match("^(.*)[/\\][^/\\]*$") or "."
end

local function basename_noext(name)
  local base = name:match("([^/\\]*)$") or name
  return base:match("^(.*)%.[^.]*$") or base
end

local function image_file(image)
  return image.path .. PS .. image.filename
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- the one shell command: `<exe> run-job <manifest>`, quoted for the platform
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

-- one argument for sh: single quotes keep everything literal, a quote inside is '\''
local function quote(arg)
  return "'" .. arg:gsub("'", "'\\''") .. "'"
end

-- a path for cmd.exe's own command line (dt.control.execute is system(), i.e. `cmd /c`):
-- inside "..." cmd still expands %VAR% (and !VAR! where delayed expansion is switched on),
-- there is no escape for them there, and system() passes the bytes through the ANSI code
-- page; a path with any of those goes in as %TEMP%... when it lies there (cmd expands the
-- variable itself, in Unicode, and does not look into the result again), else not at all
local CMD_UNSAFE = '[%%!"%c\128-\255]'
local CMD_VARS = {"TEMP", "TMP", "LOCALAPPDATA", "USERPROFILE"}

local function cmd_path(path)
  if not path:find(CMD_UNSAFE) then return '"' .. path .. '"' end
  for _, var in ipairs(CMD_VARS) do
    local value = os.getenv(var)
    if value and value ~= "" and path:sub(1, #value) == value then
      local rest = path:sub(#value + 1)
      if (rest == "" or rest:match("^[/\\]")) and not rest:find(CMD_UNSAFE) then
        return '"%' .. var .. '%' .. rest .. '"'
      end
    end
  end
  return nil
end

local function is_batch_file(path)
  local ext = (path:match("%.(%w+)$") or ""):lower()
  return ext == "bat" or ext == "cmd"
end

-- characters a program path may not contain to be run safely
local function unsafe_path(path)
  if path:find("[%z\r\n]") then return true end
  if IS_WINDOWS then
    -- run.bat doubles %, quotes the rest and turns delayed expansion off; `call` (needed for a
    -- .bat/.cmd) expands % once more and doubles carets even inside quotes
    if path:find('[%c"]') then return true end
    if is_batch_file(path) and path:find("[%%!^]") then return true end
  end
  return false
end

local function find_on_path(program)
  local sep = IS_WINDOWS and ";" or ":"
  local names = IS_WINDOWS and {program .. ".exe", program .. ".cmd", program .. ".bat"} or {program}
  for dir in (os.getenv("PATH") or ""):gmatch("[^" .. sep .. "]+") do
    for _, name in ipairs(names) do
      local candidate = dir .. PS .. name
      if is_regular_file(candidate) then return candidate end
    end
  end
  return nil
end

-- returns the focusbridge program to run and whether it came from PATH, or nil and a
-- message for the user
local function bridge_executable()
  local chosen = pref_read("executable")
  if chosen and chosen ~= "" then
    local absolute = chosen:sub(1, 1) == "/" or (IS_WINDOWS and chosen:match("^%a:[/\\]"))
    if not absolute then
      return nil, string.format(_("focusbridge path must be absolute: %s"), chosen)
    end
    if unsafe_path(chosen) then
      return nil, string.format(_("focusbridge path contains characters that cannot be run safely: %s"), chosen)
    end
    if not is_regular_file(chosen) then
      return nil, string.format(_("focusbridge not found at %s"), chosen)
    end
    return chosen, nil, false
  end
  local found = find_on_path("focusbridge")
  if found and not unsafe_path(found) then return found, nil, true end
  return nil, _("focusbridge not found on PATH: install it (uv tool install, see its README) or choose the program in the focus stack module")
end

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
local function random_name()
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
    tostring({}), tostring(random_name), tostring(name_counter),
    tostring(dt.configuration.tmp_dir)}, "|")
  local h1 = fnv1a(material)
  local h2 = fnv1a(material, h1 ~ 0x5bd1e995)
  return string.format("%016x%08x", h1, h2 & 0xffffffff)
end

-- run one shell command (never with a user's file name in it)
local function execute(cmd)
  fs.last_command = cmd
  return dt.control.execute(cmd)
end

-- create a private temporary folder for one job; returns its path, or nil and a message
local function make_job_dir()
  local base = dt.configuration.tmp_dir
  if IS_WINDOWS and not cmd_path(base) then
    return nil, string.format(_("the temporary folder %s has characters the Windows command line cannot pass: start darktable with --tmpdir set to a plain folder"), base)
  end
  for _ = 1, 5 do
    local dir = base .. PS .. "focus_stack_" .. random_name()
    -- mkdir fails when the name exists (a folder, a file or a link): never reuse one
    local rc
    if IS_WINDOWS then
      rc = execute("mkdir " .. cmd_path(dir) .. " >NUL 2>NUL")
    else
      rc = execute("mkdir -m 700 -- " .. quote(dir))
    end
    if rc == 0 and write_file(dir .. PS .. ".probe", "") then
      os.remove(dir .. PS .. ".probe")
      return dir
    end
  end
  return nil, _("could not create a temporary folder")
end

local JOB_FILES = {"manifest.json", "progress.jsonl", "cancel", "status.json", "status.json.tmp",
                   "stderr.txt", "rc", "pid", "shell_pid", "run.bat", ".probe"}

local function remove_job_dir(job)
  if not job or not job.dir then return end
  for _, f in ipairs(job.frames or {}) do os.remove(f) end
  for _, name in ipairs(JOB_FILES) do os.remove(job.dir .. PS .. name) end
  -- on Windows os.remove never removes a folder, nor can io.open tell one exists
  if not os.remove(job.dir) and (IS_WINDOWS or file_exists(job.dir .. PS .. ".")) then
    -- something unexpected is left: remove the folder (our generated path only)
    if IS_WINDOWS then
      local dir = cmd_path(job.dir)
      if dir then execute("rmdir /s /q " .. dir .. " >NUL 2>NUL") end
    else
      execute("rm -rf -- " .. quote(job.dir))
    end
  end
  job.dir = nil
end

-- run.bat: pure ASCII and no user's string but the bridge's path from the preferences: the
-- job folder is referred to as %~dp0 (cmd expands it once, in Unicode), the manifest holds
-- every other path, a bridge found on PATH is called by its name
local function windows_script(job)
  local program
  if job.exe_from_path then
    program = "call focusbridge"
  elseif is_batch_file(job.exe) then
    program = 'call "' .. job.exe .. '"'  -- unsafe_path let no % ^ ! through
  else
    program = '"' .. job.exe:gsub("%%", "%%%%") .. '"'
  end
  local lines = {
    "@echo off",
    "setlocal DisableDelayedExpansion",
    'cd /d "%~dp0"',
    program .. ' run-job "%~dp0manifest.json" <NUL >NUL 2>"%~dp0stderr.txt"',
    -- redirection first: `echo 1>file` would redirect handle 1
    '>"%~dp0rc" echo %ERRORLEVEL%',
  }
  if program:find("[\128-\255]") then
    -- cmd reads a .bat in the console's code page: switch it to UTF-8 before that line
    table.insert(lines, 1, "@chcp 65001 >NUL")
  end
  return table.concat(lines, "\r\n") .. "\r\n"
end

-- start `<exe> run-job <manifest>` in the background; returns true or nil, message
local function start_bridge(job)
  local d = job.dir
  local cmd
  if IS_WINDOWS then
    local bat = d .. PS .. "run.bat"
    local bat_arg = cmd_path(bat)
    if not bat_arg then
      return nil, string.format(_("the temporary folder %s has characters the Windows command line cannot pass: start darktable with --tmpdir set to a plain folder"), d)
    end
    job.script = windows_script(job)
    local written, err = write_file(bat, job.script)
    if not written then return nil, tostring(err) end
    cmd = 'start "" /b ' .. bat_arg
  else
    -- the bridge writes its own pid (pid_file); $! is the fallback for a bridge that does not
    cmd = "( " .. quote(job.exe) .. " run-job " .. quote(job.manifest) ..
      " </dev/null >/dev/null 2>" .. quote(d .. "/stderr.txt") ..
      " & echo $! >" .. quote(d .. "/shell_pid") ..
      "; wait $!; echo $? >" .. quote(d .. "/rc") .. " ) </dev/null >/dev/null 2>&1 &"
  end
  job.command = cmd
  local rc = execute(cmd)
  if rc ~= 0 then
    return nil, string.format(_("could not start focusbridge (status %s)"), tostring(rc))
  end
  return true
end

-- a pid from a file: decimal digits only, and never 0 or 1 (`kill 0` signals our own group)
local function read_pid(path)
  if not path then return nil end
  local digits = (read_file(path) or ""):match("^%s*(%d+)%s*$")
  if not digits or #digits > 10 then return nil end
  local pid = tonumber(digits)
  if not pid or pid < 2 then return nil end
  return string.format("%d", pid)
end

local function kill_bridge(job)
  local pid = read_pid(job.pid_file) or (not IS_WINDOWS and read_pid(job.dir .. PS .. "shell_pid"))
  if not pid then return end
  if IS_WINDOWS then
    execute("taskkill /F /T /PID " .. pid .. " >NUL 2>NUL")
  else
    execute("kill -TERM " .. pid .. " >/dev/null 2>&1")
  end
end

-- one job: the program and its private folder with the files the plugin and bridge share
local function new_job(exe, from_path, dir, frames)
  local job = {exe = exe, exe_from_path = from_path, cancelled = false, frames = frames, dir = dir}
  if dir then
    job.manifest = dir .. PS .. "manifest.json"
    job.cancel_file = dir .. PS .. "cancel"
    job.pid_file = dir .. PS .. "pid"
    job.on_cancel = function()
      job.cancelled = true
      write_file(job.cancel_file, "cancel\n")
    end
  end
  return job
end

-- write the manifest with the keys every kind of job carries (the bridge stops when the
-- cancel file appears, and writes its own pid for a kill after the grace period)
local function write_manifest(job, manifest)
  manifest.version = 1
  manifest.progress_file = job.dir .. PS .. "progress.jsonl"
  manifest.status_file = job.dir .. PS .. "status.json"
  manifest.cancel_file = job.cancel_file
  manifest.pid_file = job.pid_file
  fs.last_manifest = manifest
  local written, err = write_file(job.manifest, json.encode(manifest) .. "\n")
  if not written then return nil, tostring(err) end
  return true
end

local function last_line(text)
  local last
  for line in (text or ""):gmatch("[^\r\n]+") do
    if line:find("%S") then last = line end
  end
  return last
end

-- poll the bridge until it finishes; returns the decoded status table (never nil)
local function wait_for_bridge(job, progress_cb)
  local status_path = job.dir .. PS .. "status.json"
  local rc_path = job.dir .. PS .. "rc"
  local progress_path = job.dir .. PS .. "progress.jsonl"
  local last_fraction, last_change = -1, os.time()
  local cancel_sent_at = nil
  local killed = false
  while true do
    local progress = read_file(progress_path)
    local line = last_line(progress)
    if line then
      local p = json.decode(line)
      if p and type(p.fraction) == "number" and p.fraction ~= last_fraction then
        last_fraction = p.fraction
        last_change = os.time()
        if progress_cb then progress_cb(p.fraction, p) end
      end
    end
    local status_text = read_file(status_path)
    if status_text and status_text ~= "" then
      local status = json.decode(status_text)
      if status then return status end
    end
    local rc_text = read_file(rc_path)
    if rc_text and rc_text:match("%d") then
      -- the bridge exited; give a status file that races with the rc file one more look
      dt.control.sleep(POLL_MS)
      status_text = read_file(status_path)
      local status = status_text and json.decode(status_text)
      if status then return status end
      local code = tonumber(rc_text:match("(%d+)"))
      local err = last_line(read_file(job.dir .. PS .. "stderr.txt"))
      if err then err = err:gsub("^focusbridge: error: ", "") end
      return {ok = false, cancelled = (code == 130) or job.cancelled or false,
              error = err or string.format(_("focusbridge stopped with exit status %d"), code or -1)}
    end
    if job.cancelled and not cancel_sent_at then
      write_file(job.cancel_file, "cancel\n")
      cancel_sent_at = os.time()
    end
    if cancel_sent_at and not killed and os.time() - cancel_sent_at > CANCEL_GRACE_S then
      kill_bridge(job)
      killed = true
    end
    if os.time() - last_change > STALL_LIMIT_S and not killed then
      write_file(job.cancel_file, "cancel\n")
      kill_bridge(job)
      killed = true
      job.stalled = true
    end
    if killed and os.time() - (cancel_sent_at or last_change) > CANCEL_GRACE_S + 10 then
      return {ok = false, cancelled = job.cancelled or false,
              error = job.stalled and _("focusbridge stopped responding") or _("cancelled")}
    end
    dt.control.sleep(POLL_MS)
  end
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- stacking
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local function current_options()
  return {
    method = pref_read("method"),
    align = pref_read("align"),
    depth_map = pref_read("depth_map"),
    format = pref_read("format"),
    reference = "middle",
    overwrite = false,
    crop = false,
    metadata = true,
  }
end

-- the first <name>_stacked[_N] whose whole set is free: the result and the maps the bridge
-- writes beside it (pybridge.pipeline.side_path: <stem>_depth.tif, <stem>_confidence.tif);
-- the bridge never overwrites, and the GUI offers no --overwrite
local function output_path_for(sources, format)
  local folder = pref_read("output_folder")
  if not folder or folder == "" then folder = dirname(sources[1]) end
  local base = folder .. PS .. basename_noext(sources[1]) .. "_stacked"
  local ext = FORMAT_EXT[format] or ".tif"
  for n = 1, 9999 do
    local stem = n == 1 and base or base .. "_" .. n
    if not (file_exists(stem .. ext) or file_exists(stem .. "_depth.tif")
            or file_exists(stem .. "_confidence.tif")) then
      return stem .. ext
    end
  end
  return nil
end

local function sort_by_name(images)
  local sorted = {}
  for _, img in ipairs(images) do sorted[#sorted + 1] = img end
  table.sort(sorted, function(a, b)
    local fa, fb = image_file(a), image_file(b)
    if fa == fb then return a.id < b.id end
    return fa < fb
  end)
  return sorted
end

local function is_own_or_internal_tag(tag)
  local name = tag.name
  return name:match("^darktable|") or name:match("^focus stack|") or name == "focus stack"
end

-- import the result, group, tag and carry metadata over; returns the imported image
local function bring_result_home(images, output, depth_map)
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
  dt.tags.attach(dt.tags.create(TAG_STACKED), result)
  local source_tag = dt.tags.create(TAG_SOURCE)
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

  if depth_map and depth_map ~= "" and file_exists(depth_map) then
    local dm = dt.database.import(depth_map)
    if dm then
      dm:group_with(result)
      dt.tags.attach(dt.tags.create(TAG_DEPTH), dm)
    end
  end
  result:make_group_leader()
  return result
end

local function notify(msg)
  fs.last_message = msg
  dt.print(msg)
  dt.print_log("focus_stack: " .. msg)
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
    local size = file_size(path)
    if not size or size == 0 then
      return nil, string.format(_("the export of %s produced nothing"), img.filename)
    end
    if progress_cb then progress_cb(i / #images) end
  end
  return frames
end

-- the whole flow; `images` darktable images, `frames` pre-exported files (storage path) or nil
-- returns true on success, false otherwise (a message has been shown)
local function stack(images, frames, job_dir)
  if fs.busy then
    notify(_("focus stack is already running"))
    return false
  end
  if #images < 2 then
    notify(_("focus stack: select at least two images"))
    return false
  end
  local exe, exe_err, from_path = bridge_executable()
  if not exe then
    notify(exe_err)
    return false
  end

  fs.busy = true
  local dir, dir_err = job_dir, nil
  if not dir then dir, dir_err = make_job_dir() end
  local job = new_job(exe, from_path, dir, frames)
  fs.current_job = job
  local gui_job
  local ok, result, message = pcall(function()
    if not job.dir then return nil, dir_err end
    gui_job = dt.gui.create_job(_("focus stack"), true, job.on_cancel)
    gui_job.percent = 0

    if not frames then
      local export_err
      frames, export_err = export_frames(job, images, function(f) gui_job.percent = 0.25 * f end)
      if not frames then
        if job.cancelled then return nil, _("focus stack cancelled") end
        return nil, export_err
      end
    else
      for i, f in ipairs(frames) do
        local size = file_size(f)
        if not size or size == 0 then
          return nil, string.format(_("the export of %s produced nothing"), images[i].filename)
        end
      end
    end
    if job.cancelled then return nil, _("focus stack cancelled") end

    local sources = {}
    for i, img in ipairs(images) do sources[i] = image_file(img) end
    local options = current_options()
    local output = output_path_for(sources, options.format)
    if not output then return nil, _("focus stack: no free name for the result") end
    local manifest = {
      kind = "stack",
      frames = frames,
      sources = sources,
      output = output,
      options = options,
    }
    local written, werr = write_manifest(job, manifest)
    if not written then return nil, werr end

    local started, start_err = start_bridge(job)
    if not started then return nil, start_err end
    local status = wait_for_bridge(job, function(f) gui_job.percent = 0.25 + 0.75 * f end)
    -- a cancel that reaches the bridge while it writes lets it finish (it says ok): what it
    -- wrote is imported rather than left unseen beside the sources
    if status.cancelled or (job.cancelled and not status.ok) then
      return nil, _("focus stack cancelled")
    end
    if not status.ok then
      return nil, string.format(_("focus stack failed: %s"), tostring(status.error or _("unknown error")))
    end
    gui_job.percent = 1.0
    local out = status.output or output
    if not file_exists(out) then
      return nil, string.format(_("focus stack failed: %s was not written"), out)
    end
    local imported = bring_result_home(images, out, status.depth_map)
    if not imported then
      return nil, string.format(_("focus stack: could not import %s"), out)
    end
    return imported
  end)
  if gui_job then gui_job.valid = false end
  remove_job_dir(job)
  fs.busy = false
  fs.current_job = nil
  if not ok then
    notify(string.format(_("focus stack failed: %s"), tostring(result)))
    return false
  end
  if not result then
    notify(message or _("focus stack failed"))
    return false
  end
  notify(string.format(_("focus stack: imported %s"), result.filename))
  fs.last_result = result
  return true
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- lens metadata
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local LENS_FIELDS = {
  {"make", _("make")},
  {"model", _("model")},
  {"focal_length", _("focal length (mm)")},
  {"aperture", _("aperture (f-number)")},
  {"lens_info", _("lens info: min/max focal, max aperture at each")},
  {"serial", _("serial number")},
}

local function refresh_exif(images)
  -- darktable 4.2 has no Lua call to re-read EXIF: run the "selected image[s]" module's
  -- "refresh EXIF" button through its action, acting on a temporary selection
  local previous = dt.gui.selection()
  dt.gui.selection(images)
  local ok = pcall(dt.gui.action, "lib/image/refresh EXIF", 0, "", "", 1.0)
  dt.gui.selection(previous)
  return ok
end

local function run_lens_job(images, action, preset, fields)
  if fs.busy then
    notify(_("focus stack is already running"))
    return nil
  end
  if #images < 1 then
    notify(_("lens data: select at least one image"))
    return nil
  end
  local exe, exe_err, from_path = bridge_executable()
  if not exe then
    notify(exe_err)
    return nil
  end
  fs.busy = true
  local dir, dir_err = make_job_dir()
  local job = new_job(exe, from_path, dir, {})
  fs.current_job = job
  local gui_job
  local ok, status = pcall(function()
    if not job.dir then return {ok = false, error = dir_err} end
    local files = {}
    for i, img in ipairs(images) do files[i] = image_file(img) end
    local manifest = {
      kind = "lens",
      action = action,
      files = files,
      dry_run = false,
    }
    if action == "set" then
      if preset and preset ~= "" then manifest.preset = preset end
      if fields and next(fields) then manifest.fields = fields end
    end
    local written, werr = write_manifest(job, manifest)
    if not written then return {ok = false, error = werr} end
    gui_job = dt.gui.create_job(_("lens data"), true, job.on_cancel)
    local started, start_err = start_bridge(job)
    if not started then return {ok = false, error = start_err} end
    return wait_for_bridge(job, function(f) gui_job.percent = f end)
  end)
  if gui_job then gui_job.valid = false end
  remove_job_dir(job)
  fs.busy = false
  fs.current_job = nil
  if not ok then status = {ok = false, error = tostring(status)} end
  return status
end

local function lens_fields_from_widgets()
  local fields = {}
  for _, f in ipairs(LENS_FIELDS) do
    local w = fs.widgets["lens_" .. f[1]]
    local text = w and w.text or ""
    text = text:gsub("^%s+", ""):gsub("%s+$", "")
    if text ~= "" then
      if f[1] == "lens_info" then
        -- "25 25 2.8 2.8" (or with decimal commas): min/max focal, max aperture at each
        local normalized = text:gsub("(%d),(%d)", "%1.%2")
        local nums = {}
        for n in normalized:gmatch("%d+%.?%d*") do
          local int, frac = n:match("^(%d+)%.?(%d*)$")
          nums[#nums + 1] = tonumber(int) + (frac ~= "" and tonumber(frac) / 10 ^ #frac or 0)
        end
        fields.lens_info = (#nums == 4) and nums or text
      elseif f[1] == "focal_length" or f[1] == "aperture" then
        -- accept a decimal comma, send a JSON number
        local normalized = text:gsub(",", ".")
        local int, frac = normalized:match("^(%d+)%.?(%d*)$")
        if int then
          fields[f[1]] = tonumber(int) + (frac ~= "" and tonumber(frac) / 10 ^ #frac or 0)
        else
          fields[f[1]] = text
        end
      else
        fields[f[1]] = text
      end
    end
  end
  return fields
end

local function show_lens_outcome(status)
  local lines = {}
  if status and status.results then
    for _, r in ipairs(status.results) do
      local name = tostring(r.file or ""):match("([^/\\]*)$")
      local line = name .. ": " .. tostring(r.outcome or "?")
      if r.message and r.message ~= "" then line = line .. " (" .. tostring(r.message) .. ")" end
      lines[#lines + 1] = line
    end
  end
  if status and not status.ok and status.error then
    lines[#lines + 1] = string.format(_("error: %s"), tostring(status.error))
  end
  local text = table.concat(lines, "\n")
  if fs.widgets.lens_outcome then fs.widgets.lens_outcome.text = text end
  fs.last_lens_outcome = text
  return text
end

local function lens_apply(action)
  local images
  if action == "undo" then
    images = fs.last_lens_images or {}
  else
    images = {}
    for _, img in ipairs(dt.gui.action_images) do images[#images + 1] = img end
  end
  if action == "set" then
    local preset = fs.widgets.lens_preset and fs.widgets.lens_preset.text or ""
    preset = preset:gsub("^%s+", ""):gsub("%s+$", "")
    local fields = lens_fields_from_widgets()
    if preset == "" and not next(fields) then
      notify(_("lens data: choose a preset or fill in at least one field"))
      return nil
    end
    pref_write("lens_preset", preset)
    local status = run_lens_job(images, "set", preset, fields)
    if not status then return nil end
    show_lens_outcome(status)
    if status.ok then
      fs.last_lens_images = images
      refresh_exif(images)
      notify(string.format(_("lens data written to %d image(s)"), #images))
    else
      notify(string.format(_("lens data failed: %s"), tostring(status.error or _("see the module"))))
    end
    return status
  else
    if #images == 0 then
      notify(_("lens data: nothing to undo"))
      return nil
    end
    local status = run_lens_job(images, "undo")
    if not status then return nil end
    show_lens_outcome(status)
    if status.ok then
      refresh_exif(images)
      fs.last_lens_images = nil
      notify(_("lens data restored"))
    else
      notify(string.format(_("lens undo failed: %s"), tostring(status.error or _("see the module"))))
    end
    return status
  end
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- GUI
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local syncing = false
local option_sets = {}

local function sync_option_widgets()
  syncing = true
  for _, set in ipairs(option_sets) do
    set.method.selected = index_of(METHODS, pref_read("method"))
    set.align.value = pref_read("align")
    set.format.selected = index_of(FORMATS, pref_read("format"))
    set.depth_map.value = pref_read("depth_map")
  end
  syncing = false
end

-- one set of option widgets bound to the shared preferences (module and export target)
local function make_option_widgets()
  local set = {}
  set.method = dt.new_widget("combobox"){
    label = _("fusion method"),
    tooltip = _("pyramid keeps the finest detail; depth map gives smoother surfaces and fewer halos"),
    selected = index_of(METHODS, pref_read("method")),
    changed_callback = function(w)
      if syncing then return end
      pref_write("method", METHODS[w.selected] or "pyramid"); sync_option_widgets()
    end,
    table.unpack(METHOD_LABELS)
  }
  set.align = dt.new_widget("check_button"){
    label = _("align frames"),
    tooltip = _("correct focus breathing and shifts between the frames"),
    value = pref_read("align"),
    clicked_callback = function(w)
      if syncing then return end
      pref_write("align", w.value); sync_option_widgets()
    end
  }
  set.format = dt.new_widget("combobox"){
    label = _("output format"),
    tooltip = _("16-bit TIFF keeps all the tonal range for further editing"),
    selected = index_of(FORMATS, pref_read("format")),
    changed_callback = function(w)
      if syncing then return end
      pref_write("format", FORMATS[w.selected] or "tiff"); sync_option_widgets()
    end,
    table.unpack(FORMAT_LABELS)
  }
  set.depth_map = dt.new_widget("check_button"){
    label = _("save depth map"),
    tooltip = _("also write and import a depth map beside the result"),
    value = pref_read("depth_map"),
    clicked_callback = function(w)
      if syncing then return end
      pref_write("depth_map", w.value); sync_option_widgets()
    end
  }
  option_sets[#option_sets + 1] = set
  return set
end

local function bridge_status_text()
  local exe, err = bridge_executable()
  if exe then return string.format(_("focusbridge: %s"), exe) end
  return err
end

local function update_bridge_label()
  if fs.widgets.bridge_label then fs.widgets.bridge_label.label = bridge_status_text() end
end

local function build_module_widgets()
  local w = fs.widgets
  local opts = make_option_widgets()
  w.options = opts

  w.output_folder = dt.new_widget("file_chooser_button"){
    title = _("folder for the stacked image"),
    is_directory = true,
    tooltip = _("where the result is written; empty: next to the first source"),
    value = pref_read("output_folder") ~= "" and pref_read("output_folder") or nil,
    changed_callback = function(self) pref_write("output_folder", self.value or "") end
  }
  w.output_next_to_source = dt.new_widget("button"){
    label = _("next to the first source"),
    tooltip = _("write the result in the folder of the first selected image"),
    clicked_callback = function()
      pref_write("output_folder", "")
      fs.widgets.output_folder.value = ""
      notify(_("the result goes next to the first source"))
    end
  }
  w.executable = dt.new_widget("file_chooser_button"){
    title = _("focusbridge program"),
    is_directory = false,
    tooltip = _("the focusbridge program; leave unset to find it on PATH"),
    value = pref_read("executable") ~= "" and pref_read("executable") or nil,
    changed_callback = function(self)
      pref_write("executable", self.value or "")
      update_bridge_label()
    end
  }
  w.bridge_label = dt.new_widget("label"){label = bridge_status_text(), ellipsize = "middle"}

  w.stack_button = dt.new_widget("button"){
    label = _("focus stack"),
    tooltip = _("stack the selected images and import the result"),
    clicked_callback = function()
      local images = {}
      for _, img in ipairs(dt.gui.action_images) do images[#images + 1] = img end
      stack(sort_by_name(images))
    end
  }

  w.lens_preset = dt.new_widget("entry"){
    text = pref_read("lens_preset"),
    placeholder = _("lens preset name"),
    tooltip = _("a focusbridge lens preset; fields below override it"),
    editable = true,
  }
  for _, f in ipairs(LENS_FIELDS) do
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

  local children = {
    dt.new_widget("section_label"){label = _("stacking")},
    opts.method, opts.align, opts.format, opts.depth_map,
    dt.new_widget("section_label"){label = _("output folder")},
    w.output_folder, w.output_next_to_source,
    dt.new_widget("section_label"){label = _("focusbridge program")},
    w.executable, w.bridge_label,
    w.stack_button,
    dt.new_widget("section_label"){label = _("lens metadata")},
    w.lens_preset,
  }
  for _, f in ipairs(LENS_FIELDS) do children[#children + 1] = w["lens_" .. f[1]] end
  children[#children + 1] = dt.new_widget("box"){orientation = "horizontal", w.lens_apply, w.lens_undo}
  children[#children + 1] = w.lens_outcome
  return dt.new_widget("box"){orientation = "vertical", table.unpack(children)}
end

local function install_module()
  if fs.module_installed then return end
  dt.register_lib(
    MODULE,
    _("focus stack"),
    true,
    false,
    {[dt.gui.views.lighttable] = {"DT_UI_CONTAINER_PANEL_RIGHT_CENTER", 100}},
    fs.module_widget,
    nil,
    nil
  )
  fs.module_installed = true
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- export target
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

local function storage_supported(storage, format)
  -- the bridge gets the frames as TIFF (set it to 16 bit in the format's options)
  return format.extension == "tif" or format.extension == "tiff"
end

-- NOTE: initialize never returns a new image list: on darktable 4.2.1 returning {} (or any
-- replacement list) makes the export job crash when it is disposed (seen under Xvfb).
-- Refusing or re-exporting is done by discarding darktable's files in store instead.
local function storage_initialize(storage, format, images, high_quality, extra)
  extra.images = {}
  for _, img in ipairs(images) do extra.images[#extra.images + 1] = img end
  if #extra.images < 2 then
    notify(_("focus stack: select at least two images"))
    extra.refused = true
    return nil
  end
  local exe, exe_err = bridge_executable()
  if not exe then
    notify(exe_err)
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
  extra.dir, dir_err = make_job_dir()
  if not extra.dir then
    notify(dir_err)
    extra.refused = true
    return nil
  end
  extra.frames = {}
  extra.frame_images = {}
  return nil
end

local function storage_store(storage, image, format, filename, number, total, high_quality, extra)
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

local storage_finalize_flow

local function storage_finalize(storage, image_table, extra)
  local ok, err = pcall(storage_finalize_flow, storage, image_table, extra)
  if not ok then notify(string.format(_("focus stack failed: %s"), tostring(err))) end
  fs.storage_runs = (fs.storage_runs or 0) + 1
end

storage_finalize_flow = function(storage, image_table, extra)
  if extra.refused then
    for _, tmpfile in pairs(image_table) do os.remove(tmpfile) end
    return
  end
  if extra.self_export then
    local images = {}
    for _, img in ipairs(extra.images or {}) do images[#images + 1] = img end
    stack(sort_by_name(images))
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
    local fa, fb = image_file(a.img), image_file(b.img)
    if fa == fb then return a.img.id < b.img.id end
    return fa < fb
  end)
  local images, frames = {}, {}
  for i, p in ipairs(pairs_list) do images[i] = p.img; frames[i] = p.frame end
  if #frames == 0 then
    notify(_("focus stack: the export produced nothing"))
    remove_job_dir({dir = extra.dir, frames = {}})
    return
  end
  local ok = stack(images, frames, extra.dir)
  -- darktable's own temp files that never reached store (foreign) are removed too
  for _, p in ipairs(pairs_list) do if p.foreign then os.remove(p.frame) end end
  if not ok and extra.dir then remove_job_dir({dir = extra.dir, frames = frames}) end
end

-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
-- registration
-- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -

fs.module_widget = build_module_widgets()

local storage_opts = make_option_widgets()
fs.storage_widget = dt.new_widget("box"){
  orientation = "vertical",
  storage_opts.method, storage_opts.align, storage_opts.format, storage_opts.depth_map,
  dt.new_widget("label"){label = _("output folder and program: see the focus stack module")},
}

dt.register_storage(MODULE, _("focus stack"), storage_store, storage_finalize,
  storage_supported, storage_initialize, fs.storage_widget)

if dt.gui.current_view().id == "lighttable" then
  install_module()
else
  if not fs.event_registered then
    dt.register_event(MODULE, "view-changed",
      function(event, old_view, new_view)
        if new_view.name == "lighttable" then install_module() end
      end
    )
    fs.event_registered = true
  end
end

local function destroy()
  dt.destroy_storage(MODULE)
  if fs.module_installed then dt.gui.libs[MODULE].visible = false end
  if fs.event_registered then
    pcall(dt.destroy_event, MODULE, "view-changed")
    fs.event_registered = false
  end
end

local function restart()
  dt.register_storage(MODULE, _("focus stack"), storage_store, storage_finalize,
    storage_supported, storage_initialize, fs.storage_widget)
  if fs.module_installed then
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
  widgets = fs.widgets,
  state = fs,
  json = json,
  quote = quote,
  stack = function(images) return stack(sort_by_name(images)) end,
  lens = lens_apply,
  refresh_exif = refresh_exif,
  -- what the progress job's cancel button does
  cancel = function()
    local job = fs.current_job
    if job and job.on_cancel then job.on_cancel(); return true end
    return false
  end,
}

return script_data
