--[[
    lib/focus_stack/shell.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    Every text a shell reads: the command lines for sh (Unix) and cmd.exe (Windows) that
    dt.control.execute runs, and the run.bat that starts the bridge on Windows. No user's
    file name ever goes in: only the bridge's path, the job folder (a name this script made
    up inside darktable's temporary folder) and files in it.

    Unix: every argument single-quoted, a quote inside written '\''.
    Windows: see cmd_path and run_bat.

    local shell = require "lib/focus_stack/shell"
]]

local platform = require "lib/focus_stack/platform"

local IS_WINDOWS = platform.IS_WINDOWS

local shell = {}

-- one argument for sh: single quotes keep everything literal, a quote inside is '\''
function shell.quote(arg)
  return "'" .. arg:gsub("'", "'\\''") .. "'"
end

-- a path for cmd.exe's own command line (dt.control.execute is system(), i.e. `cmd /c`):
-- inside "..." cmd still expands %VAR% (and !VAR! where delayed expansion is switched on),
-- there is no escape for them there, and system() passes the bytes through the ANSI code
-- page; a path with any of those goes in as %TEMP%... when it lies there (cmd expands the
-- variable itself, in Unicode, and does not look into the result again), else not at all
local CMD_UNSAFE = '[%%!"%c\128-\255]'
local CMD_VARS = {"TEMP", "TMP", "LOCALAPPDATA", "USERPROFILE"}

function shell.cmd_path(path)
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

-- true when a program path cannot be run safely
function shell.unsafe_program(path)
  if path:find("[%z\r\n]") then return true end
  if IS_WINDOWS then
    -- run.bat doubles %, quotes the rest and turns delayed expansion off; `call` (needed for a
    -- .bat/.cmd) expands % once more and doubles carets even inside quotes
    if path:find('[%c"]') then return true end
    if is_batch_file(path) and path:find("[%%!^]") then return true end
  end
  return false
end

-- `<windows> "<path>" >NUL 2>NUL` for cmd.exe (nil when it cannot be given the path), or
-- `<unix> '<path>'` for sh
local function on_path(path, windows, unix)
  if IS_WINDOWS then
    local arg = shell.cmd_path(path)
    return arg and windows .. " " .. arg .. " >NUL 2>NUL"
  end
  return unix .. " " .. shell.quote(path)
end

-- create `dir`, failing when the name exists (a folder, a file or a link)
function shell.mkdir(dir)
  return on_path(dir, "mkdir", "mkdir -m 700 --")
end

-- remove the folder `dir` and everything in it (only ever a job folder)
function shell.remove_tree(dir)
  return on_path(dir, "rmdir /s /q", "rm -rf --")
end

-- end the process `pid` (a string of digits, see runner's read_pid) and, on Windows, its children
function shell.kill(pid)
  if IS_WINDOWS then return "taskkill /F /T /PID " .. pid .. " >NUL 2>NUL" end
  return "kill -TERM " .. pid .. " >/dev/null 2>&1"
end

-- Unix: `<exe> run-job <manifest>` in the background, its exit status written to <dir>/rc;
-- the bridge writes its own pid (pid_file), <dir>/shell_pid ($!) is the fallback for a
-- bridge that does not
function shell.background_job(exe, manifest, dir)
  return "( " .. shell.quote(exe) .. " run-job " .. shell.quote(manifest) ..
    " </dev/null >/dev/null 2>" .. shell.quote(dir .. "/stderr.txt") ..
    " & echo $! >" .. shell.quote(dir .. "/shell_pid") ..
    "; wait $!; echo $? >" .. shell.quote(dir .. "/rc") .. " ) </dev/null >/dev/null 2>&1 &"
end

-- Windows: the command that starts the run.bat at `bat` without waiting (nil: see cmd_path)
function shell.start_bat(bat)
  local arg = shell.cmd_path(bat)
  return arg and 'start "" /b ' .. arg
end

-- run.bat: pure ASCII and no user's string but the bridge's path from the preferences: the
-- job folder is referred to as %~dp0 (cmd expands it once, in Unicode), the manifest holds
-- every other path, a bridge found on PATH is called by its name
function shell.run_bat(exe, from_path)
  local program
  if from_path then
    program = "call focusbridge"
  elseif is_batch_file(exe) then
    program = 'call "' .. exe .. '"'  -- unsafe_program let no % ^ ! through
  else
    program = '"' .. exe:gsub("%%", "%%%%") .. '"'
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

return shell
