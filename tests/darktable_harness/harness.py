"""Start the real darktable GUI under Xvfb, load the plugin the way a user does (luarc),
run a Lua driver through ``--luacmd`` and collect the JSON report it writes.

Recipe from ../shared/docs/darktable.md: fresh config/cache/library per attempt, the driver is
wrapped in pcall and always quits through ``global/quit``, ``timeout -k`` sits inside
``xvfb-run``. A start that deadlocks (no "started" marker in time) is killed and retried.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / 'darktable_lua' / 'focus_stack.lua'
STORAGE_NAME = 'focus_stack'

PRELUDE = r'''
local dt = require "darktable"
local R = {log = {}}
local function _enc(v)
  local t = type(v)
  if v == nil then return "null"
  elseif t == "boolean" then return v and "true" or "false"
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return string.format("%d", v) end
    return (string.format("%.10g", v):gsub(",", "."))
  elseif t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
  elseif t == "table" then
    if #v > 0 then
      local o = {} for i, x in ipairs(v) do o[i] = _enc(x) end
      return "[" .. table.concat(o, ",") .. "]"
    end
    local o = {}
    for k, x in pairs(v) do o[#o + 1] = _enc(tostring(k)) .. ":" .. _enc(x) end
    return "{" .. table.concat(o, ",") .. "}"
  end
  return _enc(tostring(v))
end
local function LOG(...) local t = {} for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end R.log[#R.log + 1] = table.concat(t, " ") end
local function WRITE(path, text) local f = assert(io.open(path, "w")) f:write(text) f:close() end
local function EXISTS(path) local f = io.open(path, "rb") if f then f:close() return true end return false end
WRITE(__STARTED__, (os.getenv("DISPLAY") or "") .. "\n" .. (os.getenv("XAUTHORITY") or ""))
local FS = package.loaded["contrib/focus_stack"]
R.plugin_loaded = type(FS) == "table"
local FSI = type(FS) == "table" and FS.focus_stack or nil
local function CLICK(name) local w = FSI.widgets[name]; return w.clicked_callback(w) end
local function IMPORT_ALL(paths) local t = {} for i, p in ipairs(paths) do t[i] = dt.database.import(p) end return t end
local function SHOT()
  WRITE(__SHOT_REQ__, "1")
  for i = 1, 150 do if EXISTS(__SHOT_DONE__) then os.remove(__SHOT_DONE__) return true end dt.control.sleep(100) end
  return false
end
local ok, err = pcall(function()
__BODY__
end)
R.ok = ok
R.error = (not ok) and tostring(err) or nil
R.last_message = FSI and FSI.state.last_message or nil
R.last_command = FSI and FSI.state.last_command or nil
WRITE(__REPORT__ .. ".tmp", _enc(R))
os.rename(__REPORT__ .. ".tmp", __REPORT__)
dt.gui.action("global/quit", 0, "", "", 1.0)
'''


def lua_string(s: str | os.PathLike) -> str:
    """A Lua long-bracket-free string literal for any path."""
    data = str(s).encode('utf-8')
    return '"' + ''.join(f'\\{b}' if (b < 32 or b in (34, 92) or b > 126) else chr(b)
                         for b in data) + '"'


@dataclass
class DarktableResult:
    report: dict
    attempt_dir: Path
    log: str
    attempts: int
    seconds: float
    library: Path = field(init=False)
    data_db: Path = field(init=False)
    tmp_dir: Path = field(init=False)

    def __post_init__(self):
        self.library = self.attempt_dir / 'library.db'
        self.data_db = self.attempt_dir / 'cfg' / 'data.db'
        self.tmp_dir = self.attempt_dir / 'tmp'


class DarktableStartError(RuntimeError):
    pass


def x_env(started_text: str) -> dict:
    """Environment for X clients (import, xdotool) talking to this run's Xvfb."""
    display, _, xauth = started_text.partition('\n')
    env = dict(os.environ, DISPLAY=display)
    if xauth:
        env['XAUTHORITY'] = xauth
    return env


def darktable_available() -> bool:
    return bool(shutil.which('darktable') and shutil.which('xvfb-run'))


def run_darktable(work: Path, body: str, *, bridge_dir: Path | None = None, tries: int = 3,
                  start_timeout: float = 40.0, timeout: float = 150.0, extra_conf: dict | None = None,
                  on_started=None, on_shot=None, env: dict | None = None) -> DarktableResult:
    """Run ``body`` (Lua, inside the driver's pcall) in a fresh darktable; return its report.

    Retries (up to ``tries``) only when darktable never reached the driver: that is the
    start-up deadlock the docs describe, and nothing has happened to the test's files yet.
    ``on_started(display, attempt_dir)`` runs in Python once the driver runs.
    ``on_shot(display, attempt_dir)`` runs when the driver calls SHOT() (it waits meanwhile,
    with the Lua lock released, so darktable keeps drawing).
    """
    work = Path(work)
    logs = []
    t0 = time.monotonic()
    for attempt in range(1, tries + 1):
        adir = work / f'dt_attempt{attempt}'
        if adir.exists():
            shutil.rmtree(adir)
        for sub in ('home/.config', 'home/.cache', 'tmp', 'cfg/lua/contrib', 'cache'):
            (adir / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(PLUGIN, adir / 'cfg' / 'lua' / 'contrib' / 'focus_stack.lua')
        (adir / 'cfg' / 'luarc').write_text('require "contrib/focus_stack"\n')
        started = adir / 'started'
        report = adir / 'report.json'
        driver = adir / 'driver.lua'
        driver.write_text(PRELUDE.replace('__STARTED__', lua_string(started))
                          .replace('__REPORT__', lua_string(report))
                          .replace('__SHOT_REQ__', lua_string(adir / 'shot_request'))
                          .replace('__SHOT_DONE__', lua_string(adir / 'shot_done'))
                          .replace('__BODY__', body))
        run_env = dict(os.environ)
        run_env.update(HOME=str(adir / 'home'), XDG_CONFIG_HOME=str(adir / 'home/.config'),
                       XDG_CACHE_HOME=str(adir / 'home/.cache'), TMPDIR=str(adir / 'tmp'),
                       LC_ALL='C.UTF-8', LANG='C.UTF-8')
        if bridge_dir is not None:
            run_env['PATH'] = f'{bridge_dir}{os.pathsep}{run_env.get("PATH", "")}'
        if env:
            run_env.update(env)
        conf = {'write_sidecar_files': 'never',
                'plugins/lighttable/export/storage_name': STORAGE_NAME,
                'plugins/lighttable/export/format_name': 'tiff',
                'plugins/imageio/format/tiff/bpp': '16',
                'ui_last/window_x': '0', 'ui_last/window_y': '0',
                'ui_last/window_w': '1280', 'ui_last/window_h': '1024',
                'ui_last/maximized': 'true'}
        conf.update(extra_conf or {})
        cmd = ['xvfb-run', '-a', '-s', '-screen 0 1280x1024x24',
               'timeout', '-k', '5', str(int(timeout)),
               'darktable', '--configdir', str(adir / 'cfg'), '--cachedir', str(adir / 'cache'),
               '--library', str(adir / 'library.db'), '--tmpdir', str(adir / 'tmp'),
               '--disable-opencl', '-d', 'lua']
        for k, v in conf.items():
            cmd += ['--conf', f'{k}={v}']
        cmd += ['--luacmd', f'dofile({lua_string(driver)})']
        logf = open(adir / 'darktable.log', 'wb')
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=run_env,
                                cwd=adir, start_new_session=True)
        start = time.monotonic()
        hook_done = False
        hung = False
        while proc.poll() is None:
            time.sleep(0.2)
            if not started.exists() and time.monotonic() - start > start_timeout:
                hung = True
                break
            if started.exists() and on_started and not hook_done:
                hook_done = True
                on_started(started.read_text(), adir)
            req = adir / 'shot_request'
            if req.exists():
                req.unlink()
                try:
                    if on_shot:
                        on_shot(started.read_text(), adir)
                finally:
                    (adir / 'shot_done').write_text('1')
            if time.monotonic() - start > timeout + 20:
                break
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        logf.close()
        log = (adir / 'darktable.log').read_text(errors='replace')
        logs.append(f'--- attempt {attempt} (rc={proc.returncode}, hung={hung})\n{log[-4000:]}')
        if report.exists():
            return DarktableResult(json.loads(report.read_text()), adir, log, attempt,
                                   time.monotonic() - t0)
        if started.exists():
            # the driver ran but wrote no report: a real failure, not a start-up hang
            break
    raise DarktableStartError('darktable produced no report:\n' + '\n'.join(logs))
