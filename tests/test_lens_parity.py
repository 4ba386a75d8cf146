"""`focusbridge lens set` and a run-job lens job (the darktable plugin's way) write the same tags.

Two copies of the same real camera files, one rewritten by each path from the same input; then
every tag exiftool reads (`-j -G1 -a`), file-system names and times aside, must be equal. The
run-job path used to skip LensInfo when only a focal length was given, which this catches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_camera_files

REPO = Path(__file__).resolve().parents[1]
FILES = ['Canon.jpg', 'CanonRaw.cr2']
# tags that name or date the file itself, not its content
FILE_SYSTEM = {'SourceFile', 'System:Directory', 'System:FileName'}

pytestmark = pytest.mark.skipif(shutil.which('exiftool') is None, reason='needs exiftool')

CASES = {  # preset, fields, the LensInfo exiftool then prints
    # a focal length and no lens info: LensInfo '100 100 undef undef' comes from it
    'fields': (
        None,
        {
            'make': 'Venus Optics',
            'model': 'Laowa 100mm f/2.8 2X Ultra Macro APO',
            'focal_length': 100,
            'aperture': 8,
            'serial': '12345',
        },
        '100mm f/?',
    ),
    # a catalogue entry with one field overridden
    'preset': ('canon-mp-e-65', {'aperture': 11}, '65mm f/2.8'),
}


def cli_args(preset: str | None, fields: dict) -> list[str]:
    args = ['--preset', preset] if preset else []
    for name, value in fields.items():
        args += ['--' + name.replace('_', '-'), str(value)]
    return args


def focusbridge(*args: str, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'pybridge.cli', *map(str, args)],
        cwd=REPO,
        env=dict(os.environ, FOCUSBRIDGE_UNDO_DIR=str(store)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def all_tags(path: Path) -> dict:
    done = subprocess.run(
        ['exiftool', '-j', '-G1', '-a', str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)[0]
    return {
        k: v
        for k, v in found.items()
        if k not in FILE_SYSTEM and not (k.startswith('System:File') and k.endswith('Date'))
    }


@pytest.mark.parametrize('case', CASES)
def test_cli_and_run_job_write_the_same_tags(test_data, tmp_path, case):
    preset, fields, lens_info = CASES[case]
    by_cli = copy_camera_files(test_data, tmp_path / 'cli', FILES)
    by_job = copy_camera_files(test_data, tmp_path / 'run-job', FILES)
    before = {name: all_tags(by_cli / name) for name in FILES}

    done = focusbridge(
        'lens',
        'set',
        *cli_args(preset, fields),
        *[by_cli / n for n in FILES],
        store=tmp_path / 'undo-cli',
    )
    assert done.returncode == 0, done.stderr

    manifest = tmp_path / 'job.json'
    status = tmp_path / 'status.json'
    manifest.write_text(
        json.dumps(
            {
                'version': 1,
                'kind': 'lens',
                'files': [str(by_job / n) for n in FILES],
                'action': 'set',
                'preset': preset,
                'dry_run': False,
                'fields': fields,
                'status_file': str(status),
            }
        )
    )
    done = focusbridge('run-job', manifest, store=tmp_path / 'undo-job')
    assert done.returncode == 0, done.stderr
    result = json.loads(status.read_text())
    assert result['ok'], result
    assert [r['outcome'] for r in result['results']] == ['updated'] * len(FILES), result

    for name in FILES:
        cli, job = all_tags(by_cli / name), all_tags(by_job / name)
        assert cli != before[name], f'{name}: lens set changed nothing'
        differ = {
            k: (cli.get(k), job.get(k)) for k in cli.keys() | job.keys() if cli.get(k) != job.get(k)
        }
        assert not differ, f'{name}: lens set vs run-job: {differ}'
        for group in ('ExifIFD', 'XMP-exifEX', 'XMP-aux'):
            assert cli.get(f'{group}:LensInfo') == lens_info, (name, group)
        assert cli['ExifIFD:LensModel'] and cli['ExifIFD:FocalLength'], name
