"""Unit tests of darktable_lua/focus_stack.lua (and its lib/focus_stack/) under lupa (Lua 5.4)
with a fake darktable.

The plugin is loaded as darktable loads it: the script by its path (dofile), and the script
finds its lib/focus_stack/ folder beside itself and puts it on package.path.
The fake records everything the plugin does. dt.control.execute is answered in Python: it
creates the job folder for `mkdir`, and plays the bridge for `run-job` (reading the manifest,
writing progress and status files) according to the scenario a test picks. One test runs the
plugin's real command line through `sh` against a stub bridge to prove the quoting.

`Plugin(..., os_name='windows')` loads the script as darktable on Windows would (it reads
dt.configuration.running_os once, at load): paths then use backslashes, which on this
machine makes each job file a single oddly named file beside the job folder; the fake
answers `mkdir`, `start ... run.bat`, `rmdir` and `taskkill` like cmd.exe would.
Lua's os.time follows a fake clock that each dt.control.sleep advances, so grace periods
pass without waiting.

Every manifest the plugin hands to the bridge, on either platform and through the real `sh`
too, passes through `Plugin._record_manifest` and lands decoded in `Plugin.manifests`, in
order: the one place to check them all (e.g. against the job manifest's JSON Schema).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from darktable_harness.harness import LAYOUTS, install_plugin

from pybridge.job import manifest_schema

MANIFEST_SCHEMA = manifest_schema()

lupa = pytest.importorskip('lupa.lua54')

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / 'darktable_lua'
PLUGIN = PLUGIN_DIR / 'focus_stack.lua'
LIB_DIR = PLUGIN_DIR / 'lib' / 'focus_stack'
LUA_SOURCES = [PLUGIN, *sorted(LIB_DIR.glob('*.lua'))]
FAKE = Path(__file__).resolve().parent / 'darktable_harness' / 'fake_darktable.lua'

NASTY = [
    "it's \"q\".jpg",
    'a $(touch PWNED).jpg',
    'b `touch PWNED`.jpg',
    'c; touch PWNED.jpg',
    'Ærø ünïcødé.jpg',
]


def job_file(m, name):
    """A file in the job folder, on either platform's separator."""
    return m['status_file'][: -len('status.json')] + name


def lua_table(lua, items):
    return lua.table_from(list(items))


class Plugin:
    """One loaded copy of the plugin with its fake darktable."""

    def __init__(
        self,
        tmp: Path,
        *,
        prefs: dict | None = None,
        api: str = '9.0.0',
        with_bridge: bool = True,
        path_env: str | None = None,
        fake_src: str | None = None,
        os_name: str = 'linux',
        dt_tmp: str | None = None,
        script: Path = PLUGIN,
    ):
        self.tmp = tmp
        self.windows = os_name == 'windows'
        self.dt_tmp = tmp / 'dt tmp'
        self.dt_tmp.mkdir(exist_ok=True)
        self.dt_tmp_str = dt_tmp or str(self.dt_tmp)
        self.photos = tmp / 'photos'
        self.photos.mkdir(exist_ok=True)
        self.bin = tmp / 'bin'
        self.bin.mkdir(exist_ok=True)
        self.exe = self.bin / 'focusbridge'
        if with_bridge:
            self.exe.write_text('#!/bin/sh\nexit 0\n')
            self.exe.chmod(0o755)
        self.scenario = 'ok'
        self.manifests: list[dict] = []
        self.bridge_runs = 0
        self.cancel_after_sleeps: int | None = None
        self.sleeps = 0
        self.shell = False  # True: run commands for real through sh
        self.status_extra: dict = {}
        self.batch_warnings: dict = {}  # bracket index -> the warnings its batch result carries
        self.lens_results = None
        self.pid_text: str | None = '4242\n'  # what the bridge writes to pid_file
        self.kills: list[str] = []
        self.mkdir_fail = 0  # answer this many mkdirs with "exists"
        self.scripts: list[str] = []  # run.bat texts (Windows)
        self.clock = 0.0
        # the bridge's answers to the new kinds: a brackets job's status (or a function of
        # its manifest), the stacks of a batch that fail (0-based), a check's findings
        self.brackets_answer = None
        self.batch_fail: set[int] = set()
        self.check_answer: dict | None = None
        self.cancel_status: dict | None = None  # what a cancelled pending job reports

        self.lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        old_path = os.environ.get('PATH', '')
        os.environ['PATH'] = (
            path_env if path_env is not None else f'{self.bin}{os.pathsep}/usr/bin:/bin'
        )
        try:
            self.fake = self.lua.execute(fake_src or FAKE.read_text())
            self.dt = self.fake.dt
            self.dt.configuration.tmp_dir = self.dt_tmp_str
            self.dt.configuration.config_dir = str(tmp / 'config')
            # what darktable adds to package.path (seen on 4.2.1): its own and the user's lua/
            g_package = self.lua.globals().package
            g_package.path = (
                f'{g_package.path};/usr/share/darktable/lua/?.lua;{tmp / "config"}/lua/?.lua'
            )
            self.package_path_before = g_package.path.split(';')
            self.dt.configuration.api_version_string = api
            self.dt.configuration.running_os = os_name
            g = self.lua.globals()
            t0 = int(time.time())
            g.os.time = lambda *a: t0 + int(self.clock)
            self.randomseed_calls = 0

            def randomseed(*a):
                self.randomseed_calls += 1

            g.math.randomseed = randomseed
            self.fake.execute_handler = self._execute
            self.fake.sleep_handler = self._sleep
            for k, v in (prefs or {}).items():
                self.fake.prefs[f'focus_stack/{k}'] = v
            if prefs:
                self.fake.prefs['focus_stack/initialized'] = True
            self.lua.globals().package.preload['darktable'] = self.lua.eval(
                'function(dt) return function() return dt end end'
            )(self.dt)
            self.script_data = self.lua.eval('function(p) return dofile(p) end')(str(script))
        finally:
            self.path_during_load = os.environ['PATH']
            os.environ['PATH'] = old_path
        self.api = self.script_data.focus_stack if self.script_data else None

    # -- images -----------------------------------------------------------------------
    def images(self, names, folder: Path | None = None):
        folder = folder or self.photos
        out = []
        for n in names:
            (folder / n).write_bytes(b'jpeg')
            out.append(self.fake.new_image(str(folder), n))
        return out

    def select(self, imgs):
        self.dt.gui.action_images = lua_table(self.lua, imgs)
        self.fake.selection = lua_table(self.lua, imgs)

    def click(self, name):
        w = self.api.widgets[name]
        old_path = os.environ['PATH']
        os.environ['PATH'] = self.path_during_load
        try:
            return w.clicked_callback(w)
        finally:
            os.environ['PATH'] = old_path

    def call(self, fn, *args):
        old_path = os.environ['PATH']
        os.environ['PATH'] = self.path_during_load
        try:
            return fn(*args)
        finally:
            os.environ['PATH'] = old_path

    # -- records ----------------------------------------------------------------------
    @property
    def commands(self):
        return list(self.fake.commands.values())

    @property
    def printed(self):
        return list(self.fake.printed.values())

    @property
    def imports(self):
        return list(self.fake.imports.values())

    def tags(self, img):
        return sorted(t.name for t in img.tags.values())

    # -- fake darktable's execute / sleep ---------------------------------------------
    def _record_manifest(self, manifest_path) -> dict:
        """A bridge start: the manifest it was handed, decoded, joins self.manifests, after
        it was checked against the bridge's JSON Schema (the contract between the two)."""
        self.bridge_runs += 1
        m = json.loads(Path(manifest_path).read_text(encoding='utf-8'))
        jsonschema.validate(m, MANIFEST_SCHEMA)
        self.manifests.append(m)
        return m

    def _execute(self, cmd):
        if self.shell:
            if 'run-job' in cmd:
                tokens = shlex.split(cmd)
                self._record_manifest(tokens[tokens.index('run-job') + 1])
            return subprocess.run(['sh', '-c', cmd]).returncode * 256
        if self.windows:
            return self._execute_cmd(cmd)
        tokens = shlex.split(cmd)
        if tokens[:4] == ['mkdir', '-m', '700', '--']:
            if self.mkdir_fail:
                self.mkdir_fail -= 1
                return 256
            os.mkdir(tokens[4], 0o700)
            return 0
        if 'run-job' in tokens:
            i = tokens.index('run-job')
            exe, manifest_path = tokens[i - 1], tokens[i + 1]
            self.run_exe = exe
            m = self._record_manifest(manifest_path)
            if 'shell_pid' in cmd:  # the shell's `echo $!`
                (Path(manifest_path).parent / 'shell_pid').write_text('777\n')
            self._bridge(m, Path(manifest_path).parent)
            return 0
        if tokens[:2] == ['kill', '-TERM']:
            self._killed(tokens[2], '143')
            return 0
        if tokens[:3] == ['rm', '-rf', '--']:
            subprocess.run(['rm', '-rf', '--', tokens[3]])
            return 0
        raise AssertionError(f'unexpected command {cmd!r}')

    def _execute_cmd(self, cmd):
        """cmd.exe's side: %VAR% expanded once, then "..." words (no escapes inside)."""
        expanded = re.sub(r'%([^%]+)%', lambda m: os.environ.get(m[1], m[0]), cmd)
        words = [w[1:-1] if w.startswith('"') else w for w in re.findall(r'"[^"]*"|\S+', expanded)]
        if words[:1] == ['mkdir'] and words[2:] == ['>NUL', '2>NUL']:
            if self.mkdir_fail:
                self.mkdir_fail -= 1
                return 1
            os.mkdir(words[1])
            return 0
        if words[:3] == ['start', '', '/b'] and len(words) == 4 and words[3].endswith('\\run.bat'):
            bat = words[3]
            jobdir = bat[: -len('\\run.bat')]
            self.scripts.append(Path(bat).read_bytes().decode('utf-8'))
            self.run_jobdir = jobdir
            m = self._record_manifest(jobdir + '\\manifest.json')
            self._bridge(m, None)
            return 0
        if words[:3] == ['rmdir', '/s', '/q'] and words[4:] == ['>NUL', '2>NUL']:
            shutil.rmtree(words[3], ignore_errors=True)
            return 0
        if words[:4] == ['taskkill', '/F', '/T', '/PID'] and words[5:] == ['>NUL', '2>NUL']:
            self._killed(words[4], '1')
            return 0
        raise AssertionError(f'unexpected command {cmd!r}')

    def _killed(self, pid, rc):
        """What the shell (or run.bat) does once the bridge is killed: write its exit status."""
        self.kills.append(pid)
        pending = getattr(self, 'pending', None)
        if pending:
            m, _ = pending
            Path(job_file(m, 'rc')).write_text(rc + '\n')
            self.pending = None

    def _status(self, m, data):
        Path(m['status_file']).write_text(json.dumps(data))

    def _bridge(self, m, jobdir: Path | None):
        self.pending = None
        if self.pid_text is not None and m.get('pid_file'):
            Path(m['pid_file']).write_text(self.pid_text)
        if m.get('kind') == 'lens':
            results = self.lens_results or [
                {'file': f, 'outcome': 'updated', 'message': ''} for f in m['files']
            ]
            self._status(m, {'ok': True, 'results': results, 'error': None})
            return
        if m.get('kind') in ('brackets', 'batch', 'check'):
            getattr(self, f'_bridge_{m["kind"]}')(m, jobdir)
            return
        progress = Path(m['progress_file'])
        n = len(m['frames'])
        with progress.open('a') as p:
            for i in range(n):
                p.write(
                    json.dumps(
                        {'phase': 'fuse', 'frame': i, 'count': n, 'fraction': (i + 1) / (n + 1)}
                    )
                    + '\n'
                )
        if self.scenario == 'ok':
            written = self._stack_files(m, m, m['options'])  # result, depth map, aligned
            self._status(m, {'ok': True, **written, 'error': None, **self.status_extra})
        elif self.scenario == 'fail':
            self._status(
                m,
                {
                    'ok': False,
                    'output': None,
                    'cancelled': False,
                    'error': '/x/frame_002.tif: frames differ in size (600x400 vs 640x480)',
                },
            )
        elif self.scenario == 'crash':
            Path(job_file(m, 'stderr.txt')).write_text(
                'Traceback...\nfocusbridge: error: out of memory\n'
            )
            Path(job_file(m, 'rc')).write_text('1\n')
        elif self.scenario == 'no_output':
            self._status(m, {'ok': True, 'output': m['output'], 'depth_map': None, 'error': None})
        elif self.scenario in ('slow', 'writing'):
            self.pending = (m, jobdir)  # finishes only when cancelled (see _sleep)
        elif self.scenario == 'stuck':
            self.pending = (m, jobdir)  # ignores the cancel file: only a kill ends it
            self.stuck = True
        else:
            raise AssertionError(self.scenario)

    def _sleep(self, ms):
        self.sleeps += 1
        self.clock += ms / 1000
        if self.shell:
            time.sleep(ms / 1000)
            if self.sleeps > 300:
                raise AssertionError('bridge never finished')
            return
        if self.cancel_after_sleeps is not None and self.sleeps == self.cancel_after_sleeps:
            job = self.fake.jobs[len(self.fake.jobs)]
            job.cancel_cb(job)  # what darktable does when the user presses cancel
        pending = getattr(self, 'pending', None)
        if pending and not getattr(self, 'stuck', False):
            m, jobdir = pending
            if Path(m['cancel_file']).exists() and self.scenario == 'writing':
                # the cancel came while the bridge was writing: it finishes and says ok
                Path(m['output']).write_bytes(b'stacked')
                self._status(
                    m,
                    {
                        'ok': True,
                        'output': m['output'],
                        'depth_map': None,
                        'error': None,
                        'cancelled': False,
                    },
                )
                self.pending = None
            elif Path(m['cancel_file']).exists():
                self._status(
                    m,
                    self.cancel_status
                    or {'ok': False, 'output': None, 'cancelled': True, 'error': 'cancelled'},
                )
                self.pending = None
        if self.sleeps > 200:
            raise AssertionError('plugin polled forever')

    # -- the new kinds: brackets, batch, check --------------------------------------------
    def _bridge_brackets(self, m, jobdir):
        answer = self.brackets_answer
        if callable(answer):
            answer = answer(m)
        if answer is None:  # one bracket of everything
            answer = {'brackets': [{'indexes': list(range(len(m['sources']))), 'reason': 'x'}]}
        self._status(m, {'ok': True, 'error': None, 'cancelled': False, 'unassigned': [], **answer})

    def _stack_files(self, m, entry, options):
        """What one stack writes: the result, its depth map, its aligned frames."""
        out = Path(entry['output'])
        out.write_bytes(b'stacked')
        dm = None
        if options.get('depth_map'):
            dm = str(out.with_name(out.stem + '_depth.tif'))
            Path(dm).write_bytes(b'depth')
        aligned = []
        folder = entry.get('aligned_frames') or options.get('aligned_frames')
        if folder:
            Path(folder).mkdir(exist_ok=True)
            for src in entry.get('sources') or entry['frames']:
                aligned.append(str(Path(folder) / (Path(src).stem + '_aligned.tif')))
                Path(aligned[-1]).write_bytes(b'aligned')
        return {'output': str(out), 'depth_map': dm, 'aligned_frames': aligned, 'layers': None}

    def _bridge_batch(self, m, jobdir):
        stacks = m['stacks']
        total = sum(len(e['frames']) for e in stacks)
        results, done = [], 0
        with Path(m['progress_file']).open('a') as progress:
            for i, e in enumerate(stacks):
                n = len(e['frames'])
                for k in range(n):
                    event = {
                        'phase': 'fuse',
                        'frame': k,
                        'count': n,
                        'bracket': i,
                        'brackets': len(stacks),
                        'fraction': (done + k + 1) / (total + 1),
                    }
                    progress.write(json.dumps(event) + '\n')
                done += n
                if i in self.batch_fail:
                    results.append(
                        {
                            'ok': False,
                            'output': None,
                            'cancelled': False,
                            'error': f'{e["frames"][0]}: not a TIFF file',
                        }
                    )
                elif self.scenario == 'slow' and i > 0:
                    results.append(
                        {'ok': False, 'output': None, 'cancelled': True, 'error': 'cancelled'}
                    )
                else:
                    results.append(
                        {
                            'ok': True,
                            'error': None,
                            'cancelled': False,
                            'warnings': self.batch_warnings.get(i, []),
                            **self._stack_files(m, e, m.get('options') or {}),
                        }
                    )
        failed = [r for r in results if not r['ok']]
        status = {
            'ok': not failed,
            'error': failed[0]['error'] if failed else None,
            'cancelled': False,
            'stacked': len(results) - len(failed),
            'results': results,
        }
        if self.scenario == 'slow':  # the first stack is done, the rest waits for a cancel
            self.cancel_status = {**status, 'ok': False, 'cancelled': True, 'error': 'cancelled'}
            self.pending = (m, jobdir)
            return
        self._status(m, status)

    def _bridge_check(self, m, jobdir):
        Path(m['coverage_map']).write_bytes(b'\x89PNG coverage')
        check = {
            'frames': len(m['frames']),
            'gaps': [],
            'gap_details': [],
            'wasted': [],
            'order': 'in focus order',
            'suggested_order': None,
            'duplicates': [],
            'exposure_jumps': [],
            'motion': [],
            'notes': [],
            'coverage_map': m['coverage_map'],
            **(self.check_answer or {}),
        }
        self._status(
            m,
            {
                'ok': True,
                'error': None,
                'cancelled': False,
                'check': check,
                'coverage_map': m['coverage_map'],
                'summary': [],
            },
        )


@pytest.fixture
def plugin(tmp_path):
    return Plugin(tmp_path)


def leftovers(p: Plugin):
    return sorted(str(x.relative_to(p.dt_tmp)) for x in p.dt_tmp.rglob('*'))


# --- registration --------------------------------------------------------------------


def test_registers_module_storage_and_script_data(plugin):
    p = plugin
    lib = p.fake.libs['focus_stack']
    assert lib.label == 'focus stack'
    assert p.fake.storages['focus_stack'].label == 'focus stack'
    md = p.script_data.metadata
    assert md.name == 'focus stack' and md.purpose and md.author and md.help
    assert p.script_data.destroy_method == 'hide'
    supported = p.fake.storages['focus_stack'].supported
    assert supported(None, p.lua.table(extension='tif')) is True
    assert supported(None, p.lua.table(extension='jpg')) is False
    p.script_data.destroy()
    assert p.fake.destroyed_storage == 'focus_stack'
    assert p.dt.gui.libs['focus_stack'].visible is False
    p.script_data.restart()
    assert p.fake.storages['focus_stack'] is not None
    assert p.dt.gui.libs['focus_stack'].visible is True


def test_module_waits_for_lighttable_when_started_elsewhere(tmp_path):
    lua_src = FAKE.read_text().replace(
        'FAKE.dt = dt', 'FAKE.current_view = {id = "darkroom", name = "darkroom"}\nFAKE.dt = dt'
    )
    p = Plugin(tmp_path, fake_src=lua_src)
    assert p.fake.libs['focus_stack'] is None
    (name, event, fn) = p.fake.events[1].values()
    assert event == 'view-changed'
    fn('view-changed', p.lua.table(name='darkroom'), p.lua.table(name='lighttable'))
    assert p.fake.libs['focus_stack'] is not None


def test_refuses_old_api(tmp_path):
    with pytest.raises(lupa.LuaError, match='Minimum API 9.0.0'):
        Plugin(tmp_path, api='8.0.0')


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_finds_its_libraries_in_every_layout(tmp_path, layout):
    """Installed into lua-scripts' tree or standalone, the libraries are found through the
    <configdir>/lua/?.lua darktable puts on package.path; in a checkout elsewhere the script
    puts its own folder first."""
    lua_dir = tmp_path / 'config' / 'lua'
    script = lua_dir / (install_plugin(lua_dir, layout) + '.lua')
    root = lua_dir if layout != 'checkout' else script.parent
    p = Plugin(tmp_path, script=script)
    entries = p.lua.eval('package.path').split(';')
    assert entries.count(f'{root}/?.lua') == 1
    assert entries[0] == (f'{root}/?.lua' if layout == 'checkout' else p.package_path_before[0])
    # every library came from the installed copy, none from this checkout
    where = p.lua.eval('''function(name)
      local m = package.loaded["lib/focus_stack/" .. name]
      if type(m) == "table" then
        for _, v in pairs(m) do if type(v) == "function" then m = v; break end end
      end
      return debug.getinfo(m, "S").source
    end''')
    for lib in sorted(LIB_DIR.glob('*.lua')):
        assert where(lib.stem) == f'@{root}/lib/focus_stack/{lib.name}'
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    assert p.printed[-1] == 'focus stack: imported a_stacked.tif'
    assert leftovers(p) == []


def test_missing_library_folder_is_named(tmp_path):
    script = tmp_path / 'config' / 'lua' / 'contrib' / 'focus_stack.lua'
    script.parent.mkdir(parents=True)
    shutil.copy(PLUGIN, script)
    with pytest.raises(
        lupa.LuaError, match=r'lib/focus_stack/ was not found beside the script or one folder up'
    ):
        Plugin(tmp_path, script=script)


def test_luacheck_is_clean():
    """luacheck (Debian: lua-check) over the script and its libraries, with darktable_lua's
    .luacheckrc: no warnings. Missing luacheck is a failure, not a skip."""
    luacheck = shutil.which('luacheck')
    if not luacheck:
        pytest.fail('luacheck is required for this test: apt-get install -y lua-check')
    done = subprocess.run(
        [
            luacheck,
            '--no-color',
            '--codes',
            '--config',
            str(PLUGIN_DIR / '.luacheckrc'),
            str(PLUGIN_DIR),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'0 warnings / 0 errors in {len(LUA_SOURCES)} files' in done.stdout, done.stdout


def test_source_follows_lua_scripts_conventions():
    src = PLUGIN.read_text()
    assert src.startswith('--[[\n') and 'GNU General Public License' in src.split(']]')[0]
    assert 'ADDITIONAL SOFTWARE NEEDED FOR THIS SCRIPT' in src and 'USAGE' in src
    assert 'return script_data' in src.rstrip().splitlines()[-1]
    # script_manager reads the metadata with a regex: one `key = value,` a line
    md = re.search(r'script_data\.metadata = \{\n(.*?)\n\}', src, re.S)[1].splitlines()
    assert [line.split('=')[0].strip() for line in md] == ['name', 'purpose', 'author', 'help']
    # the libraries: one module table each, loaded by require "lib/focus_stack/<name>"
    libs = {path.stem for path in LIB_DIR.glob('*.lua')}
    assert libs == {
        'i18n',
        'json',
        'lens',
        'naming',
        'options',
        'platform',
        'results',
        'runner',
        'shell',
    }
    for path in LUA_SOURCES:
        text = path.read_text()
        # nothing beyond API 9.0.0: no dt.control.dispatch, no 9.1+ additions
        for newer in ('control.dispatch', 'dt.gui.mimic', 'dtutils.system'):
            assert newer not in text, path
        # the one way to run anything is dt.control.execute: never os.execute / io.popen
        assert 'os.execute' not in text and 'io.popen' not in text, path
        assert 'math.randomseed(' not in text and 'math.random(' not in text, path
        if path.parent == LIB_DIR:
            assert text.startswith(
                f'--[[\n    lib/focus_stack/{path.name} - part of focus_stack.lua'
            )
            assert re.search(r'^return \w+\s*$', text, re.M), path
        for required in re.findall(r'require "lib/focus_stack/(\w+)"', text):
            assert required in libs, (path, required)


# --- the button path -----------------------------------------------------------------


def test_button_stacks_imports_groups_tags(plugin):
    p = plugin
    imgs = p.images(['IMG_3.jpg', 'IMG_1.jpg', 'IMG_2.jpg'])
    i3, i1, i2 = imgs
    i1.tags[1] = p.dt.tags.create('flowers|rose')
    i3.tags[1] = p.dt.tags.create('macro')
    i3.tags[2] = p.dt.tags.create('darktable|format|jpg')
    i2.rating = 4
    i2.title = 'rose'
    p.select(imgs)
    p.click('stack_button')

    assert p.bridge_runs == 1
    m = p.manifests[0]
    jobdir = Path(m['status_file']).parent
    assert jobdir.parent == p.dt_tmp and jobdir.name.startswith('focus_stack_')
    assert m['version'] == 1 and m['kind'] == 'stack'
    assert m['sources'] == [str(p.photos / f'IMG_{i}.jpg') for i in (1, 2, 3)]
    assert m['frames'] == [str(jobdir / f'frame_{i:03d}.tif') for i in (1, 2, 3)]
    assert m['output'] == str(p.photos / 'IMG_1_stacked.tif')
    assert m['options'] == {
        'method': 'pyramid',
        'align': True,
        'depth_map': False,
        'noise_averaging': True,
        'format': 'tiff',
        'reference': 'middle',
        'overwrite': False,
        'crop': False,
        'metadata': True,
    }
    assert m['progress_file'] == str(jobdir / 'progress.jsonl')
    assert m['cancel_file'] == str(jobdir / 'cancel')
    # frames were exported 16-bit, in name order, with darktable's own export
    frames = list(p.fake.written_frames.values())
    assert [f.bpp for f in frames] == [16, 16, 16]
    assert [f.id for f in frames] == [i1.id, i2.id, i3.id]

    assert p.imports == [str(p.photos / 'IMG_1_stacked.tif')]
    result = [x for x in p.fake.all_images.values() if x.filename == 'IMG_1_stacked.tif'][0]
    assert all(x.group_id == result.id for x in (i1, i2, i3, result))
    assert p.fake.leaders[len(p.fake.leaders)] == result.id
    assert p.tags(result) == ['flowers|rose', 'focus stack|stacked', 'macro']
    for img in (i1, i2, i3):
        assert 'focus stack|source' in p.tags(img)
    assert result.rating == 4 and result.title == 'rose'
    job = p.fake.jobs[1]
    percents = list(job.percents.values())
    assert percents == sorted(percents) and percents[-1] > 0.9
    assert job.valid is False
    assert p.printed[-1] == 'focus stack: imported IMG_1_stacked.tif'
    assert leftovers(p) == []


def test_command_has_no_file_name(plugin):
    p = plugin
    imgs = p.images(NASTY)
    p.select(imgs)
    p.click('stack_button')
    assert p.bridge_runs == 1
    m = p.manifests[0]
    jobdir = Path(m['status_file']).parent
    run_cmd = [c for c in p.commands if 'run-job' in c][0]
    for c in p.commands:
        for name in NASTY + ['PWNED', 'photos', '_stacked', 'frame_']:
            assert name not in c, (name, c)
    tokens = shlex.split(run_cmd)
    assert tokens[1:4] == [str(p.exe), 'run-job', str(jobdir / 'manifest.json')]
    paths = [t for t in tokens if '/' in t and not t.startswith(('<', '>', '2>'))]
    assert all(
        t == str(p.exe) or t.startswith(str(jobdir)) or t.lstrip('2>').startswith(str(jobdir))
        for t in paths
    ), paths
    # every name travels inside the manifest instead, byte for byte
    assert [Path(s).name for s in m['sources']] == sorted(NASTY)
    assert Path(m['output']).name == Path(sorted(NASTY)[0]).stem + '_stacked.tif'


EVIL = "it's $(touch PWNED) `touch PWNED`; touch PWNED"


@pytest.mark.parametrize('evil_program', [False, True])
def test_real_shell_runs_only_the_bridge(tmp_path, evil_program):
    """The command line goes through a real `sh`, with quotes and $(...) in the temp path
    and (second run) in the program's path from the preferences."""
    exe = None
    if evil_program:
        exe = tmp_path / f'bin {EVIL}' / 'focus bridge'
        exe.parent.mkdir()
    p = Plugin(tmp_path, prefs={'executable': str(exe)} if exe else None)
    if exe:
        p.exe = exe
    evil_tmp = tmp_path / f"tmp {EVIL}"
    evil_tmp.mkdir()
    p.dt.configuration.tmp_dir = str(evil_tmp)
    p.dt_tmp = evil_tmp
    record = tmp_path / 'argv.json'
    p.exe.write_text(f'''#!{sys.executable}
import json, sys, os
m = json.load(open(sys.argv[2]))
open(m["pid_file"], "w").write(str(os.getpid()) + "\\n")
json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd()}}, open({str(record)!r}, "w"))
open(m["progress_file"], "a").write(json.dumps({{"phase": "done", "fraction": 1.0}}) + "\\n")
open(m["output"], "wb").write(b"x")
tmp = m["status_file"] + ".tmp"
open(tmp, "w").write(json.dumps({{"ok": True, "output": m["output"], "depth_map": None, "error": None}}))
os.replace(tmp, m["status_file"])
''')
    p.exe.chmod(0o755)
    p.shell = True
    imgs = p.images(NASTY)
    p.select(imgs)
    p.click('stack_button')
    assert record.exists(), p.printed
    argv = json.loads(record.read_text())['argv']
    assert argv[0] == 'run-job' and len(argv) == 2
    assert Path(argv[1]).name == 'manifest.json' and Path(argv[1]).parent.parent == evil_tmp
    assert p.printed[-1].startswith('focus stack: imported ')
    assert not list(tmp_path.rglob('PWNED')) and not Path('PWNED').exists()
    assert list(evil_tmp.iterdir()) == []


# --- error paths ---------------------------------------------------------------------


def test_fewer_than_two_images(plugin):
    p = plugin
    p.select(p.images(['one.jpg']))
    p.click('stack_button')
    assert p.printed == ['focus stack: select at least two images']
    assert p.commands == [] and p.imports == [] and leftovers(p) == []


def test_bridge_missing(tmp_path):
    p = Plugin(tmp_path, with_bridge=False, path_env=str(tmp_path / 'nowhere'))
    assert 'not found' in p.api.widgets.bridge_label.label
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    assert 'focusbridge not found on PATH' in p.printed[-1]
    assert p.commands == [] and p.imports == []


@pytest.mark.parametrize(
    'value, message',
    [
        ('relative/focusbridge', 'must be absolute'),
        ('/nonexistent/focusbridge', 'not found at /nonexistent/focusbridge'),
        ('/bin/focus\nbridge', 'cannot be run safely'),
    ],
)
def test_bad_executable_preference(tmp_path, value, message):
    p = Plugin(tmp_path, prefs={'executable': value})
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    assert message in p.printed[-1]
    assert p.commands == [] and p.imports == []


def test_executable_preference_is_used(tmp_path):
    other = tmp_path / 'elsewhere' / 'fb'
    other.parent.mkdir()
    other.write_text('#!/bin/sh\n')
    p = Plugin(tmp_path, prefs={'executable': str(other)})
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    assert p.run_exe == str(other)


def test_bridge_failure_shows_its_one_line_error(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg'])
    p.select(imgs)
    p.scenario = 'fail'
    p.click('stack_button')
    assert p.printed[-1] == (
        'focus stack failed: /x/frame_002.tif: frames differ in size (600x400 vs 640x480)'
    )
    assert p.imports == [] and all(p.tags(i) == [] for i in imgs)
    assert all(i.group_id is None for i in imgs)
    assert leftovers(p) == []


def test_bridge_crash_without_status(plugin):
    p = plugin
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.scenario = 'crash'
    p.click('stack_button')
    assert p.printed[-1] == 'focus stack failed: out of memory'
    assert p.imports == [] and leftovers(p) == []


def test_success_without_output_file_is_an_error(plugin):
    p = plugin
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.scenario = 'no_output'
    # the fake bridge claims success but writes nothing
    p.click('stack_button')
    assert 'was not written' in p.printed[-1]
    assert p.imports == []


def test_export_that_produces_nothing(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg'])
    p.select(imgs)
    p.fake.export_produces_nothing = True
    p.click('stack_button')
    assert p.printed[-1] == 'the export of a.jpg produced nothing'
    assert p.bridge_runs == 0 and p.imports == [] and leftovers(p) == []
    assert p.fake.jobs[1].valid is False


def test_cancel_stops_bridge_and_leaves_nothing(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg', 'c.jpg'])
    p.select(imgs)
    p.scenario = 'slow'
    p.cancel_after_sleeps = 2
    p.click('stack_button')
    assert p.bridge_runs == 1
    assert p.printed[-1] == 'focus stack cancelled'
    assert p.imports == [] and all(p.tags(i) == [] for i in imgs)
    assert not Path(p.manifests[0]['output']).exists()
    assert leftovers(p) == []
    assert p.fake.jobs[1].valid is False
    assert p.api.state.busy is False


def test_cancel_while_the_bridge_writes_imports_what_it_finished(plugin):
    """The bridge finishes a run whose cancel came during writing (it says ok): the result
    must be imported, not left beside the sources where nobody sees it."""
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg', 'c.jpg'])
    p.select(imgs)
    p.scenario = 'writing'
    p.cancel_after_sleeps = 2
    p.click('stack_button')
    out = Path(p.manifests[0]['output'])
    assert out.exists()
    assert [Path(i).name for i in p.imports] == [out.name], p.printed
    assert leftovers(p) == []


def test_busy_guard(plugin):
    p = plugin
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.api.state.busy = True
    p.click('stack_button')
    assert p.printed[-1] == 'focus stack is already running' and p.commands == []


# --- options ---------------------------------------------------------------------------


def test_options_persist_and_reach_the_manifest(tmp_path):
    p = Plugin(tmp_path)
    out = tmp_path / 'out dir'
    out.mkdir()
    opts = p.api.widgets.options
    opts.method.selected = 2
    opts.method.changed_callback(opts.method)
    opts.align.value = False
    opts.align.clicked_callback(opts.align)
    opts.format.selected = 2
    opts.format.changed_callback(opts.format)
    opts.depth_map.value = True
    opts.depth_map.clicked_callback(opts.depth_map)
    w = p.api.widgets.output_folder
    w.value = str(out)
    w.changed_callback(w)
    prefs = {k.split('/', 1)[1]: v for k, v in p.fake.prefs.items()}
    assert prefs['method'] == 'depthmap' and prefs['align'] is False
    assert prefs['format'] == 'jpeg' and prefs['depth_map'] is True
    assert prefs['output_folder'] == str(out)

    # a fresh darktable session reads them back
    (tmp_path / 'second').mkdir()
    q = Plugin(tmp_path / 'second', prefs={k: v for k, v in prefs.items() if k != 'initialized'})
    assert q.api.widgets.options.method.selected == 2
    assert q.api.widgets.options.format.selected == 2
    assert q.api.widgets.options.align.value is False
    imgs = q.images(['f1.jpg', 'f2.jpg'])
    q.select(imgs)
    q.click('stack_button')
    m = q.manifests[0]
    assert m['options']['method'] == 'depthmap' and m['options']['align'] is False
    assert m['options']['format'] == 'jpeg' and m['options']['depth_map'] is True
    assert m['output'] == str(out / 'f1_stacked.jpg')
    # the depth map comes back too, grouped under the result
    names = [x.filename for x in q.fake.all_images.values()]
    assert 'f1_stacked_depth.tif' in names
    dm = [x for x in q.fake.all_images.values() if x.filename == 'f1_stacked_depth.tif'][0]
    res = [x for x in q.fake.all_images.values() if x.filename == 'f1_stacked.jpg'][0]
    assert dm.group_id == res.id and 'focus stack|depth map' in q.tags(dm)


def test_one_options_table_makes_widgets_preferences_and_manifest(plugin):
    p = plugin
    options = p.lua.eval('(require "lib/focus_stack/options")')
    rows = list(options.TABLE.values())
    by_name = {r.name: r for r in rows}
    # the module and the export target show the same stacking options, made from their rows
    storage_box = p.fake.storages['focus_stack'].widget
    for i, name in enumerate(['method', 'align', 'format', 'depth_map'], 1):
        row = by_name[name]
        for w in (p.api.widgets.options[name], storage_box[i]):
            assert (w.label, w.tooltip) == (row.label, row.tooltip)
            if row.type == 'choice':
                assert w._kind == 'combobox' and w.selected == 1
                labels = list(row['labels'].values())
                assert [w[k] for k in range(1, len(labels) + 1)] == labels
                assert len(row['values']) == len(labels)
            else:
                assert w._kind == 'check_button' and w.value == row.default
    w = p.api.widgets
    assert (w.output_folder.title, w.output_folder.is_directory) == (
        by_name['output_folder'].label,
        True,
    )
    assert (w.executable.title, w.executable.is_directory) == (by_name['executable'].label, False)
    assert w.lens_preset.placeholder == by_name['lens_preset'].label
    # the manifest's options: every manifest row, at its default until the user chooses
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    assert p.manifests[0]['options'] == {r.name: r.default for r in rows if r.manifest}
    # the first preference written stores every other one's default too; fixed rows never
    assert dict(p.fake.prefs) == {}
    options.write('align', False)
    stored = {k.split('/', 1)[1]: v for k, v in p.fake.prefs.items()}
    assert stored == {
        'initialized': True,
        **{r.name: r.default for r in rows if not r.fixed},
        'align': False,
    }


def test_storage_and_module_widgets_stay_in_sync(plugin):
    p = plugin
    storage_box = p.fake.storages['focus_stack'].widget
    sm = storage_box[1]
    sm.selected = 2
    sm.changed_callback(sm)
    assert p.api.widgets.options.method.selected == 2


def test_existing_output_is_never_overwritten(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg'])
    (p.photos / 'a_stacked.tif').write_bytes(b'old')
    (p.photos / 'a_stacked_2.tif').write_bytes(b'old')
    p.select(imgs)
    p.click('stack_button')
    assert p.manifests[0]['output'] == str(p.photos / 'a_stacked_3.tif')
    assert p.manifests[0]['options']['overwrite'] is False
    assert (p.photos / 'a_stacked.tif').read_bytes() == b'old'


@pytest.mark.parametrize(
    'fmt, existing, expected',
    [
        ('tiff', ['x_stacked_depth.tif'], 'x_stacked_2.tif'),
        ('tiff', ['x_stacked_confidence.tif', 'x_stacked_2.tif'], 'x_stacked_3.tif'),
        ('tiff', ['x_stacked.tif', 'x_stacked_2_depth.tif'], 'x_stacked_3.tif'),
        ('jpeg', ['x_stacked.jpg'], 'x_stacked_2.jpg'),
        ('jpeg', ['x_stacked.tif'], 'x_stacked.jpg'),
        ('png', ['x_stacked_depth.tif'], 'x_stacked_2.png'),
    ],
)
def test_free_name_for_the_whole_set(tmp_path, fmt, existing, expected):
    """The bridge never overwrites (and the GUI has no --overwrite): the result and the maps
    it writes beside it (<stem>_depth.tif, <stem>_confidence.tif) must all be free."""
    p = Plugin(tmp_path, prefs={'format': fmt, 'method': 'pyramid', 'align': True})
    imgs = p.images(['x.jpg', 'y.jpg'])
    for name in existing:
        (p.photos / name).write_bytes(b'old')
    p.select(imgs)
    p.click('stack_button')
    assert p.manifests[0]['output'] == str(p.photos / expected)
    assert p.manifests[0]['options']['overwrite'] is False
    assert all((p.photos / name).read_bytes() == b'old' for name in existing)
    assert p.printed[-1] == f'focus stack: imported {expected}'


# --- job folder, pid, cancel -----------------------------------------------------------


def test_job_folders_are_random_and_never_reused(plugin):
    p = plugin
    assert p.randomseed_calls == 0  # the sources never call it either (conventions test)
    p.mkdir_fail = 1  # the first name "exists": another one is tried, never the same
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    p.click('stack_button')
    mkdirs = [shlex.split(c)[4] for c in p.commands if c.startswith('mkdir')]
    names = [Path(d).name for d in mkdirs]
    assert len(names) == 3 and len(set(names)) == 3
    assert all(re.fullmatch(r'focus_stack_[0-9a-f]{24}', n) for n in names), names
    used = [Path(m['status_file']).parent.name for m in p.manifests]
    assert used == names[1:]
    assert p.randomseed_calls == 0 and leftovers(p) == []


def test_manifests_carry_cancel_and_pid_files(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg'])
    p.select(imgs)
    p.click('stack_button')
    p.api.widgets.lens_make.text = 'Canon'
    p.click('lens_apply')
    p.click('lens_undo')
    assert [m['kind'] for m in p.manifests] == ['stack', 'lens', 'lens']
    # one runner for both kinds: a progress job each, with a cancel button, ended
    jobs = list(p.fake.jobs.values())
    assert [j.text for j in jobs] == ['focus stack', 'lens data', 'lens data']
    assert all(j.cancel_cb is not None and j.valid is False for j in jobs)
    for m in p.manifests:
        jobdir = Path(m['status_file']).parent
        assert m['version'] == 1
        assert m['cancel_file'] == str(jobdir / 'cancel')
        assert m['pid_file'] == str(jobdir / 'pid')
        assert m['progress_file'] == str(jobdir / 'progress.jsonl')
    assert leftovers(p) == []


def test_cancel_kills_a_stuck_bridge_by_its_own_pid(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg'])
    p.select(imgs)
    p.scenario = 'stuck'
    p.cancel_after_sleeps = 2
    kill_at = []
    orig = p._killed
    p._killed = lambda pid, rc: (kill_at.append(p.clock), orig(pid, rc))
    p.click('stack_button')
    assert Path(p.manifests[0]['cancel_file']).name == 'cancel'
    assert p.kills == ['4242']  # the pid the bridge wrote, not the shell's $!
    assert kill_at[0] >= 20  # only after the grace period
    assert [c for c in p.commands if c.startswith('kill')] == ['kill -TERM 4242 >/dev/null 2>&1']
    assert p.printed[-1] == 'focus stack cancelled'
    assert p.imports == [] and leftovers(p) == [] and p.api.state.busy is False


@pytest.mark.parametrize(
    'pid_text', [None, '', '0\n', '1\n', '-5\n', '12; rm -rf ~\n', '4242 4243\n', '99999999999\n']
)
def test_kill_trusts_only_a_plain_pid(plugin, pid_text):
    """No pid file from the bridge (an older one), or anything but plain digits >= 2 in it:
    the shell's $! is used instead, never the file's text."""
    p = plugin
    p.pid_text = pid_text
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.scenario = 'stuck'
    p.cancel_after_sleeps = 2
    p.click('stack_button')
    assert p.kills == ['777']
    assert p.printed[-1] == 'focus stack cancelled' and leftovers(p) == []


def test_sh_quote(plugin):
    q = plugin.api.quote
    for s in ["plain", "it's", "'", "a b", "$(x) `y` \\ \" ; & | * ?", "-rf", "é\n"]:
        assert shlex.split(q(s)) == [s]


# --- the export target -----------------------------------------------------------------


def storage_export(p: Plugin, imgs, bpp=16):
    st = p.fake.storages['focus_stack']
    fmt = p.lua.table(bpp=bpp, extension='tif')
    extra = p.lua.table()
    p.call(st.initialize, st, fmt, p.lua.table_from(imgs), True, extra)
    files = {}
    for n, img in enumerate(imgs, 1):
        # darktable names its temp files after the source: these collide for equal basenames
        f = p.dt_tmp / f'{Path(img.filename).stem}.tif'
        f.write_bytes(b'II*\0darktable export')
        files[img.id] = str(f)
        p.call(st.store, st, img, fmt, str(f), n, len(imgs), True, extra)
    table = p.lua.table()
    for img in imgs:
        table[img] = files[img.id]
    p.call(st.finalize, st, table, extra)
    return files


def test_export_target_uses_darktables_16bit_files(plugin):
    p = plugin
    imgs = p.images(['b.jpg', 'a.jpg', 'c.jpg'])
    storage_export(p, imgs, bpp=16)
    assert p.bridge_runs == 1
    m = p.manifests[0]
    assert [Path(s).name for s in m['sources']] == ['a.jpg', 'b.jpg', 'c.jpg']
    jobdir = Path(m['status_file']).parent
    assert all(Path(f).parent == jobdir for f in m['frames'])
    assert list(p.fake.written_frames.values()) == []  # darktable exported, not us
    assert p.imports == [str(p.photos / 'a_stacked.tif')]
    assert p.api.state.storage_runs == 1
    assert leftovers(p) == []


def test_export_target_reexports_8bit_as_16bit(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg'])
    storage_export(p, imgs, bpp=8)
    assert [f.bpp for f in p.fake.written_frames.values()] == [16, 16]
    assert p.bridge_runs == 1 and len(p.imports) == 1
    assert leftovers(p) == []


def test_export_target_refuses_one_image(plugin):
    p = plugin
    storage_export(p, p.images(['a.jpg']))
    assert p.printed[-1] == 'focus stack: select at least two images'
    assert p.bridge_runs == 0 and p.imports == [] and leftovers(p) == []


def test_export_target_without_bridge(tmp_path):
    p = Plugin(tmp_path, with_bridge=False, path_env=str(tmp_path / 'nowhere'))
    storage_export(p, p.images(['a.jpg', 'b.jpg']))
    assert 'not found' in p.printed[-1]
    assert p.bridge_runs == 0 and p.imports == [] and leftovers(p) == []


def test_export_target_bridge_failure_cleans_up(plugin):
    p = plugin
    p.scenario = 'fail'
    storage_export(p, p.images(['a.jpg', 'b.jpg']))
    assert p.printed[-1].startswith('focus stack failed: ')
    assert p.imports == [] and leftovers(p) == []


# --- lens metadata ---------------------------------------------------------------------


def test_lens_set_and_undo(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg', 'c.jpg'])
    other = p.images(['other.jpg'])
    p.select(imgs[:2])
    p.fake.selection = p.lua.table_from(other)  # what the user had selected before
    w = p.api.widgets
    w.lens_preset.text = ' laowa-25 '
    w.lens_focal_length.text = '25'
    w.lens_aperture.text = '2,8'
    w.lens_model.text = 'LAOWA 25mm f/2.8 2.5-5X Ultra Macro'
    p.lens_results = [
        {'file': str(p.photos / 'a.jpg'), 'outcome': 'updated', 'message': ''},
        {'file': str(p.photos / 'b.jpg'), 'outcome': 'error', 'message': 'file is read-only'},
    ]
    p.click('lens_apply')
    m = p.manifests[0]
    assert m['kind'] == 'lens' and m['action'] == 'set' and m['version'] == 1
    assert m['files'] == [str(p.photos / 'a.jpg'), str(p.photos / 'b.jpg')]
    assert m['preset'] == 'laowa-25' and m['dry_run'] is False
    assert m['fields'] == {
        'focal_length': 25,
        'aperture': 2.8,
        'model': 'LAOWA 25mm f/2.8 2.5-5X Ultra Macro',
    }
    assert w.lens_outcome.text == 'a.jpg: updated\nb.jpg: error (file is read-only)'
    acts = list(p.fake.actions.values())
    assert acts[-1].path == 'lib/image/refresh EXIF'
    assert list(acts[-1].selection.values()) == [imgs[0].id, imgs[1].id]
    assert [i.id for i in p.fake.selection.values()] == [other[0].id]  # selection restored
    for c in p.commands:
        assert 'a.jpg' not in c and 'photos' not in c
    # undo acts on the files of the last change, whatever is selected now
    p.select(imgs[2:])
    p.click('lens_undo')
    m2 = p.manifests[1]
    assert m2['action'] == 'undo' and m2['files'] == m['files'] and 'preset' not in m2
    assert p.printed[-1] == 'lens data restored'
    assert leftovers(p) == []


def test_lens_needs_something_to_write(plugin):
    p = plugin
    p.select(p.images(['a.jpg']))
    p.click('lens_apply')
    assert 'choose a preset' in p.printed[-1] and p.commands == []
    p.click('lens_undo')
    assert p.printed[-1] == 'lens data: nothing to undo'


def test_lens_failure_is_shown(plugin):
    p = plugin
    p.select(p.images(['a.jpg']))
    p.api.widgets.lens_make.text = 'Canon'
    p.scenario = 'ok'
    p.lens_results = []
    orig = p._bridge

    def failing(m, jobdir):
        p._status(
            m, {'ok': False, 'results': [], 'error': 'exiftool not found: apt install exiftool'}
        )

    p._bridge = failing
    p.click('lens_apply')
    assert p.printed[-1] == 'lens data failed: exiftool not found: apt install exiftool'
    assert 'exiftool not found' in p.api.widgets.lens_outcome.text
    assert list(p.fake.actions.values()) == []  # nothing changed: no refresh
    p._bridge = orig


# --- Windows (cmd.exe and run.bat, simulated) ------------------------------------------

WIN_TMP = r'C:\Users\A&B (x) ^y\AppData\Local\Temp'
WIN_EXE = r'C:\Program Files\focus%PATH%bridge & co!\focusbridge.exe'


def win_plugin(tmp_path, monkeypatch, exe=WIN_EXE, dt_tmp=WIN_TMP, **kw):
    """Windows paths are relative names on this machine: each one is a file in tmp_path."""
    monkeypatch.chdir(tmp_path)
    if exe:
        Path(exe).write_text('MZ')
        kw.setdefault('prefs', {'executable': exe, 'method': 'pyramid', 'format': 'tiff'})
    return Plugin(tmp_path, os_name='windows', dt_tmp=dt_tmp, **kw)


def win_leftovers(tmp_path, prefix=WIN_TMP):
    return sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(prefix))


def bat_lines(program):
    return [
        '@echo off',
        'setlocal DisableDelayedExpansion',
        'cd /d "%~dp0"',
        program + ' run-job "%~dp0manifest.json" <NUL >NUL 2>"%~dp0stderr.txt"',
        '>"%~dp0rc" echo %ERRORLEVEL%',
    ]


def test_windows_run_bat_holds_no_user_string(tmp_path, monkeypatch):
    p = win_plugin(tmp_path, monkeypatch)
    imgs = p.images(NASTY)
    p.select(imgs)
    p.click('stack_button')
    assert p.bridge_runs == 1, p.printed
    jobdir = p.run_jobdir
    assert re.fullmatch(re.escape(WIN_TMP) + r'\\focus_stack_[0-9a-f]{24}', jobdir)
    assert p.commands == [f'mkdir "{jobdir}" >NUL 2>NUL', f'start "" /b "{jobdir}\\run.bat"']
    script = p.scripts[0]
    script.encode('ascii')  # pure ASCII: no code page can misread it
    assert script.endswith('\r\n') and '\n' not in script.replace('\r\n', '')
    # % doubled (no %PATH% expansion), the rest literal inside quotes, delayed expansion off
    assert script.split('\r\n')[:-1] == bat_lines(
        r'"C:\Program Files\focus%%PATH%%bridge & co!\focusbridge.exe"'
    )
    assert WIN_TMP not in script and 'focus_stack_' not in script
    for name in NASTY:
        assert name not in script and all(name not in c for c in p.commands)
    m = p.manifests[0]
    assert m['pid_file'] == jobdir + r'\pid' and m['cancel_file'] == jobdir + r'\cancel'
    assert m['frames'] == [jobdir + f'\\frame_{i:03d}.tif' for i in (1, 2, 3, 4, 5)]
    assert p.printed[-1].startswith('focus stack: imported ')
    assert win_leftovers(tmp_path) == []
    assert p.randomseed_calls == 0


def test_windows_non_ascii_program_switches_the_bat_to_utf8(tmp_path, monkeypatch):
    exe = r'C:\Users\Ærø\.local\bin\focusbridge.exe'
    p = win_plugin(tmp_path, monkeypatch, exe=exe)
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    lines = p.scripts[0].split('\r\n')[:-1]
    assert lines == ['@chcp 65001 >NUL'] + bat_lines(f'"{exe}"')


def test_windows_bridge_on_path_is_called_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(r'C:\Users\Ærø %x%\.local\bin\focusbridge.exe').write_text('MZ')
    p = win_plugin(
        tmp_path, monkeypatch, exe=None, path_env=r'C:\Windows;C:\Users\Ærø %x%\.local\bin'
    )
    assert 'focusbridge.exe' in p.api.widgets.bridge_label.label
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    assert p.scripts[0].split('\r\n')[:-1] == bat_lines('call focusbridge')
    assert p.printed[-1] == 'focus stack: imported photos\\a_stacked.tif'


@pytest.mark.parametrize(
    'exe, ok',
    [
        (r'C:\fb\focusbridge.cmd', True),
        (r'C:\fb 100%\focusbridge.cmd', False),
        (r'C:\fb^\focusbridge.bat', False),
        (r'C:\fb!\focusbridge.BAT', False),
        ('C:\\fb\tx\\focusbridge.exe', False),
    ],
)
def test_windows_batch_file_bridge(tmp_path, monkeypatch, exe, ok):
    """A .bat/.cmd needs `call`, which expands % again and doubles carets: refuse those."""
    p = win_plugin(tmp_path, monkeypatch, exe=exe)
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    if ok:
        assert p.scripts[0].split('\r\n')[:-1] == bat_lines(f'call "{exe}"')
    else:
        assert 'cannot be run safely' in p.printed[-1] and p.commands == []


def test_windows_cancel_uses_taskkill_on_the_bridges_pid(tmp_path, monkeypatch):
    p = win_plugin(tmp_path, monkeypatch)
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.scenario = 'stuck'
    p.cancel_after_sleeps = 2
    p.click('stack_button')
    assert [c for c in p.commands if c.startswith('taskkill')] == [
        'taskkill /F /T /PID 4242 >NUL 2>NUL'
    ]
    assert p.printed[-1] == 'focus stack cancelled'
    assert win_leftovers(tmp_path) == [] and p.api.state.busy is False


@pytest.mark.parametrize('pid_text', [None, '0\n', '4242 & del x\n', '-1\n'])
def test_windows_no_taskkill_without_a_plain_pid(tmp_path, monkeypatch, pid_text):
    p = win_plugin(tmp_path, monkeypatch)
    p.pid_text = pid_text
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.scenario = 'stuck'
    p.cancel_after_sleeps = 2
    p.click('stack_button')
    assert not [c for c in p.commands if c.startswith('taskkill')]
    assert p.printed[-1] == 'focus stack cancelled'  # nothing hangs: the plugin gives up
    p.pending = None


def test_windows_lens_job(tmp_path, monkeypatch):
    p = win_plugin(tmp_path, monkeypatch)
    p.select(p.images(['a.jpg']))
    p.api.widgets.lens_make.text = 'Canon'
    p.click('lens_apply')
    m = p.manifests[0]
    assert m['kind'] == 'lens' and m['cancel_file'] == p.run_jobdir + r'\cancel'
    assert m['pid_file'] == p.run_jobdir + r'\pid'
    assert p.scripts[0].split('\r\n')[:-1] == bat_lines(
        r'"C:\Program Files\focus%%PATH%%bridge & co!\focusbridge.exe"'
    )
    assert win_leftovers(tmp_path) == []


@pytest.mark.parametrize(
    'dt_tmp', [r'C:\Users\100%real\Temp', r'C:\Users\Ærø\Temp', r'C:\Users\Hi!\Temp']
)
def test_windows_temp_folder_cmd_cannot_pass(tmp_path, monkeypatch, dt_tmp):
    """cmd.exe expands %VAR% inside quotes and system() goes through the ANSI code page:
    such a folder works only as %TEMP%... (cmd expands that itself), else it is refused."""
    monkeypatch.delenv('TEMP', raising=False)
    monkeypatch.delenv('TMP', raising=False)
    monkeypatch.delenv('LOCALAPPDATA', raising=False)
    monkeypatch.delenv('USERPROFILE', raising=False)
    p = win_plugin(tmp_path, monkeypatch, dt_tmp=dt_tmp)
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    assert '--tmpdir' in p.printed[-1] and p.commands == []

    monkeypatch.setenv('TEMP', dt_tmp)
    p.click('stack_button')
    mk, start = p.commands
    assert re.fullmatch(r'mkdir "%TEMP%\\focus_stack_[0-9a-f]{24}" >NUL 2>NUL', mk), mk
    assert re.fullmatch(r'start "" /b "%TEMP%\\focus_stack_[0-9a-f]{24}\\run\.bat"', start)
    assert p.run_jobdir.startswith(dt_tmp + '\\focus_stack_')
    assert p.printed[-1].startswith('focus stack: imported ')
    assert win_leftovers(tmp_path, dt_tmp) == []


def test_windows_job_names_without_urandom(tmp_path, monkeypatch):
    p = win_plugin(tmp_path, monkeypatch)
    p.mkdir_fail = 1
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.click('stack_button')
    p.click('stack_button')
    dirs = [
        re.search(r'focus_stack_([0-9a-f]+)"', c)[1] for c in p.commands if c.startswith('mkdir')
    ]
    assert len(dirs) == 3 and len(set(dirs)) == 3
    assert all(len(d) == 24 for d in dirs)
    assert p.randomseed_calls == 0


# --- JSON ------------------------------------------------------------------------------


def test_json_round_trip_and_decimal_point(plugin):
    j = plugin.api.json
    lua = plugin.lua
    data = lua.eval('''function(j)
      local s = j.encode({a = 2.8, b = {1, 2, 3}, c = "q\\"\\n\\\\ é $(x) `y`", d = true, e = {}})
      local back = j.decode(s)
      return s, back.a, back.c, #back.b
    end''')(j)
    text, a, c, n = data
    parsed = json.loads(text)
    assert parsed == {'a': 2.8, 'b': [1, 2, 3], 'c': 'q"\n\\ é $(x) `y`', 'd': True, 'e': {}}
    assert a == 2.8 and c == 'q"\n\\ é $(x) `y`' and n == 3
    dec = lua.eval('function(j, s) local v = j.decode(s) return v.fraction, v.output end')
    assert dec(
        j, '{"phase": "done", "fraction": 1.0, "output": "/a/\\u00e9\\ud83d\\ude00.tif"}'
    ) == (1.0, '/a/é😀.tif')
    assert dec(j, '{"fraction": 0.5e0}')[0] == 0.5


# --- several brackets in one selection ---------------------------------------------------------


def timed(imgs, start=0):
    """Give the images capture times in the library (darktable's exif_datetime_taken)."""
    for k, img in enumerate(imgs):
        img.exif_datetime_taken = f'2024:05:01 10:{(start + k) // 60:02d}:{(start + k) % 60:02d}'
    return imgs


def by_name(p, name):
    return [x for x in p.fake.all_images.values() if x.filename == name][0]


def group_of(p, img):
    """The images in `img`'s group (darktable: group_id = the leader's id), by file name."""
    return sorted(x.filename for x in p.fake.all_images.values() if x.group_id == img.group_id)


def three_brackets(p):
    """Eight images, a1..a2, b1..b3, c1..c2 and a lone frame h; the bridge finds three
    brackets and leaves h out."""
    imgs = timed(
        p.images(['c2.jpg', 'a1.jpg', 'b1.jpg', 'h.jpg', 'b2.jpg', 'a2.jpg', 'c1.jpg', 'b3.jpg'])
    )
    p.brackets_answer = {
        'brackets': [
            {'indexes': [0, 1], 'reason': 'capture times'},
            {'indexes': [2, 3, 4], 'reason': 'capture times'},
            {'indexes': [5, 6], 'reason': 'capture times'},
        ],
        'unassigned': [
            {'index': 7, 'file': str(p.photos / 'h.jpg'), 'reason': 'a single frame, not a bracket'}
        ],
    }
    p.select(imgs)
    return imgs


def test_a_selection_of_three_brackets_is_one_queue(plugin):
    p = plugin
    three_brackets(p)
    p.click('stack_button')
    assert [m['kind'] for m in p.manifests] == ['brackets', 'batch']
    found, batch = p.manifests
    names = ['a1', 'a2', 'b1', 'b2', 'b3', 'c1', 'c2', 'h']
    assert found['sources'] == [str(p.photos / f'{n}.jpg') for n in names]
    assert 'groups' not in found and 'progress_file' not in found
    jobdir = Path(batch['status_file']).parent
    # the options a single stack gets: every manifest row of the options table
    rows = p.lua.eval('(require "lib/focus_stack/options")').TABLE.values()
    assert batch['options'] == {r.name: r.default for r in rows if r.manifest}
    stacks = batch['stacks']
    assert [[Path(s).stem for s in st['sources']] for st in stacks] == [
        ['a1', 'a2'],
        ['b1', 'b2', 'b3'],
        ['c1', 'c2'],
    ]
    assert [Path(st['output']).name for st in stacks] == [
        'a1_stacked.tif',
        'b1_stacked.tif',
        'c1_stacked.tif',
    ]
    # one export for the queue, the lone frame left out; frames in the job folder
    assert [st['frames'] for st in stacks] == [
        [str(jobdir / f'frame_{i:03d}.tif') for i in ks] for ks in ((1, 2), (3, 4, 5), (6, 7))
    ]
    exported = [by_id for by_id in (f.id for f in p.fake.written_frames.values())]
    assert by_name(p, 'h.jpg').id not in exported and len(exported) == 7
    # each result leads a group of exactly its own frames, tagged as ever
    for stem, members in (('a1', 'a1 a2'), ('b1', 'b1 b2 b3'), ('c1', 'c1 c2')):
        result = by_name(p, f'{stem}_stacked.tif')
        assert result.group_id == result.id
        assert group_of(p, result) == sorted(
            [f'{stem}_stacked.tif'] + [f'{m}.jpg' for m in members.split()]
        )
        assert 'focus stack|stacked' in p.tags(result)
        for m in members.split():
            assert 'focus stack|source' in p.tags(by_name(p, f'{m}.jpg'))
    h = by_name(p, 'h.jpg')
    assert h.group_id is None and p.tags(h) == []
    # the module said what it found before the queue started, then how it went
    assert p.printed[0] == (
        '3 brackets: 2, 3, 2 frames; not stacked: h.jpg (a single frame, not a bracket)'
    )
    assert p.printed[-1] == (
        'focus stack: imported 3 results: a1_stacked.tif, b1_stacked.tif, c1_stacked.tif'
    )
    assert p.api.widgets.stack_outcome.text.split('\n') == [
        '3 brackets: 2, 3, 2 frames',
        'not stacked: h.jpg (a single frame, not a bracket)',
        'a1_stacked.tif: 2 frames',
        'b1_stacked.tif: 3 frames',
        'c1_stacked.tif: 2 frames',
        p.printed[-1],
    ]
    # one progress job for the queue (after the short one that found the brackets)
    jobs = list(p.fake.jobs.values())
    assert [j.text for j in jobs] == ['finding brackets', 'focus stack']
    percents = list(jobs[1].percents.values())
    assert percents == sorted(percents) and percents[-1] == 1 and jobs[1].cancel_cb
    assert all(j.valid is False for j in jobs)
    assert [x.filename for x in p.api.state.last_results.values()] == [
        'a1_stacked.tif',
        'b1_stacked.tif',
        'c1_stacked.tif',
    ]
    assert leftovers(p) == [] and p.api.state.busy is False


def test_darktable_groups_go_to_the_bridge_as_groups(plugin):
    p = plugin
    imgs = timed(p.images(['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg', 'e.jpg']))
    a, b, c, d, e = imgs
    b.group_with(b, a)  # the user grouped a, b and d
    d.group_with(d, a)
    p.brackets_answer = {
        'brackets': [
            {'indexes': [0, 1, 3], 'reason': 'one of the given groups'},
            {'indexes': [2, 4], 'reason': 'capture times'},
        ]
    }
    p.select(imgs)
    p.click('stack_button')
    found, batch = p.manifests
    assert found['groups'] == [[0, 1, 3]]
    assert [[Path(s).name for s in st['sources']] for st in batch['stacks']] == [
        ['a.jpg', 'b.jpg', 'd.jpg'],
        ['c.jpg', 'e.jpg'],
    ]
    assert group_of(p, by_name(p, 'c_stacked.tif')) == ['c.jpg', 'c_stacked.tif', 'e.jpg']


def test_one_darktable_group_is_one_bracket_without_asking(plugin):
    p = plugin
    imgs = timed(p.images(['a.jpg', 'b.jpg', 'c.jpg']))
    for img in imgs[1:]:
        img.group_with(img, imgs[0])
    p.select(imgs)
    p.click('stack_button')
    assert [m['kind'] for m in p.manifests] == ['stack']
    assert p.printed == ['focus stack: imported a_stacked.tif']


def test_one_bracket_found_stacks_exactly_as_before(tmp_path):
    """The bridge finds the whole selection to be one bracket: the stack manifest is the one
    a selection without capture times gets (the plugin as it always was)."""
    manifests = []
    for sub, with_times in (('plain', False), ('timed', True)):
        (tmp_path / sub).mkdir()
        p = Plugin(tmp_path / sub)
        imgs = p.images(['IMG_2.jpg', 'IMG_1.jpg', 'IMG_3.jpg'])
        if with_times:
            timed(imgs)
        p.select(imgs)
        p.click('stack_button')
        manifests.append(p.manifests)
        assert p.printed == ['focus stack: imported IMG_1_stacked.tif']
    plain, found = manifests
    assert [m['kind'] for m in plain] == ['stack'] and [m['kind'] for m in found] == [
        'brackets',
        'stack',
    ]

    def same(m, root):
        jobdir = str(Path(m['status_file']).parent)
        return json.loads(json.dumps(m).replace(jobdir, 'JOB').replace(str(root), 'ROOT'))

    assert same(found[1], tmp_path / 'timed') == same(plain[0], tmp_path / 'plain')


def test_one_bracket_and_a_stray_frame(plugin):
    p = plugin
    imgs = timed(p.images(['a.jpg', 'b.jpg', 'c.jpg', 'z.jpg']))
    p.brackets_answer = {
        'brackets': [{'indexes': [0, 1, 2], 'reason': 'capture times'}],
        'unassigned': [{'index': 3, 'file': 'z', 'reason': 'a single frame, not a bracket'}],
    }
    p.select(imgs)
    p.click('stack_button')
    assert [m['kind'] for m in p.manifests] == ['brackets', 'stack']
    assert [Path(s).name for s in p.manifests[1]['sources']] == ['a.jpg', 'b.jpg', 'c.jpg']
    assert p.printed == [
        '1 bracket: 3 frames; not stacked: z.jpg (a single frame, not a bracket)',
        'focus stack: imported a_stacked.tif',
    ]
    assert group_of(p, by_name(p, 'a_stacked.tif')) == ['a.jpg', 'a_stacked.tif', 'b.jpg', 'c.jpg']
    assert by_name(p, 'z.jpg').group_id is None
    assert p.api.widgets.stack_outcome.text.split('\n')[-1] == 'focus stack: imported a_stacked.tif'


@pytest.mark.parametrize(
    'answer, note',
    [
        ({'brackets': [], 'unassigned': []}, 'no bracket found by capture time or group'),
        (
            {'ok': False, 'error': "unknown job kind 'brackets'"},
            "finding the brackets failed (unknown job kind 'brackets')",
        ),
    ],
)
def test_no_bracket_found_stacks_the_selection_as_one(plugin, answer, note):
    """Frames too far apart in time, or an older bridge: the selection is one bracket, as
    it always was, and the module says why."""
    p = plugin
    imgs = timed(p.images(['a.jpg', 'b.jpg', 'c.jpg']))
    p.brackets_answer = answer
    p.select(imgs)
    p.click('stack_button')
    assert [m['kind'] for m in p.manifests] == ['brackets', 'stack']
    assert len(p.manifests[1]['sources']) == 3
    assert p.printed[0].startswith(note) and p.printed[0].endswith('stacked as one')
    assert p.printed[-1] == 'focus stack: imported a_stacked.tif'


def test_our_own_outputs_are_never_frames(plugin):
    p = plugin
    imgs = timed(p.images(['a.jpg', 'b.jpg', 'old_stacked.tif', 'old_depth.tif']))
    imgs[2].tags[1] = p.dt.tags.create('focus stack|stacked')
    imgs[3].tags[1] = p.dt.tags.create('focus stack|depth map')
    p.select(imgs)
    p.click('stack_button')
    assert [Path(s).name for s in p.manifests[0]['sources']] == ['a.jpg', 'b.jpg']
    assert [Path(s).name for s in p.manifests[1]['sources']] == ['a.jpg', 'b.jpg']
    assert p.printed[0] == (
        '1 bracket: 2 frames; not stacked: old_depth.tif (a focus stack output, not a frame); '
        'not stacked: old_stacked.tif (a focus stack output, not a frame)'
    )


def test_a_bracket_that_fails_stops_no_other(plugin):
    p = plugin
    three_brackets(p)
    p.batch_fail = {1}
    p.click('stack_button')
    assert [x for x in p.imports] == [
        str(p.photos / 'a1_stacked.tif'),
        str(p.photos / 'c1_stacked.tif'),
    ]
    frame = p.manifests[1]['stacks'][1]['frames'][0]
    assert p.printed[-1] == (
        f'focus stack: 2 of 3 brackets stacked; b1_stacked.tif: {frame}: not a TIFF file'
    )
    assert f'b1_stacked.tif: failed: {frame}: not a TIFF file' in p.api.widgets.stack_outcome.text
    assert all(by_name(p, f'b{i}.jpg').group_id is None for i in (1, 2, 3))
    assert group_of(p, by_name(p, 'c1_stacked.tif')) == ['c1.jpg', 'c1_stacked.tif', 'c2.jpg']
    assert leftovers(p) == []


def test_cancel_of_the_queue_keeps_what_was_finished(plugin):
    p = plugin
    three_brackets(p)
    p.scenario = 'slow'  # the first stack is done, then the user cancels
    p.cancel_after_sleeps = 3
    p.click('stack_button')
    assert p.printed[-1] == 'focus stack cancelled: 1 of 3 brackets stacked'
    assert p.imports == [str(p.photos / 'a1_stacked.tif')]
    assert group_of(p, by_name(p, 'a1_stacked.tif')) == ['a1.jpg', 'a1_stacked.tif', 'a2.jpg']
    assert 'b1_stacked.tif: cancelled' in p.api.widgets.stack_outcome.text
    assert Path(p.manifests[1]['cancel_file']).name == 'cancel'
    assert leftovers(p) == [] and p.api.state.busy is False


def test_cancel_while_finding_brackets_stacks_nothing(plugin):
    """The user cancels while the bridge looks for brackets; the bridge still answers (its
    one exiftool call was under way): nothing is exported or stacked."""
    p = plugin
    three_brackets(p)
    answer, late = p.brackets_answer, []
    p._bridge_brackets = lambda m, jobdir: late.append(m)  # no answer yet
    p.cancel_after_sleeps = 1
    sleep = p._sleep

    def answer_after_cancel(ms):
        sleep(ms)
        if late and Path(late[0]['cancel_file']).exists():
            p._status(late.pop(), {'ok': True, 'error': None, 'cancelled': False, **answer})

    p.fake.sleep_handler = answer_after_cancel
    p.click('stack_button')
    assert [m['kind'] for m in p.manifests] == ['brackets']
    assert p.printed[-1] == 'focus stack cancelled'
    assert p.imports == [] and list(p.fake.written_frames.values()) == []
    assert leftovers(p) == [] and p.api.state.busy is False


def test_results_of_brackets_never_share_a_name(tmp_path):
    """Two brackets whose first frames have one name (two folders) into one output folder."""
    out = tmp_path / 'out'
    out.mkdir()
    p = Plugin(tmp_path, prefs={'output_folder': str(out)})
    (p.photos / 'day2').mkdir()
    imgs = timed(
        p.images(['IMG_1.jpg', 'IMG_2.jpg'])
        + p.images(['IMG_1.jpg', 'IMG_2.jpg'], p.photos / 'day2')
    )
    p.brackets_answer = {
        'brackets': [{'indexes': [0, 1], 'reason': 'x'}, {'indexes': [2, 3], 'reason': 'x'}]
    }
    p.select(imgs)
    p.click('stack_button')
    outputs = [st['output'] for st in p.manifests[1]['stacks']]
    assert outputs == [str(out / 'IMG_1_stacked.tif'), str(out / 'IMG_1_stacked_2.tif')]
    assert p.printed[-1].startswith('focus stack: imported 2 results')


def test_export_target_splits_the_brackets_too(plugin):
    p = plugin
    imgs = three_brackets(p)
    files = storage_export(p, imgs)
    assert [m['kind'] for m in p.manifests] == ['brackets', 'batch']
    stacks = p.manifests[1]['stacks']
    jobdir = Path(p.manifests[1]['status_file']).parent
    assert all(Path(f).parent == jobdir for st in stacks for f in st['frames'])
    assert sum(len(st['frames']) for st in stacks) == 7
    assert list(p.fake.written_frames.values()) == []  # darktable exported, not us
    assert len(p.imports) == 3 and p.api.state.storage_runs == 1
    assert not Path(files[by_name(p, 'h.jpg').id]).exists()
    assert leftovers(p) == []


# --- aligned frames for retouching ------------------------------------------------------------


def test_aligned_frames_are_imported_into_the_group(tmp_path):
    p = Plugin(tmp_path)
    w = p.api.widgets.options.aligned_frames
    assert w._kind == 'check_button' and w.value is False
    assert w.label == 'import aligned frames for retouching'
    w.value = True
    w.clicked_callback(w)
    assert p.fake.prefs['focus_stack/aligned_frames'] is True
    storage_box = p.fake.storages['focus_stack'].widget
    assert storage_box[6].value is True  # the export target's copy follows
    imgs = p.images(['b.jpg', 'a.jpg', 'c.jpg'])
    (p.photos / 'a_stacked_aligned').mkdir()  # an earlier run's folder takes the name
    p.select(imgs)
    p.click('stack_button')
    m = p.manifests[0]
    assert m['output'] == str(p.photos / 'a_stacked_2.tif')
    assert m['options']['aligned_frames'] == str(p.photos / 'a_stacked_2_aligned')
    result = by_name(p, 'a_stacked_2.tif')
    aligned = [f'{n}_aligned.tif' for n in 'abc']
    assert group_of(p, result) == sorted(['a.jpg', 'b.jpg', 'c.jpg', 'a_stacked_2.tif', *aligned])
    for name in aligned:
        img = by_name(p, name)
        assert img.path == str(p.photos / 'a_stacked_2_aligned')
        assert p.tags(img) == ['focus stack|aligned']
    assert p.fake.leaders[len(p.fake.leaders)] == result.id
    assert p.tags(result) == ['focus stack|stacked']


def test_aligned_frames_in_a_queue_belong_to_each_stack(tmp_path):
    p = Plugin(tmp_path, prefs={'aligned_frames': True})
    three_brackets(p)
    p.click('stack_button')
    batch = p.manifests[1]
    assert 'aligned_frames' not in batch['options']
    assert [st['aligned_frames'] for st in batch['stacks']] == [
        str(p.photos / f'{s}_stacked_aligned') for s in ('a1', 'b1', 'c1')
    ]
    assert group_of(p, by_name(p, 'b1_stacked.tif')) == sorted(
        ['b1_stacked.tif']
        + [f'b{i}.jpg' for i in (1, 2, 3)]
        + [f'b{i}_aligned.tif' for i in (1, 2, 3)]
    )


def test_aligned_frames_are_never_frames_of_the_next_stack(plugin):
    p = plugin
    imgs = timed(p.images(['a.jpg', 'b.jpg', 'a_aligned.tif']))
    imgs[2].tags[1] = p.dt.tags.create('focus stack|aligned')
    p.select(imgs)
    p.click('stack_button')
    assert [Path(s).name for s in p.manifests[-1]['sources']] == ['a.jpg', 'b.jpg']


# --- check bracket -----------------------------------------------------------------------------


def test_check_bracket_shows_the_findings_and_imports_the_coverage_map(plugin):
    p = plugin
    imgs = p.images(['f3.jpg', 'f1.jpg', 'f2.jpg', 'f4.jpg'])
    p.check_answer = {
        'gap_details': [{'between': [1, 2], 'area_fraction': 0.047, 'bbox': [1, 2, 3, 4]}],
        'gaps': [[1, 2]],
        'wasted': [3],
        'exposure_jumps': [
            {'between': [0, 1], 'change': 0.052},
            {'between': [2, 3], 'change': -0.25},
        ],
        'notes': ['which end is near is unknown without focus distances'],
    }
    p.select(imgs)
    p.click('check_button')
    (m,) = p.manifests
    assert m['kind'] == 'check'
    assert m['frames'] == [str(p.photos / f'f{i}.jpg') for i in (1, 2, 3, 4)]
    assert 'sources' not in m and m['coverage_map'] == str(p.photos / 'f1_coverage.png')
    assert p.api.widgets.stack_outcome.text.split('\n') == [
        'order: in focus order',
        'gap between f2.jpg and f3.jpg: 4.7 % of the picture is sharp in neither',
        'wasted: f4.jpg (the sharpest nowhere)',
        'exposure jump: f2.jpg is 5.2 % brighter than f1.jpg',
        'exposure jump: f4.jpg is 25.0 % darker than f3.jpg',
        'note: which end is near is unknown without focus distances',
        'coverage map: f1_coverage.png',
    ]
    cov = by_name(p, 'f1_coverage.png')
    assert p.tags(cov) == ['focus stack|coverage']
    assert cov.group_id == by_name(p, 'f1.jpg').id  # in the first frame's group
    assert p.printed[-1].startswith('check bracket: order: in focus order; gap between f2.jpg')
    assert p.api.state.last_check.check.gaps[1][2] == 2
    assert [j.text for j in p.fake.jobs.values()] == ['check bracket']
    assert leftovers(p) == []


def test_check_joins_the_group_of_an_earlier_stack(plugin):
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg'])
    p.select(imgs)
    p.click('stack_button')
    (p.photos / 'a_coverage.png').write_bytes(b'earlier')
    p.click('check_button')
    m = p.manifests[-1]
    assert m['coverage_map'] == str(p.photos / 'a_coverage_2.png')
    result = by_name(p, 'a_stacked.tif')
    cov = by_name(p, 'a_coverage_2.png')
    assert cov.group_id == result.id and result.group_id == result.id
    assert p.api.widgets.stack_outcome.text.split('\n')[:2] == [
        'order: in focus order',
        'no problems found',
    ]


def checked(p, names, answer) -> list[str]:
    """The module's lines after checking images `names` with the bridge answering `answer`."""
    p.select(p.images(names))
    p.check_answer = answer
    p.click('check_button')
    return p.api.widgets.stack_outcome.text.split('\n')


def test_check_without_problems_says_when_something_was_not_judged(plugin):
    answer = {
        'notes': ['too little detail to judge focus (blank or out-of-focus frames?)'],
        'judged_all': False,
    }
    assert checked(plugin, ['a.jpg', 'b.jpg'], answer)[1:3] == [
        'note: too little detail to judge focus (blank or out-of-focus frames?)',
        'no problems found in what could be judged',
    ]


def test_check_says_times_as_bright_after_a_black_frame(plugin):
    answer = {
        'exposure_jumps': [
            {'between': [0, 1], 'change': -0.998},
            {'between': [1, 2], 'change': 479.09},
        ],
    }
    assert checked(plugin, ['a.jpg', 'b.jpg', 'c.jpg'], answer)[1:3] == [
        'exposure jump: b.jpg is 99.8 % darker than a.jpg',
        'exposure jump: c.jpg is 480.1 times as bright as b.jpg',
    ]


def test_check_names_a_frame_that_does_not_belong(plugin):
    answer = {'stray': [2], 'wasted': [3]}
    assert checked(plugin, ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg'], answer)[:3] == [
        'c.jpg does not belong to the bracket: it lines up with no frame of the bracket '
        'beside it and looks like none (left out of the rest)',
        'order: in focus order',
        'wasted: d.jpg (the sharpest nowhere)',
    ]


def test_check_exports_frames_the_bridge_cannot_read(plugin):
    p = plugin
    imgs = p.images(['x1.heic', 'x2.heic'])
    p.select(imgs)
    p.click('check_button')
    (m,) = p.manifests
    jobdir = Path(m['status_file']).parent
    assert m['frames'] == [str(jobdir / f'frame_{i:03d}.tif') for i in (1, 2)]
    assert m['sources'] == [str(p.photos / f'x{i}.heic') for i in (1, 2)]
    assert [f.bpp for f in p.fake.written_frames.values()] == [16, 16]
    assert leftovers(p) == []


def test_check_needs_two_images_and_reports_failure(plugin):
    p = plugin
    p.select(p.images(['one.jpg']))
    p.click('check_button')
    assert p.printed == ['check bracket: select at least two images'] and p.commands == []
    p.select(p.images(['a.jpg', 'b.jpg']))
    p.scenario = 'fail'

    def failing(m, jobdir):
        p._status(m, {'ok': False, 'error': 'a.jpg: cannot decode', 'cancelled': False})

    p._bridge_check = failing
    p.click('check_button')
    assert p.printed[-1] == 'check bracket failed: a.jpg: cannot decode'
    assert p.imports == [] and leftovers(p) == []


def test_windows_queue_of_brackets(tmp_path, monkeypatch):
    p = win_plugin(tmp_path, monkeypatch)
    three_brackets(p)
    p.click('stack_button')
    assert [m['kind'] for m in p.manifests] == ['brackets', 'batch']
    batch = p.manifests[1]
    assert batch['pid_file'] == p.run_jobdir + r'\pid'
    assert all(
        f.startswith(p.run_jobdir + '\\frame_') for st in batch['stacks'] for f in st['frames']
    )
    assert len(p.scripts) == 2 and p.scripts[0] == p.scripts[1]  # the same run.bat each time
    assert p.printed[-1].startswith('focus stack: imported 3 results')
    assert win_leftovers(tmp_path) == []


def test_callbacks_while_widgets_are_made_change_nothing(tmp_path):
    """darktable 4.2 may run a widget's callback while the table making it is applied (seen
    under Xvfb, depending on the table's order): no preference may change then, and the
    options must still follow the user afterwards."""
    fake = FAKE.read_text().replace(
        '''    w._kind = kind
    return w''',
        '''    w._kind = kind
    -- the value set after the callback: darktable runs the callback at once
    if w.clicked_callback and w.value ~= nil then w.clicked_callback(w) end
    if w.changed_callback then w.changed_callback(w) end
    return w''',
    )
    assert 'at once' in fake
    p = Plugin(tmp_path, fake_src=fake, prefs={'method': 'depthmap', 'output_folder': '/o'})
    prefs = {k.split('/', 1)[1]: v for k, v in p.fake.prefs.items()}
    assert prefs == {'initialized': True, 'method': 'depthmap', 'output_folder': '/o'}
    align = p.api.widgets.options.align
    align.value = False
    align.clicked_callback(align)
    assert p.fake.prefs['focus_stack/align'] is False
    assert p.fake.storages['focus_stack'].widget[2].value is False


# --- hostile input and partial outcomes ------------------------------------------------------


def test_progress_and_status_that_are_no_objects_are_ignored(plugin):
    """A bridge that prints garbage (a progress line `42`, a status `true`) is no crash of the
    poll loop (which would drop the job folder under a bridge still running): the run goes
    on to the bridge's real answer."""
    p = plugin
    p.select(p.images(['a.jpg', 'b.jpg']))

    def garbage(m, jobdir):
        Path(m['pid_file']).write_text('4242\n')
        Path(m['progress_file']).write_text('42\ntrue\n')
        Path(m['status_file']).write_text('true')
        p.pending = (m, jobdir)

    def finish(ms):
        p.sleeps += 1
        if p.sleeps == 3 and p.pending:
            m, _ = p.pending
            Path(m['output']).write_bytes(b'stacked')
            p._status(m, {'ok': True, 'output': m['output'], 'depth_map': None, 'error': None})
            p.pending = None
        assert p.sleeps < 50

    p._bridge = garbage
    p.fake.sleep_handler = finish
    p.click('stack_button')
    assert p.printed[-1] == 'focus stack: imported a_stacked.tif'
    assert leftovers(p) == [] and p.api.state.busy is False


def test_a_backslash_in_a_file_name_is_no_folder(plugin):
    """On Linux `\\` is a character of a file name: the result and the coverage map go beside
    the frames (not into a folder `x` that happens to exist there), named after them."""
    p = plugin
    (p.photos / 'x').mkdir()
    imgs = p.images(['x\\a.jpg', 'x\\b.jpg'])
    p.select(imgs)
    p.click('stack_button')
    assert p.manifests[0]['output'] == str(p.photos / 'x\\a_stacked.tif')
    assert p.printed[-1] == 'focus stack: imported x\\a_stacked.tif'
    p.select(imgs)
    p.click('check_button')
    assert p.manifests[-1]['coverage_map'] == str(p.photos / 'x\\a_coverage.png')
    assert list((p.photos / 'x').iterdir()) == []


def test_check_leaves_out_our_own_outputs(plugin):
    """A stacked group selected whole (frames, result, depth map, an earlier coverage map):
    the check looks at the frames only, as a stack would."""
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg', 'c.jpg'])
    p.select(imgs)
    p.click('stack_button')
    p.click('check_button')
    p.select(list(p.fake.all_images.values()))  # the frames, the result, the coverage map
    p.click('check_button')
    assert [Path(f).name for f in p.manifests[-1]['frames']] == ['a.jpg', 'b.jpg', 'c.jpg']
    assert p.manifests[-1]['coverage_map'] == str(p.photos / 'a_coverage_2.png')


@pytest.mark.parametrize('bpp', [16, 8])
def test_export_target_stacks_nothing_when_darktable_skipped_a_frame(plugin, bpp):
    """darktable skips an image whose file is missing, and stops at a cancel or a failed
    export, then still calls finalize: no stack of the frames that happened to come."""
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg', 'c.jpg'])
    st = p.fake.storages['focus_stack']
    fmt = p.lua.table(bpp=bpp, extension='tif')
    extra = p.lua.table()
    p.call(st.initialize, st, fmt, p.lua.table_from(imgs), True, extra)
    table = p.lua.table()
    for n, img in enumerate([imgs[0], imgs[2]], 1):  # b.jpg never reaches store
        f = p.dt_tmp / f'{Path(img.filename).stem}.tif'
        f.write_bytes(b'II*\0darktable export')
        p.call(st.store, st, img, fmt, str(f), n, len(imgs), True, extra)
        table[img] = str(f)
    p.call(st.finalize, st, table, extra)
    assert p.printed[-1] == (
        'focus stack: b.jpg was not exported (missing, failed or cancelled): nothing stacked'
    )
    assert p.bridge_runs == 0 and p.imports == [] and leftovers(p) == []
    assert list(p.fake.written_frames.values()) == []
    assert p.api.state.storage_runs == 1 and p.api.state.busy is False


def test_a_duplicate_in_its_originals_group_is_no_bracket(plugin):
    """darktable puts a duplicate into its original's group: that group is one image twice,
    not a bracket the user made, and is not sent to the bridge as one."""
    p = plugin
    imgs = timed(p.images(['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg']))
    dup = p.fake.new_image(str(p.photos), 'b.jpg')
    dup.exif_datetime_taken = imgs[1].exif_datetime_taken
    dup.group_with(dup, imgs[1])
    p.select([*imgs, dup])
    p.click('stack_button')
    found, stacked = p.manifests
    assert found['kind'] == 'brackets' and 'groups' not in found
    assert [Path(s).name for s in stacked['sources']] == [
        'a.jpg',
        'b.jpg',
        'b.jpg',
        'c.jpg',
        'd.jpg',
    ]


def test_lens_names_each_file_once(plugin):
    """A duplicate selected with its original: one file, named once, so that an undo restores
    it once (named twice, the change before the last one was undone too)."""
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg'])
    dup = p.fake.new_image(str(p.photos), 'a.jpg')
    p.select([imgs[0], dup, imgs[1]])
    p.api.widgets.lens_make.text = 'Canon'
    p.click('lens_apply')
    p.click('lens_undo')
    files = [str(p.photos / 'a.jpg'), str(p.photos / 'b.jpg')]
    assert [m['files'] for m in p.manifests] == [files, files]


def test_lens_change_that_failed_on_some_files_stays_undoable(plugin):
    """A lens change that failed on one file (read-only) changed the others all the same:
    undo restores exactly those, and an undo that fails on one file leaves only that one."""
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg', 'c.jpg'])
    p.select(imgs)
    p.api.widgets.lens_make.text = 'Canon'
    outcomes = iter([('updated', 'error', 'updated'), ('restored', 'error'), ('restored',)])

    def partial(m, jobdir):
        results = [
            {'file': f, 'outcome': o, 'message': 'read-only' if o == 'error' else ''}
            for f, o in zip(m['files'], next(outcomes), strict=True)
        ]
        ok = all(r['outcome'] != 'error' for r in results)
        p._status(m, {'ok': ok, 'error': None if ok else 'some failed', 'results': results})

    p._bridge = partial
    p.click('lens_apply')
    assert p.printed[-1] == 'lens data failed: some failed'
    acts = list(p.fake.actions.values())
    assert list(acts[-1].selection.values()) == [imgs[0].id, imgs[2].id]  # EXIF re-read
    p.click('lens_undo')
    assert p.manifests[-1]['files'] == [str(p.photos / n) for n in ('a.jpg', 'c.jpg')]
    assert p.printed[-1] == 'lens undo failed: some failed'
    p.click('lens_undo')
    assert p.manifests[-1]['files'] == [str(p.photos / 'c.jpg')]
    assert p.printed[-1] == 'lens data restored'


def test_a_cancelled_lens_change_stays_undoable_for_the_files_it_changed(plugin):
    """A lens change cancelled half-way: the bridge's status (cancelled, exit 130) names the
    files it wrote; undo restores exactly those."""
    p = plugin
    imgs = p.images(['a.jpg', 'b.jpg', 'c.jpg'])
    p.select(imgs)
    p.api.widgets.lens_make.text = 'Canon'

    def cancelled(m, jobdir):
        results = [{'file': m['files'][0], 'outcome': 'updated', 'message': ''}]
        p._status(
            m,
            {
                'ok': False,
                'cancelled': True,
                'error': 'cancelled after changing 1 of 3 files',
                'results': results,
            },
        )

    p._bridge = cancelled
    p.click('lens_apply')
    assert 'cancelled after changing 1 of 3 files' in p.printed[-1]
    p._bridge = None
    p.click('lens_undo')
    assert p.manifests[-1]['files'] == [str(p.photos / 'a.jpg')]


def test_the_bridges_warnings_are_shown_with_the_result_and_logged(tmp_path):
    """A frame the bridge could not align is stacked all the same; the photographer must
    hear of it in darktable too, not only on a terminal nobody watches."""
    p = Plugin(tmp_path)
    p.status_extra = {
        'warnings': [
            'b.jpg: could not be aligned to a.jpg; its place is predicted',
            'c.jpg: could not be aligned to b.jpg; its place is predicted',
        ]
    }
    p.select(p.images(['a.jpg', 'b.jpg', 'c.jpg']))
    p.click('stack_button')
    assert p.printed[-1] == (
        'focus stack: imported a_stacked.tif; warning: b.jpg: could not be aligned to a.jpg; '
        'its place is predicted (1 more in the log)'
    )
    logs = list(p.fake.logs.values())
    for warning in p.status_extra['warnings']:
        assert f'focus_stack: warning: {warning}' in logs
    p.status_extra = {'warnings': []}
    p.click('stack_button')
    assert p.printed[-1] == 'focus stack: imported a_stacked_2.tif'


def test_warnings_of_stacks_in_a_queue_are_said_per_result(plugin):
    p = plugin
    three_brackets(p)
    p.batch_warnings = {1: ['b2.tif: could not be aligned to b1.tif']}
    p.click('stack_button')
    assert p.printed[-1] == (
        'focus stack: imported 3 results: a1_stacked.tif, b1_stacked.tif, c1_stacked.tif; '
        'warning: b1_stacked.tif: b2.tif: could not be aligned to b1.tif'
    )
    outcome = p.api.widgets.stack_outcome.text.split('\n')
    at = outcome.index('b1_stacked.tif: 3 frames')
    assert outcome[at + 1] == 'b1_stacked.tif: warning: b2.tif: could not be aligned to b1.tif'
    assert 'focus_stack: warning: b1_stacked.tif: b2.tif: could not be aligned to b1.tif' in list(
        p.fake.logs.values()
    )
