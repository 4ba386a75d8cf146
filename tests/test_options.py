"""One options model: the command line, the manifest, the API and the JSON Schema agree."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jsonschema
import pytest

from pybridge.errors import OptionError
from pybridge.job import manifest_schema
from pybridge.options import StackOptions, StackOutputOptions, split_manifest_options

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def test_every_engine_option_is_on_the_command_line_with_its_default():
    from pybridge.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["stack", "a.tif", "b.tif", "-o", "o.tif"])
    assert StackOptions.from_args(args) == StackOptions()
    help_text = subprocess.run(
        [*FOCUSBRIDGE, "stack", "--help"], capture_output=True, text=True
    ).stdout
    for f in dataclasses.fields(StackOptions):
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        assert flag in help_text, flag


def test_command_line_values_reach_the_options():
    from pybridge.cli import build_parser

    args = build_parser().parse_args(
        [
            "stack",
            "a.tif",
            "b.tif",
            "-o",
            "o.tif",
            "--no-align",
            "--method",
            "depthmap",
            "--reference",
            "-1",
            "--bit-depth",
            "8",
            "--no-gain",
            "--crop",
            "--max-pixels",
            "1.5",
            "--interpolation",
            "lanczos",
            "--align-model",
            "affine",
            "--no-halo-suppression",
        ]
    )
    assert StackOptions.from_args(args) == StackOptions(
        method="depthmap",
        align=False,
        align_model="affine",
        interpolation="lanczos",
        reference=-1,
        match_gain=False,
        halo_suppression=False,
        crop=True,
        bit_depth=8,
        max_pixels=1_500_000,
    )


@pytest.mark.parametrize(
    "values",
    [
        {"bit_depth": "16"},
        {"bit_depth": True},
        {"bit_depth": 12},
        {"overwrite": "false"},
        {"reference": "centre"},
        {"reference": 1.5},
        {"method": "max"},
        {"max_pixels": -1},
        {"align": 1},
        {"interpolation": None},
    ],
)
def test_api_and_manifest_refuse_wrong_types_alike(values):
    with pytest.raises(OptionError) as err:
        StackOptions(**values)
    assert next(iter(values)) in str(err.value)
    with pytest.raises(OptionError):
        split_manifest_options(values)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_manifest(options=values), manifest_schema())


def _manifest(**extra) -> dict:
    return {"version": 1, "frames": ["/a.tif", "/b.tif"], "output": "/o.tif", **extra}


def test_schema_accepts_every_option_at_its_default_and_the_plugins_shape():
    defaults = {
        **{f.name: f.default for f in dataclasses.fields(StackOptions)},
        **{f.name: f.default for f in dataclasses.fields(StackOutputOptions)},
    }
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(_manifest(options=defaults), schema)
    assert split_manifest_options(defaults) == (StackOptions(), StackOutputOptions())
    plugin_like = _manifest(
        kind="stack",
        sources=["/a.cr3", "/b.cr3"],
        options={
            "method": "pyramid",
            "align": True,
            "depth_map": True,
            "format": "tiff",
            "reference": "middle",
            "overwrite": False,
            "crop": False,
            "metadata": True,
        },
        status_file="/t/status.json",
        progress_file="/t/p.jsonl",
        cancel_file="/t/cancel",
        pid_file="/t/pid",
    )
    jsonschema.validate(plugin_like, schema)
    lens = {
        "version": 1,
        "kind": "lens",
        "files": ["/a.cr3"],
        "action": "set",
        "preset": None,
        "dry_run": False,
        "fields": {"make": "Laowa", "focal_length": 100, "lens_info": [100, 100, 2.8, 2.8]},
    }
    jsonschema.validate(lens, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**lens, "fields": {"focal_length": "100"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_manifest(options={"speed": "fast"}), schema)


def test_run_job_and_schema_agree_on_bad_manifests(tmp_path):
    """What the schema refuses, run-job refuses too, before any work."""
    bad = [
        _manifest(options={"bit_depth": "16"}),
        _manifest(kind="stacks"),
        _manifest(status_file=3),
        _manifest(options=[]),
        _manifest(outptu="/x.tif"),
        {"version": 1, "kind": "lens", "files": ["/x.jpg"], "fields": {"aperture": "8"}},
        {"version": 1, "kind": "lens", "files": ["/x.jpg"], "action": "redo"},
    ]
    for i, manifest in enumerate(bad):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(manifest, manifest_schema())
        path = tmp_path / f"job{i}.json"
        path.write_text(json.dumps(manifest))
        done = subprocess.run(
            [*FOCUSBRIDGE, "run-job", str(path)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, (manifest, done.stderr)
        assert done.stderr.startswith("focusbridge: error: ") and "internal" not in done.stderr


def test_the_engine_imports_nothing_from_exif():
    """The engine knows nothing of metadata: exif/ is composed in by pybridge/app.py."""
    code = (
        "import sys, pybridge.pipeline, pybridge.frames, pybridge.align, pybridge.fuse, "
        "pybridge.write; print(sorted(m for m in sys.modules if m.split('.')[0] == 'exif'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
