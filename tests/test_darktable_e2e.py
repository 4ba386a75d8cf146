"""End-to-end: the real darktable 4.2 GUI under Xvfb, the plugin loaded from luarc, the real
`focusbridge` (this checkout's .venv/bin/focusbridge) and real brackets from tests/data.

The plugin is installed as a user does it, the script with its lib/focus_stack/ folder: into
lua-scripts' tree (<configdir>/lua/contrib/ + lua/lib/focus_stack/) for most tests, standalone
(<configdir>/lua/focus_stack.lua) for one and as a checkout of this repository for another.

These tests FAIL when darktable/Xvfb are missing (CI installs them). Set
FOCUSBRIDGE_SKIP_DARKTABLE=1 to skip them explicitly on a machine without darktable.
One darktable at a time: the tests run sequentially and each starts one darktable.

FOCUSBRIDGE_SCREENSHOT=1 adds test_screenshots, which retakes docs/screenshot-module.png and
docs/screenshot-result.png with a bridge installed where users have it (default
/usr/local/bin/focusbridge, or FOCUSBRIDGE_SCREENSHOT_BRIDGE; a wrapper such as
`#!/bin/sh` + `exec /path/to/.venv/bin/focusbridge "$@"` will do).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from darktable_harness.harness import (
    ROOT,
    darktable_available,
    lua_string,
    move_pointer,
    run_darktable,
    x_env,
)
from shoots import blank, stack_shoot, when, write_tags

pytestmark = [pytest.mark.darktable, pytest.mark.slow]

BRIDGE_DIR = ROOT / '.venv' / 'bin'
NASTY_DIR = "bracket é; $(touch PWNED)"
NASTY = [
    "1 it's \"quoted\".jpg",
    "2 $(touch PWNED).jpg",
    "3 `touch PWNED`.jpg",
    "4; touch PWNED.jpg",
    "5 Ærø ünï.jpg",
]


@pytest.fixture(scope='module', autouse=True)
def need_darktable():
    if os.environ.get('FOCUSBRIDGE_SKIP_DARKTABLE') == '1':
        pytest.skip('FOCUSBRIDGE_SKIP_DARKTABLE=1: darktable end-to-end tests skipped on request')
    if not darktable_available():
        pytest.fail(
            'darktable and xvfb-run are required (apt-get install -y darktable xvfb); '
            'set FOCUSBRIDGE_SKIP_DARKTABLE=1 to skip explicitly'
        )
    if not (BRIDGE_DIR / 'focusbridge').exists():
        pytest.fail(f'{BRIDGE_DIR / "focusbridge"} missing: the real bridge is needed')


def make_bracket(test_data: Path, folder: Path, names, size=(512, 384), set_='pcb7'):
    """Downscaled copies of a real bracket, with the original EXIF copied over."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    src_dir = test_data / 'brackets' / set_
    sources = sorted(src_dir.glob('pcb_*.jpg'))[: len(names)]
    out = []
    for src, name in zip(sources, names, strict=True):
        img = cv2.imread(str(src))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        dst = folder / name
        ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        dst.write_bytes(buf.tobytes())
        subprocess.run(
            [
                'exiftool',
                '-q',
                '-q',
                '-overwrite_original',
                '-TagsFromFile',
                str(src),
                '-all:all',
                '-ImageWidth=',
                '-ImageHeight=',
                str(dst),
            ],
            check=True,
            capture_output=True,
        )
        out.append(dst)
    return out


def exif(path: Path, *tags):
    done = subprocess.run(
        ['exiftool', '-j', '-n', *[f'-{t}' for t in tags], str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)[0]


def db_rows(db: Path, sql: str, *args):
    con = sqlite3.connect(f'file:{db}?mode=ro', uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def check_library(res, sources: list[Path], result_name: str):
    """Result imported, leader of a group with all sources, tagged; sources tagged."""
    rows = db_rows(
        res.library,
        'SELECT i.id, i.group_id, i.filename, f.folder FROM images i '
        'JOIN film_rolls f ON f.id = i.film_id',
    )
    by_name = {r[2]: r for r in rows}
    assert result_name in by_name, rows
    rid = by_name[result_name][0]
    for s in sources:
        assert by_name[s.name][1] == rid, (s.name, rows)
    assert by_name[result_name][1] == rid
    tagnames = dict(db_rows(res.data_db, 'SELECT id, name FROM tags'))
    tagged = {}
    for imgid, tagid in db_rows(res.library, 'SELECT imgid, tagid FROM tagged_images'):
        tagged.setdefault(imgid, set()).add(tagnames.get(tagid))
    assert 'focus stack|stacked' in tagged[rid]
    for s in sources:
        assert 'focus stack|source' in tagged[by_name[s.name][0]]
    return rid, tagged


def check_result_file(path: Path, source: Path):
    import tifffile

    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        assert page.dtype.name == 'uint16', page.dtype
        assert page.shape[-1] == 3
    got = exif(path, 'Make', 'Model', 'FNumber', 'FocalLength')
    want = exif(source, 'Make', 'Model', 'FNumber', 'FocalLength')
    for k in ('Make', 'Model', 'FNumber', 'FocalLength'):
        if k in want:
            assert got.get(k) == want[k], (k, got, want)


def no_leftovers(res, work: Path):
    left = [
        p
        for p in res.tmp_dir.rglob('*')
        if 'focus_stack' in str(p) or p.suffix.lower() in ('.tif', '.json', '.jsonl')
    ]
    assert left == [], left
    assert not list(work.rglob('PWNED')), 'a file name was run by a shell'
    assert not (ROOT / 'PWNED').exists() and not Path('PWNED').exists()
    assert not (res.attempt_dir / 'PWNED').exists()


def test_button_path_real_bracket(tmp_path, test_data):
    work = tmp_path
    folder = work / NASTY_DIR
    sources = make_bracket(test_data, folder, NASTY)
    body = f'''
local paths = {{ {", ".join(lua_string(p) for p in sources)} }}
local imgs = IMPORT_ALL(paths)
dt.tags.attach(dt.tags.create("subject|pcb"), imgs[1])
imgs[3].rating = 4
imgs[3].title = "pcb macro"
dt.gui.selection(imgs)
local lib = dt.gui.libs["focus_stack"]
R.lib_visible = lib and lib.visible
local t0 = os.time()
CLICK("stack_button")
R.seconds = os.time() - t0
R.message = PLUGIN.state.last_message
R.command = PLUGIN.state.last_command
R.manifest = PLUGIN.state.last_manifest
local r = PLUGIN.state.last_result
R.result = r and {{id = r.id, filename = r.filename, rating = r.rating, title = r.title}}
'''
    res = run_darktable(work, body, bridge_dir=BRIDGE_DIR)
    rep = res.report
    assert rep['ok'], (rep, res.log[-3000:])
    assert rep['plugin_loaded'] and rep['lib_visible']
    result_name = Path(sorted(NASTY)[0]).stem + '_stacked.tif'
    assert rep['message'] == f'focus stack: imported {result_name}', (rep, res.log[-3000:])
    m = rep['manifest']
    assert m['sources'] == [str(p) for p in sorted(sources)]
    assert m['output'] == str(folder / result_name)
    # the one command: only the bridge, the manifest and files in the private job folder
    cmd = rep['command']
    for n in NASTY + [NASTY_DIR, 'PWNED', result_name]:
        assert n not in cmd
    assert f"'{BRIDGE_DIR / 'focusbridge'}' run-job '" in cmd
    # a private job folder with a random name; the bridge is told where to stop and report
    jobdir = Path(m['status_file']).parent
    assert re.fullmatch(r'focus_stack_[0-9a-f]{24}', jobdir.name), jobdir
    assert m['cancel_file'] == str(jobdir / 'cancel') and m['pid_file'] == str(jobdir / 'pid')
    result = folder / result_name
    check_result_file(result, sources[0])
    rid, tagged = check_library(res, sources, result_name)
    assert 'subject|pcb' in tagged[rid]
    assert rep['result']['rating'] == 4 and rep['result']['title'] == 'pcb macro'
    no_leftovers(res, work)


def test_export_target_path_and_cancel(tmp_path, test_data):
    work = tmp_path
    folder = work / 'export ; `x`'
    sources = make_bracket(test_data, folder, ['e1.jpg', 'e2.jpg', 'e3.jpg'])
    # a side map of an earlier result takes the name: the new set becomes e1_stacked_2.*
    (folder / 'e1_stacked_depth.tif').write_bytes(b'earlier depth map')
    big = make_bracket(
        test_data, work / 'big', ['b1.jpg', 'b2.jpg', 'b3.jpg', 'b4.jpg'], size=(2048, 1536)
    )
    body = f'''
local imgs = IMPORT_ALL({{ {", ".join(lua_string(p) for p in sources)} }})
local bigs = IMPORT_ALL({{ {", ".join(lua_string(p) for p in big)} }})
local function wait_runs(n)
  for i = 1, 1200 do if (PLUGIN.state.storage_runs or 0) >= n then return true end dt.control.sleep(100) end
  return false
end
dt.gui.selection(imgs)
dt.gui.action("lib/export/export", 0, "", "", 1.0)
R.export_done = wait_runs(1)
R.export_message = PLUGIN.state.last_message
R.export_manifest = PLUGIN.state.last_manifest
PLUGIN.state.last_result = nil
-- second export, cancelled as soon as the bridge reports progress
dt.gui.selection(bigs)
dt.gui.action("lib/export/export", 0, "", "", 1.0)
local sent = false
for i = 1, 1200 do
  local j = PLUGIN.state.current_job
  if j and j.dir and EXISTS(j.dir .. "/progress.jsonl") then sent = PLUGIN.cancel() break end
  dt.control.sleep(50)
end
R.cancel_sent = sent
R.cancel_done = wait_runs(2)
R.cancel_message = PLUGIN.state.last_message
R.cancel_manifest = PLUGIN.state.last_manifest
'''
    res = run_darktable(work, body, bridge_dir=BRIDGE_DIR)
    rep = res.report
    assert rep['ok'], (rep, res.log[-3000:])
    assert (
        rep['export_done'] and rep['export_message'] == 'focus stack: imported e1_stacked_2.tif'
    ), rep
    assert all(Path(f).name.startswith('frame_') for f in rep['export_manifest']['frames'])
    check_result_file(folder / 'e1_stacked_2.tif', sources[0])
    check_library(res, sources, 'e1_stacked_2.tif')
    assert (folder / 'e1_stacked_depth.tif').read_bytes() == b'earlier depth map'
    assert not (folder / 'e1_stacked.tif').exists()
    # cancel: the bridge stopped, no output, nothing imported or tagged
    assert rep['cancel_sent'] and rep['cancel_done'], rep
    assert rep['cancel_message'] == 'focus stack cancelled', rep
    assert not Path(rep['cancel_manifest']['output']).exists()
    assert list((work / 'big').iterdir()) == sorted(big) or sorted(
        (work / 'big').iterdir()
    ) == sorted(big)
    names = [r[0] for r in db_rows(res.library, 'SELECT filename FROM images')]
    assert 'b1_stacked.tif' not in names
    tagnames = dict(db_rows(res.data_db, 'SELECT id, name FROM tags'))
    big_ids = [
        r[0] for r in db_rows(res.library, "SELECT id FROM images WHERE filename LIKE 'b_.jpg'")
    ]
    for imgid, tagid in db_rows(res.library, 'SELECT imgid, tagid FROM tagged_images'):
        if imgid in big_ids:
            assert not tagnames.get(tagid, '').startswith('focus stack'), tagnames.get(tagid)
    no_leftovers(res, work)


def test_errors_change_nothing(tmp_path, test_data):
    work = tmp_path
    sources = make_bracket(test_data, work / 'p', ['a.jpg', 'b.jpg'])
    broken = work / 'p' / 'c.jpg'
    body = f'''
local imgs = IMPORT_ALL({{ {", ".join(lua_string(p) for p in sources)} }})
dt.gui.selection({{imgs[1]}})
CLICK("stack_button")
R.one = PLUGIN.state.last_message
-- the bridge fails: the manifest names a frame the bridge cannot read (a truncated file)
dt.gui.selection(imgs)
os.remove({lua_string(sources[1])})
CLICK("stack_button")
R.fail = PLUGIN.state.last_message
'''
    res = run_darktable(work, body, bridge_dir=BRIDGE_DIR, layout='standalone')
    rep = res.report
    assert rep['ok'] and rep['plugin_loaded'], rep
    assert rep['one'] == 'focus stack: select at least two images'
    # a source gone missing: darktable's export produces nothing for it
    assert rep['fail'].startswith(('the export of', 'focus stack failed:')), rep
    names = [r[0] for r in db_rows(res.library, 'SELECT filename FROM images')]
    assert names == ['a.jpg', 'b.jpg']
    ours = {
        tid
        for tid, name in db_rows(res.data_db, 'SELECT id, name FROM tags')
        if name.startswith('focus stack')
    }
    assert not [
        r for r in db_rows(res.library, 'SELECT imgid, tagid FROM tagged_images') if r[1] in ours
    ]
    assert db_rows(res.library, 'SELECT COUNT(*) FROM images WHERE group_id != id')[0][0] == 0
    assert not broken.exists()
    no_leftovers(res, work)


def test_bridge_missing_in_real_darktable(tmp_path, test_data):
    work = tmp_path
    sources = make_bracket(test_data, work / 'p', ['a.jpg', 'b.jpg'])
    body = f'''
local imgs = IMPORT_ALL({{ {", ".join(lua_string(p) for p in sources)} }})
R.label = PLUGIN.widgets.bridge_label.label
dt.gui.selection(imgs)
CLICK("stack_button")
R.message = PLUGIN.state.last_message
'''
    res = run_darktable(work, body, env={'PATH': '/usr/bin:/bin'}, layout='checkout')
    rep = res.report
    assert rep['ok'] and rep['plugin_loaded'], rep
    # nothing on darktable's package.path led to the checkout: the script put it first
    checkout = res.attempt_dir / 'cfg' / 'lua' / 'focusbridge' / 'darktable_lua'
    assert rep['package_path'].split(';')[0] == f'{checkout}/?.lua', rep['package_path']
    assert 'focusbridge not found on PATH' in rep['label']
    assert 'focusbridge not found on PATH' in rep['message']
    assert len(db_rows(res.library, 'SELECT id FROM images')) == 2


def test_lens_set_and_undo_refreshes_exif(tmp_path, test_data):
    work = tmp_path
    sources = make_bracket(test_data, work / "lens é'", ['l1.jpg', 'l2.jpg'])
    # Give the files a lens name of their own first: darktable's "refresh EXIF" fills the
    # fields a file has but never clears one the file lacks, so an undo back to "no lens"
    # would leave darktable showing the stale name (seen on 4.2.1).
    for src in sources:
        subprocess.run(
            ['exiftool', '-q', '-overwrite_original', '-LensModel=Original Macro 100', str(src)],
            check=True,
        )
    originals = [src.read_bytes() for src in sources]
    body = f'''
local imgs = IMPORT_ALL({{ {", ".join(lua_string(p) for p in sources)} }})
R.before = imgs[1].exif_lens
dt.gui.selection(imgs)
PLUGIN.widgets.lens_preset.text = "laowa-25-2.5-5x"
CLICK("lens_apply")
R.outcome = PLUGIN.state.last_lens_outcome
R.message = PLUGIN.state.last_message
for i = 1, 50 do if imgs[1].exif_lens ~= R.before then break end dt.control.sleep(100) end
R.after = imgs[1].exif_lens
R.after2 = imgs[2].exif_lens
CLICK("lens_undo")
R.undo_message = PLUGIN.state.last_message
for i = 1, 50 do if imgs[1].exif_lens ~= R.after then break end dt.control.sleep(100) end
R.undone = imgs[1].exif_lens
'''
    res = run_darktable(work, body, bridge_dir=BRIDGE_DIR)
    rep = res.report
    assert rep['ok'], rep
    assert rep['message'] == 'lens data written to 2 image(s)', rep
    assert 'l1.jpg: updated' in rep['outcome'] and 'l2.jpg: updated' in rep['outcome']
    assert 'Laowa 25mm' in rep['after'] and 'Laowa 25mm' in rep['after2'], rep
    assert rep['undo_message'] == 'lens data restored', rep
    assert rep['before'] == 'Original Macro 100', rep
    assert rep['undone'] == rep['before'], rep
    assert [src.read_bytes() for src in sources] == originals  # byte for byte
    no_leftovers(res, work)


def test_two_brackets_aligned_frames_and_check(tmp_path):
    """One selection holding two brackets (generated, capture times 31 s apart, written by
    exiftool) and a lone frame, with "import aligned frames" on: two results, each leading a
    group of exactly its own frames and aligned frames, the lone frame untouched. Then
    "check bracket" on the first bracket: its coverage map joins that group."""
    folder = tmp_path / "shoot d'été"
    b0, b1 = stack_shoot(folder, counts=(3, 3), size=(160, 240))
    lone = blank(folder / 'lone.tif', (160, 240))
    write_tags({lone: when(200)})
    frames = [*b0, *b1, lone]
    body = f'''
local imgs = IMPORT_ALL({{ {", ".join(lua_string(p) for p in frames)} }})
local aligned = PLUGIN.widgets.options.aligned_frames
aligned.value = true
aligned.clicked_callback(aligned)
dt.gui.selection(imgs)
CLICK("stack_button")
R.message = PLUGIN.state.last_message
R.outcome = PLUGIN.state.last_outcome
R.manifest = PLUGIN.state.last_manifest
R.results = {{}}
for i, r in ipairs(PLUGIN.state.last_results or {{}}) do R.results[i] = r.filename end
dt.gui.selection({{imgs[1], imgs[2], imgs[3]}})
CLICK("check_button")
R.check_message = PLUGIN.state.last_message
R.check_outcome = PLUGIN.state.last_outcome
R.check_manifest = PLUGIN.state.last_manifest
'''
    res = run_darktable(tmp_path, body, bridge_dir=BRIDGE_DIR)
    rep = res.report
    assert rep['ok'], (rep, res.log[-3000:])
    assert rep['results'] == ['b0_000_stacked.tif', 'b1_000_stacked.tif'], rep
    assert rep['message'] == (
        'focus stack: imported 2 results: b0_000_stacked.tif, b1_000_stacked.tif'
    )
    assert rep['outcome'].split('\n')[:2] == [
        '2 brackets: 3, 3 frames',
        'not stacked: lone.tif (a single frame, not a bracket)',
    ], rep['outcome']
    m = rep['manifest']
    assert m['kind'] == 'batch' and 'aligned_frames' not in m['options']
    assert [st['aligned_frames'] for st in m['stacks']] == [
        str(folder / 'b0_000_stacked_aligned'),
        str(folder / 'b1_000_stacked_aligned'),
    ]
    rows = db_rows(res.library, 'SELECT id, group_id, filename FROM images')
    ids = {name: (i, g) for i, g, name in rows}
    tagnames = dict(db_rows(res.data_db, 'SELECT id, name FROM tags'))
    tagged = {}
    for imgid, tagid in db_rows(res.library, 'SELECT imgid, tagid FROM tagged_images'):
        tagged.setdefault(imgid, set()).add(tagnames.get(tagid))
    for k, bracket in enumerate((b0, b1)):
        result = f'b{k}_000_stacked.tif'
        rid = ids[result][0]
        aligned = [f'{f.stem}_aligned.tif' for f in bracket]
        members = sorted(name for name, (_, g) in ids.items() if g == rid)
        expected = [result, *(f.name for f in bracket), *aligned]
        if k == 0:
            expected.append('b0_000_coverage.png')
        assert members == sorted(expected), (k, rows)
        assert 'focus stack|stacked' in tagged[rid]
        for f in bracket:
            assert 'focus stack|source' in tagged[ids[f.name][0]]
        for name in aligned:
            assert 'focus stack|aligned' in tagged[ids[name][0]]
            assert (folder / f'b{k}_000_stacked_aligned' / name).is_file()
        check_result_file(folder / result, bracket[0])
    lone_id, lone_group = ids['lone.tif']
    assert lone_group == lone_id
    assert not [t for t in tagged.get(lone_id, ()) if t.startswith('focus stack')]
    # the check: the original files, the findings in the module, the map in the group
    cm = rep['check_manifest']
    assert cm['kind'] == 'check' and cm['frames'] == [str(f) for f in b0]
    assert cm['coverage_map'] == str(folder / 'b0_000_coverage.png')
    assert (folder / 'b0_000_coverage.png').read_bytes()[:4] == b'\x89PNG'
    assert 'focus stack|coverage' in tagged[ids['b0_000_coverage.png'][0]]
    assert rep['check_outcome'].split('\n')[-1] == 'coverage map: b0_000_coverage.png'
    assert rep['check_message'].startswith('check bracket: order: ')
    no_leftovers(res, tmp_path)


# --- the README's pictures (FOCUSBRIDGE_SCREENSHOT=1) ------------------------------------

SHOT_BRIDGE = Path(os.environ.get('FOCUSBRIDGE_SCREENSHOT_BRIDGE', '/usr/local/bin/focusbridge'))
# picture name -> (file, crop of the 1280x1024 screen, palette colours)
SHOTS = {
    'module': (ROOT / 'docs' / 'screenshot-module.png', '384x530+896+292', 128),
    'result': (ROOT / 'docs' / 'screenshot-result.png', '1280x900+0+0', 128),
}
# thumbnails three a row with their overlays (group icon, stars) always shown; the image
# information module lists only what matters here (no paths of the machine)
INFO_FIELDS = (
    'filmroll,|image id,group id,filename,|version,|full path,|local copy,'
    '|import timestamp,|change timestamp,|export timestamp,|print timestamp,|flags,'
    'model,maker,lens,aperture,exposure,|exposure bias,focal length,|focus distance,'
    'ISO,|datetime,width,height,|export width,|export height,title,|description,'
    '|creator,|publisher,|rights,|notes,|version name,|image id,|latitude,|longitude,'
    '|elevation,tags,|categories'
)
SHOT_CONF = {
    'plugins/lighttable/images_in_row': '3',
    'plugins/lighttable/overlays/1/1': '3',
    'plugins/lighttable/overlays/1/2': '3',
    'plugins/lighttable/metadata_view/visible': INFO_FIELDS,
}


@pytest.mark.skipif(
    os.environ.get('FOCUSBRIDGE_SCREENSHOT') != '1',
    reason='FOCUSBRIDGE_SCREENSHOT=1 retakes the README pictures',
)
def test_screenshots(tmp_path, test_data):
    """docs/screenshot-module.png: the module with a bracket selected, the bridge found on
    PATH; docs/screenshot-result.png: the lighttable afterwards, the result selected among
    its sources (all in one group), its tags in the tagging and image information modules."""
    if not SHOT_BRIDGE.is_file():
        pytest.fail(
            f'{SHOT_BRIDGE} missing: install focusbridge there (a wrapper that execs '
            f'{BRIDGE_DIR / "focusbridge"} will do) or set FOCUSBRIDGE_SCREENSHOT_BRIDGE'
        )
    sources = make_bracket(
        test_data, tmp_path / 'pcb bracket', [f'pcb_{i}.jpg' for i in range(1, 6)]
    )
    body = f'''
local imgs = IMPORT_ALL({{ {", ".join(lua_string(p) for p in sources)} }})
dt.tags.attach(dt.tags.create("subject|pcb"), imgs[1])
dt.tags.attach(dt.tags.create("macro"), imgs[2])
dt.gui.selection(imgs)
R.label = PLUGIN.widgets.bridge_label.label
local lib = dt.gui.libs["focus_stack"]
pcall(function() lib.expanded = true end)
dt.control.sleep(800)
SHOT("module")
CLICK("stack_button")
R.message = PLUGIN.state.last_message
pcall(function() lib.expanded = false end)
pcall(function() dt.gui.libs.metadata_view.expanded = true end)
pcall(function() dt.gui.libs.tagging.expanded = true end)
dt.gui.selection({{PLUGIN.state.last_result}})
dt.control.sleep(1500)
SHOT("result")
'''
    taken, problems = {}, []

    def shoot(started, adir, name):
        try:
            move_pointer(started, 400, 40)  # over the empty top bar: no hover, no tooltip
            time.sleep(1.0)
            raw = adir / f'{name}.png'
            subprocess.run(
                ['import', '-window', 'root', str(raw)],
                env=x_env(started),
                check=True,
                capture_output=True,
                timeout=30,
            )
            out, crop, colours = SHOTS[name]
            subprocess.run(
                [
                    'convert',
                    str(raw),
                    '-crop',
                    crop,
                    '+repage',
                    '-strip',
                    '-colors',
                    str(colours),
                    str(out),
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            taken[name] = out
        except Exception as e:  # noqa: BLE001 -- reported below, darktable must go on
            problems.append(f'{name}: {e!r}')

    res = run_darktable(
        tmp_path,
        body,
        bridge_dir=SHOT_BRIDGE.parent,
        on_shot=shoot,
        extra_conf=SHOT_CONF,
        env={'PATH': f'{SHOT_BRIDGE.parent}:/usr/bin:/bin'},
    )
    rep = res.report
    assert rep['ok'] and not problems, (rep, problems)
    assert rep['label'] == f'focusbridge: {SHOT_BRIDGE}', rep
    assert rep['message'] == 'focus stack: imported pcb_1_stacked.tif', rep
    assert set(taken) == set(SHOTS)
    for out in taken.values():
        assert out.stat().st_size < 300_000, (out, out.stat().st_size)
