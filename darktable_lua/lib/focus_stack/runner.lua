--[[
    lib/focus_stack/runner.lua - part of focus_stack.lua (GPL-3.0-or-later, see there)

    Runs the bridge: `<focusbridge> run-job <manifest>` in the background, for every kind of
    job (stack, lens, brackets, batch, check). One job = a private folder <darktable tmp>/focus_stack_<random> (created
    exclusively, mode 700) holding the manifest, the files the bridge reports through
    (progress.jsonl, status.json, stderr.txt, rc, pid) and the cancel file; the folder goes
    away after every run, whatever the outcome.

    local runner = require "lib/focus_stack/runner"
    local exe, err, from_path = runner.find_bridge(chosen)
    local jobs = runner.new(state)   -- state: the script's state table (see run_bridge_job)
    jobs.run_bridge_job(kind, manifest, on_progress, opts)
    jobs.make_job_dir(), jobs.remove_job_dir(job)
]]

local dt = require "darktable"
local _ = require "lib/focus_stack/i18n"
local json = require "lib/focus_stack/json"
local naming = require "lib/focus_stack/naming"
local platform = require "lib/focus_stack/platform"
local shell = require "lib/focus_stack/shell"

local IS_WINDOWS, PS = platform.IS_WINDOWS, platform.PS
local read_file, write_file = platform.read_file, platform.write_file

local runner = {}

runner.POLL_MS = 200
-- watchdog: give up when the bridge reports nothing new for this long
runner.STALL_LIMIT_S = 30 * 60
-- after a cancel request, how long the bridge gets before it is killed
runner.CANCEL_GRACE_S = 20

-- the progress job's text for each kind of job
local TITLES = {stack = _("focus stack"), lens = _("lens data"), brackets = _("finding brackets"),
                batch = _("focus stack"), check = _("check bracket")}

-- the kinds whose manifest names no progress file: finding brackets is one exiftool call,
-- there is nothing to show on the way (the job's bar stays empty until it ends)
local NO_PROGRESS = {brackets = true}

-- every file the plugin or the bridge puts in a job folder (frames aside)
local JOB_FILES = {"manifest.json", "progress.jsonl", "cancel", "status.json", "status.json.tmp",
                   "stderr.txt", "rc", "pid", "shell_pid", "run.bat", ".probe"}

-- a message id stays one literal, whole, for translation tools
-- luacheck: push no max line length
local TMPDIR_HINT =
  _("the temporary folder %s has characters the Windows command line cannot pass: start darktable with --tmpdir set to a plain folder")
-- luacheck: pop

-- the focusbridge program to run: `chosen` (the preference; "" or nil: look on PATH).
-- Returns the path, nil and whether it came from PATH; or nil and a message for the user.
function runner.find_bridge(chosen)
  if chosen and chosen ~= "" then
    local absolute = chosen:sub(1, 1) == "/" or (IS_WINDOWS and chosen:match("^%a:[/\\]"))
    if not absolute then
      return nil, string.format(_("focusbridge path must be absolute: %s"), chosen)
    end
    if shell.unsafe_program(chosen) then
      return nil, string.format(
        _("focusbridge path contains characters that cannot be run safely: %s"), chosen)
    end
    if not platform.is_regular_file(chosen) then
      return nil, string.format(_("focusbridge not found at %s"), chosen)
    end
    return chosen, nil, false
  end
  local found = platform.find_on_path("focusbridge")
  if found and not shell.unsafe_program(found) then return found, nil, true end
  -- luacheck: push no max line length
  return nil,
    _("focusbridge not found on PATH: install it (uv tool install, see its README) or choose the program in the focus stack module")
  -- luacheck: pop
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

local function last_line(text)
  local last
  for line in (text or ""):gmatch("[^\r\n]+") do
    if line:find("%S") then last = line end
  end
  return last
end

-- the job runner of one script instance. `state` is the script's state table: the runner
-- keeps state.busy (a job runs), state.current_job (its cancel: current_job.on_cancel()),
-- state.last_command (the last shell command) and state.last_manifest up to date
function runner.new(state)
  local jobs = {}

  -- run one shell command (never with a user's file name in it)
  local function execute(cmd)
    state.last_command = cmd
    return dt.control.execute(cmd)
  end

  -- create a private temporary folder for one job; returns its path, or nil and a message
  function jobs.make_job_dir()
    local base = dt.configuration.tmp_dir
    if IS_WINDOWS and not shell.cmd_path(base) then
      return nil, string.format(TMPDIR_HINT, base)
    end
    for _ = 1, 5 do
      local dir = base .. PS .. "focus_stack_" .. naming.random_name()
      -- mkdir fails when the name exists (a folder, a file or a link): never reuse one
      if execute(shell.mkdir(dir)) == 0 and write_file(dir .. PS .. ".probe", "") then
        os.remove(dir .. PS .. ".probe")
        return dir
      end
    end
    return nil, _("could not create a temporary folder")
  end

  -- remove a job's folder, its frames and whatever else the bridge left there
  function jobs.remove_job_dir(job)
    if not job or not job.dir then return end
    for _, f in ipairs(job.frames or {}) do os.remove(f) end
    for _, name in ipairs(JOB_FILES) do os.remove(job.dir .. PS .. name) end
    -- on Windows os.remove never removes a folder, nor can io.open tell one exists
    if not os.remove(job.dir) and (IS_WINDOWS or platform.file_exists(job.dir .. PS .. ".")) then
      -- something unexpected is left: remove the folder (our generated path only)
      local cmd = shell.remove_tree(job.dir)
      if cmd then execute(cmd) end
    end
    job.dir = nil
  end

  -- one job: the program and its private folder with the files the plugin and bridge share
  local function new_job(bridge, dir, frames)
    local job = {exe = bridge.exe, exe_from_path = bridge.from_path, cancelled = false,
                 frames = frames, dir = dir}
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

  -- the manifest: the kind's fields plus what every job carries (the bridge reports through
  -- the progress and status files, stops when the cancel file appears, and writes its own
  -- pid for a kill after the grace period)
  local function write_manifest(job, kind, fields)
    local manifest = {}
    for k, v in pairs(fields) do manifest[k] = v end
    manifest.version = 1
    manifest.kind = kind
    if not NO_PROGRESS[kind] then manifest.progress_file = job.dir .. PS .. "progress.jsonl" end
    manifest.status_file = job.dir .. PS .. "status.json"
    manifest.cancel_file = job.cancel_file
    manifest.pid_file = job.pid_file
    state.last_manifest = manifest
    local written, err = write_file(job.manifest, json.encode(manifest) .. "\n")
    if not written then return nil, tostring(err) end
    return true
  end

  -- start `<exe> run-job <manifest>` in the background; returns true or nil, message
  local function start(job)
    local cmd
    if IS_WINDOWS then
      local bat = job.dir .. PS .. "run.bat"
      cmd = shell.start_bat(bat)
      if not cmd then return nil, string.format(TMPDIR_HINT, job.dir) end
      local written, err = write_file(bat, shell.run_bat(job.exe, job.exe_from_path))
      if not written then return nil, tostring(err) end
    else
      cmd = shell.background_job(job.exe, job.manifest, job.dir)
    end
    local rc = execute(cmd)
    if rc ~= 0 then
      return nil, string.format(_("could not start focusbridge (status %s)"), tostring(rc))
    end
    return true
  end

  local function kill(job)
    local pid = read_pid(job.pid_file) or (not IS_WINDOWS and read_pid(job.dir .. PS .. "shell_pid"))
    if pid then execute(shell.kill(pid)) end
  end

  -- poll the bridge until it finishes; returns the decoded status table (never nil)
  local function wait(job, progress_cb)
    local status_path = job.dir .. PS .. "status.json"
    local rc_path = job.dir .. PS .. "rc"
    local progress_path = job.dir .. PS .. "progress.jsonl"
    local last_fraction, last_change = -1, os.time()
    local cancel_sent_at = nil
    local killed = false
    while true do
      local line = last_line(read_file(progress_path))
      if line then
        local p = json.decode(line)
        -- a line that is no object (garbage: a bare number, true) is no progress
        if type(p) == "table" and type(p.fraction) == "number" and p.fraction ~= last_fraction then
          last_fraction = p.fraction
          last_change = os.time()
          progress_cb(p.fraction)
        end
      end
      local status_text = read_file(status_path)
      if status_text and status_text ~= "" then
        local status = json.decode(status_text)
        if type(status) == "table" then return status end
      end
      local rc_text = read_file(rc_path)
      if rc_text and rc_text:match("%d") then
        -- the bridge exited; give a status file that races with the rc file one more look
        dt.control.sleep(runner.POLL_MS)
        status_text = read_file(status_path)
        local status = status_text and json.decode(status_text)
        if type(status) == "table" then return status end
        local code = tonumber(rc_text:match("(%d+)"))
        local err = last_line(read_file(job.dir .. PS .. "stderr.txt"))
        if err then err = err:gsub("^focusbridge: error: ", "") end
        return {ok = false, cancelled = (code == 130) or job.cancelled,
                error = err or string.format(_("focusbridge stopped with exit status %d"), code or -1)}
      end
      if job.cancelled and not cancel_sent_at then
        write_file(job.cancel_file, "cancel\n")
        cancel_sent_at = os.time()
      end
      if cancel_sent_at and not killed and os.time() - cancel_sent_at > runner.CANCEL_GRACE_S then
        kill(job)
        killed = true
      end
      if os.time() - last_change > runner.STALL_LIMIT_S and not killed then
        write_file(job.cancel_file, "cancel\n")
        kill(job)
        killed = true
        job.stalled = true
      end
      if killed and os.time() - (cancel_sent_at or last_change) > runner.CANCEL_GRACE_S + 10 then
        return {ok = false, cancelled = job.cancelled,
                error = job.stalled and _("focusbridge stopped responding") or _("cancelled")}
      end
      dt.control.sleep(runner.POLL_MS)
    end
  end

  --[[ Run one bridge job from start to end, for every kind: a private folder, a progress job
    whose cancel button reaches the bridge, the manifest, start, poll, clean-up. The caller
    has checked state.busy and found the program (find_bridge).
      kind         "stack", "lens", "brackets", "batch" or "check" (the manifest's kind)
      manifest     the kind's own fields (run_bridge_job adds version, kind and the job
                   files), or a function(job, bar) that makes them (or returns nil and a
                   message) once the folder and the progress bar exist: the stack exports its
                   frames into job.dir first, listing them in job.frames
      on_progress  function(bar, fraction) showing the bridge's progress (0..1) on the
                   progress bar; nil: bar.percent = fraction. Called with 1 when it says ok
      opts.bridge  {exe =, from_path =}: the program (find_bridge)
      opts.dir, opts.frames  a job folder made earlier and the frames in it (export target;
                   every frame there, also those the manifest leaves out: they go with it)
    Returns the bridge's status table: ok, error, cancelled (true too when the user cancelled
    and the bridge did not finish), cancel_requested (the user pressed cancel), and the kind's
    own keys; or nil and a message when the bridge never ran. A Lua error is raised again after the clean-up. ]]
  function jobs.run_bridge_job(kind, manifest, on_progress, opts)
    on_progress = on_progress or function(bar, fraction) bar.percent = fraction end
    state.busy = true
    local dir, dir_err = opts.dir, nil
    if not dir then dir, dir_err = jobs.make_job_dir() end
    local job = new_job(opts.bridge, dir, opts.frames)
    state.current_job = job
    local bar
    local ok, status, message = pcall(function()
      if not job.dir then return nil, dir_err end
      bar = dt.gui.create_job(TITLES[kind], true, job.on_cancel)
      bar.percent = 0
      local fields, err = manifest, nil
      if type(manifest) == "function" then fields, err = manifest(job, bar) end
      if not fields then return nil, err end
      local written, write_err = write_manifest(job, kind, fields)
      if not written then return nil, write_err end
      local started, start_err = start(job)
      if not started then return nil, start_err end
      local result = wait(job, function(fraction) on_progress(bar, fraction) end)
      -- a cancel that reaches the bridge while it writes lets it finish (it says ok): that
      -- result counts; one the bridge did not finish is cancelled, whatever it reports
      result.cancelled = result.cancelled or (job.cancelled and not result.ok) or false
      -- the user pressed cancel, whatever the bridge made of it (a flow with more steps to go
      -- stops here even when this one finished)
      result.cancel_requested = job.cancelled
      if result.ok and not result.cancelled then on_progress(bar, 1) end
      return result
    end)
    if bar then bar.valid = false end
    jobs.remove_job_dir(job)
    state.busy = false
    state.current_job = nil
    if not ok then error(status, 0) end
    return status, message
  end

  return jobs
end

return runner
