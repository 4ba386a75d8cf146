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
PLUGIN_DIR = ROOT / 'darktable_lua'
STORAGE_NAME = 'focus_stack'

# How a user installs the plugin, relative to <configdir>/lua: the script, where its
# lib/focus_stack/ folder goes, and the luarc line that loads it.
LAYOUTS = {
    # into lua-scripts' tree (what the script manager runs; lib/ beside lua-scripts' own)
    'lua-scripts': ('contrib/focus_stack.lua', 'lib/focus_stack', 'contrib/focus_stack'),
    # on its own: the script and lib/ straight in <configdir>/lua
    'standalone': ('focus_stack.lua', 'lib/focus_stack', 'focus_stack'),
    # a checkout of this repository in <configdir>/lua (as the script manager's "install
    # more scripts" clones one): nothing on package.path leads there, the script finds it
    'checkout': (
        'focusbridge/darktable_lua/focus_stack.lua',
        'focusbridge/darktable_lua/lib/focus_stack',
        'focusbridge/darktable_lua/focus_stack',
    ),
}


def install_plugin(lua_dir: Path, layout: str = 'lua-scripts') -> str:
    """Copy the script and its lib/focus_stack/ folder into ``lua_dir``; return the name to
    ``require``."""
    script, lib, name = LAYOUTS[layout]
    (lua_dir / script).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN_DIR / 'focus_stack.lua', lua_dir / script)
    shutil.copytree(PLUGIN_DIR / 'lib' / 'focus_stack', lua_dir / lib, dirs_exist_ok=True)
    return name


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
local SCRIPT_DATA = package.loaded[__SCRIPT_NAME__]
R.plugin_loaded = type(SCRIPT_DATA) == "table"
R.package_path = package.path
-- the plugin's widgets and internals (script_data.focus_stack)
local PLUGIN = type(SCRIPT_DATA) == "table" and SCRIPT_DATA.focus_stack or nil
local function CLICK(name) local w = PLUGIN.widgets[name]; return w.clicked_callback(w) end
local function IMPORT_ALL(paths) local t = {} for i, p in ipairs(paths) do t[i] = dt.database.import(p) end return t end
local function SHOT(name)
  WRITE(__SHOT_REQ__, name or "shot")
  for i = 1, 150 do if EXISTS(__SHOT_DONE__) then os.remove(__SHOT_DONE__) return true end dt.control.sleep(100) end
  return false
end
local ok, err = pcall(function()
__BODY__
end)
R.ok = ok
R.error = (not ok) and tostring(err) or nil
R.last_message = PLUGIN and PLUGIN.state.last_message or nil
R.last_command = PLUGIN and PLUGIN.state.last_command or nil
WRITE(__REPORT__ .. ".tmp", _enc(R))
os.rename(__REPORT__ .. ".tmp", __REPORT__)
dt.gui.action("global/quit", 0, "", "", 1.0)
'''


def lua_string(s: str | os.PathLike) -> str:
    """A Lua long-bracket-free string literal for any path."""
    data = str(s).encode('utf-8')
    return (
        '"'
        + ''.join(f'\\{b}' if (b < 32 or b in (34, 92) or b > 126) else chr(b) for b in data)
        + '"'
    )


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


def move_pointer(started_text: str, x: int, y: int) -> None:
    """Put the mouse pointer of this run's Xvfb at (x, y) (XWarpPointer through libX11), so
    that no hover or tooltip changes a screenshot."""
    import ctypes
    import ctypes.util

    x11 = ctypes.CDLL(ctypes.util.find_library('X11') or 'libX11.so.6')
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x11.XDefaultRootWindow.restype = ctypes.c_ulong
    x11.XWarpPointer.argtypes = [
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_int,
    ]
    x11.XFlush.argtypes = x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    env = x_env(started_text)
    old = os.environ.get('XAUTHORITY')
    os.environ['XAUTHORITY'] = env.get('XAUTHORITY', '')
    try:
        display = x11.XOpenDisplay(env['DISPLAY'].encode())
    finally:
        if old is None:
            os.environ.pop('XAUTHORITY', None)
        else:
            os.environ['XAUTHORITY'] = old
    if not display:
        raise RuntimeError(f'cannot open display {env["DISPLAY"]}')
    x11.XWarpPointer(display, 0, x11.XDefaultRootWindow(display), 0, 0, 0, 0, x, y)
    x11.XFlush(display)
    x11.XCloseDisplay(display)


def darktable_available() -> bool:
    return bool(shutil.which('darktable') and shutil.which('xvfb-run'))


def run_darktable(
    work: Path,
    body: str,
    *,
    bridge_dir: Path | None = None,
    tries: int = 3,
    start_timeout: float = 40.0,
    timeout: float = 150.0,
    extra_conf: dict | None = None,
    on_started=None,
    on_shot=None,
    env: dict | None = None,
    layout: str = 'lua-scripts',
) -> DarktableResult:
    """Run ``body`` (Lua, inside the driver's pcall) in a fresh darktable; return its report.

    The plugin is installed the way ``layout`` (see LAYOUTS) says and loaded from luarc.

    Retries (up to ``tries``) only when darktable never reached the driver: that is the
    start-up deadlock the docs describe, and nothing has happened to the test's files yet.
    ``on_started(display, attempt_dir)`` runs in Python once the driver runs.
    ``on_shot(started_text, attempt_dir, name)`` runs when the driver calls SHOT(name) (it
    waits meanwhile, with the Lua lock released, so darktable keeps drawing).
    """
    work = Path(work)
    logs = []
    t0 = time.monotonic()
    for attempt in range(1, tries + 1):
        adir = work / f'dt_attempt{attempt}'
        if adir.exists():
            shutil.rmtree(adir)
        for sub in ('home/.config', 'home/.cache', 'tmp', 'cfg/lua', 'cache'):
            (adir / sub).mkdir(parents=True, exist_ok=True)
        script_name = install_plugin(adir / 'cfg' / 'lua', layout)
        (adir / 'cfg' / 'luarc').write_text(f'require "{script_name}"\n')
        started = adir / 'started'
        report = adir / 'report.json'
        driver = adir / 'driver.lua'
        driver.write_text(
            PRELUDE.replace('__SCRIPT_NAME__', lua_string(script_name))
            .replace('__STARTED__', lua_string(started))
            .replace('__REPORT__', lua_string(report))
            .replace('__SHOT_REQ__', lua_string(adir / 'shot_request'))
            .replace('__SHOT_DONE__', lua_string(adir / 'shot_done'))
            .replace('__BODY__', body)
        )
        run_env = dict(os.environ)
        run_env.update(
            HOME=str(adir / 'home'),
            XDG_CONFIG_HOME=str(adir / 'home/.config'),
            XDG_CACHE_HOME=str(adir / 'home/.cache'),
            TMPDIR=str(adir / 'tmp'),
            LC_ALL='C.UTF-8',
            LANG='C.UTF-8',
        )
        if bridge_dir is not None:
            run_env['PATH'] = f'{bridge_dir}{os.pathsep}{run_env.get("PATH", "")}'
        if env:
            run_env.update(env)
        conf = {
            'write_sidecar_files': 'never',
            'plugins/lighttable/export/storage_name': STORAGE_NAME,
            'plugins/lighttable/export/format_name': 'tiff',
            'plugins/imageio/format/tiff/bpp': '16',
            'ui_last/window_x': '0',
            'ui_last/window_y': '0',
            'ui_last/window_w': '1280',
            'ui_last/window_h': '1024',
            'ui_last/maximized': 'true',
        }
        conf.update(extra_conf or {})
        cmd = [
            'xvfb-run',
            '-a',
            '-s',
            '-screen 0 1280x1024x24',
            'timeout',
            '-k',
            '5',
            str(int(timeout)),
            'darktable',
            '--configdir',
            str(adir / 'cfg'),
            '--cachedir',
            str(adir / 'cache'),
            '--library',
            str(adir / 'library.db'),
            '--tmpdir',
            str(adir / 'tmp'),
            '--disable-opencl',
            '-d',
            'lua',
        ]
        for k, v in conf.items():
            cmd += ['--conf', f'{k}={v}']
        cmd += ['--luacmd', f'dofile({lua_string(driver)})']
        logf = open(adir / 'darktable.log', 'wb')
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=run_env,
            cwd=adir,
            start_new_session=True,
        )
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
                name = req.read_text()
                req.unlink()
                try:
                    if on_shot:
                        on_shot(started.read_text(), adir, name)
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
            return DarktableResult(
                json.loads(report.read_text()), adir, log, attempt, time.monotonic() - t0
            )
        if started.exists():
            # the driver ran but wrote no report: a real failure, not a start-up hang
            break
    raise DarktableStartError('darktable produced no report:\n' + '\n'.join(logs))
