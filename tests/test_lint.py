"""Linters as tests, so the README's one test command (and CI) keeps the code clean:
ruff (lint + format check, settings in pyproject.toml). luacheck runs in
test_darktable_plugin_unit.py beside the plugin's other checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT


def _ruff() -> str:
    # the project's environment first (dev group pins ruff), then PATH
    beside = Path(sys.executable).with_name('ruff')
    tool = str(beside) if beside.exists() else shutil.which('ruff')
    if not tool:
        pytest.fail('ruff is required for this test: uv sync --group dev')
    return tool


@pytest.mark.parametrize('args', [['check'], ['format', '--check']], ids=['lint', 'format'])
def test_ruff_is_clean(args):
    done = subprocess.run(
        [_ruff(), *args, '--no-cache', '.'],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
