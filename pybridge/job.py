"""`focusbridge run-job MANIFEST`: the darktable plugin's way in.

Every file name travels inside the JSON manifest, never on a command line, so nothing a user
named a file can reach a shell. The manifest's schema is in docs/ARCHITECTURE.md. Two kinds of
job: "stack" (the default) and "lens" (batch lens rewrite / undo).

Results go three ways: JSON progress lines on stdout (and appended to `progress_file`), the
exit status, and `status_file`, written atomically at the very end so a poller that sees it
knows the job is over.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_output
from .errors import EXIT_ERROR, Cancelled, ManifestError, describe_failure, one_line, print_failure
from .options import FORMATS, OptionError, Options, option, options_schema, split_manifest_options
from .signals import note_late_cancel

KINDS = ("stack", "lens")
_PATH = {"type": "string", "minLength": 1}
_PATHS = {"type": "array", "items": _PATH}
_OPTIONAL_PATH = {"type": ["string", "null"], "minLength": 1}
_RUN_FILES = ("status_file", "progress_file", "cancel_file", "pid_file")


def manifest_schema() -> dict:
    """JSON Schema of a job manifest, made from the same definitions run-job checks with."""
    common = {"version": {"const": 1}, **{k: _OPTIONAL_PATH for k in _RUN_FILES}}
    stack = {
        "type": "object",
        "required": ["frames", "output"],
        "additionalProperties": False,
        "properties": {
            **common,
            "kind": {"const": "stack"},
            "frames": {**_PATHS, "minItems": 2},
            "sources": _PATHS,
            "output": _PATH,
            "options": options_schema(),
        },
    }
    lens = {
        "type": "object",
        "required": ["kind", "files"],
        "additionalProperties": False,
        "properties": {
            **common,
            "kind": {"const": "lens"},
            "files": _PATHS,
            **LensJob.schema()["properties"],
            "fields": LensFields.schema(),
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "focusbridge run-job manifest",
        "oneOf": [stack, lens],
    }


def load_manifest(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(path, "no such file") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(path, f"not a readable JSON job manifest ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise ManifestError(path, "a job manifest must be a JSON object")
    if data.get("version", 1) != 1 or isinstance(data.get("version"), bool):
        raise ManifestError(path, f"unsupported manifest version {data.get('version')!r}")
    if data.get("kind", "stack") not in KINDS:
        raise ManifestError(path, f"unknown job kind {data.get('kind')!r} (stack or lens)")
    kind = data.get("kind", "stack")
    allowed = {"version", "kind", *_RUN_FILES} | (
        {"frames", "sources", "output", "options"}
        if kind == "stack"
        else {"files", "fields", *LensJob.names()}
    )
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ManifestError(path, f"unknown key(s) for a {kind} job: {', '.join(unknown)}")
    for key in _RUN_FILES:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ManifestError(path, f"'{key}' must be a file path or null")
    return data


def _string_list(manifest: dict, key: str, path: Path, required: bool = True) -> list[str] | None:
    value = manifest.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ManifestError(path, f"'{key}' must be a list of file paths")
    return value


def _check_side_files(manifest: dict) -> None:
    """The files run-job itself writes (status, progress, pid) must be none of the files the
    job reads or writes, whatever else is wrong with the manifest: checked first, so that not
    even an error status lands on a photograph."""
    from .atomic import check_outputs
    from .pipeline import side_path

    side = [
        (key, Path(manifest[key]))
        for key in ("status_file", "progress_file", "pid_file")
        if manifest.get(key)
    ]
    named = [
        ("input", Path(v))
        for key in ("frames", "sources", "files")
        for v in (manifest.get(key) if isinstance(manifest.get(key), list) else [])
        if isinstance(v, str) and v
    ]
    output = manifest.get("output")
    if isinstance(output, str) and output:
        for suffix in [Path(output).suffix] + [s for s, *_ in FORMATS.values()]:
            out = Path(output).with_suffix(suffix) if suffix else Path(output)
            named += [
                ("result", out),
                ("depth map", side_path(out, "depth")),
                ("confidence map", side_path(out, "confidence")),
            ]
    check_outputs(side, named, overwrite=True)


def _write_status(status_file: str | None, status) -> None:
    """Whole or not at all, so a poller that sees the file can trust it."""
    if status_file:
        with atomic_output(Path(status_file), overwrite=True) as tmp:
            tmp.write_text(json.dumps(status), encoding="utf-8")


def _run_stack(manifest: dict, path: Path, progress, cancel) -> dict:
    from .app import stack
    from .pipeline import side_path

    frames = _string_list(manifest, "frames", path)
    sources = _string_list(manifest, "sources", path, required=False)
    output = manifest.get("output")
    if not isinstance(output, str) or not output:
        raise ManifestError(path, "'output' must be a file path")
    try:
        options, outputs = split_manifest_options(manifest.get("options"))
    except OptionError as exc:
        raise ManifestError(path, str(exc)) from None
    out = Path(output)
    if outputs.format and out.suffix.lower() not in FORMATS[outputs.format]:
        out = out.with_suffix(FORMATS[outputs.format][0])
    result = stack(
        frames,
        out,
        options,
        depth_map=side_path(out, "depth") if outputs.depth_map else None,
        confidence_map=side_path(out, "confidence") if outputs.confidence_map else None,
        metadata=outputs.metadata,
        sources=sources,
        progress=progress,
        cancel=cancel,
    )
    return {
        "output": str(result.output),
        "depth_map": str(result.depth_map_path) if result.depth_map_path else None,
        "metadata": result.metadata_written,
        "warnings": result.warnings,
        "frames": [t.to_dict() for t in result.transforms],
    }


@dataclass
class LensJob(Options):
    action: str = option("set", "set: write the lens tags; undo: restore", choices=("set", "undo"))
    preset: str | None = option(None, "lens catalogue name (focusbridge lens set --list-presets)")
    dry_run: bool = option(False, "report what would change, write nothing")


@dataclass
class LensFields(Options):
    """The `fields` of a lens job: what `focusbridge lens set` takes as options."""

    make: str | None = option(None, "lens make, e.g. Venus Optics")
    model: str | None = option(None, "lens model, e.g. Laowa 100mm f/2.8 2X Ultra Macro APO")
    focal_length: float | None = option(None, "focal length in mm", minimum=0)
    aperture: float | None = option(None, "f-number used", minimum=0)
    lens_info: str | list | None = option(
        None, 'minFocal maxFocal minF@min minF@max, as "100 100 2.8 2.8" or a list'
    )
    serial: str | None = option(None, "lens serial number")
    canon_lens_type: int | None = option(None, "Canon LensType id (Canon maker notes only)")


def _run_lens(manifest: dict, path: Path, progress, cancel) -> dict:
    """Lens rewrite or undo on the original files (the plugin's lens section)."""
    from exif.lens import lens_spec, set_lens, undo_lens

    files = [Path(f) for f in _string_list(manifest, "files", path)]
    try:
        job = LensJob.from_json({k: v for k, v in manifest.items() if k in LensJob.names()})
        fields = vars(LensFields.from_json(manifest.get("fields"), "fields"))
    except OptionError as exc:
        raise ManifestError(path, str(exc)) from None
    progress("lens", count=len(files), fraction=0.1)
    if job.action == "undo":
        results = []
        for f in files:  # one at a time, so a cancel stops between files
            if cancel is not None and cancel():
                raise Cancelled()
            r = undo_lens([f])[0]
            results.append(
                {
                    "file": str(r.path),
                    "outcome": "restored" if r.undone else "unchanged",
                    "message": r.error or ("" if r.undone else "nothing to undo"),
                }
                if r.ok
                else {"file": str(r.path), "outcome": "error", "message": r.error}
            )
    else:
        report = set_lens(
            files,
            lens_spec(job.preset, **fields),
            dry_run=job.dry_run,
            should_stop=cancel,
        )
        results = []
        for r in report.results:
            if not r.ok:
                results.append({"file": str(r.path), "outcome": "error", "message": r.error})
                continue
            message = "; ".join(f"{tag}: {old or '-'} -> {new}" for tag, old, new in r.changes)
            if r.not_writable:
                message += (
                    ("; " if message else "")
                    + "not in this file's maker notes: "
                    + ", ".join(r.not_writable)
                )
            results.append(
                {
                    "file": str(r.path),
                    "outcome": "updated" if r.changes else "unchanged",
                    "message": message,
                }
            )
    ok = all(r["outcome"] != "error" for r in results)
    failed = [r for r in results if r["outcome"] == "error"]
    error = (
        None
        if ok
        else (
            f"{len(failed)} of {len(results)} files failed; first: "
            f"{failed[0]['file']}: {failed[0]['message']}"
        )
    )
    return {"ok": ok, "error": error, "results": results}


def _write_pid(pid_file: str | None) -> None:
    """The bridge's own pid, so the plugin can stop it on any platform (no shell's `$!`)."""
    if pid_file:
        _write_status(pid_file, os.getpid())


def run_job(manifest_path: Path) -> int:
    """Run one job; returns the process exit status (0, 1, or 130 when cancelled)."""
    from .progress import JsonLines

    status_file = None
    try:
        manifest = load_manifest(manifest_path)
        kind = manifest.get("kind", "stack")
        runner = {"stack": _run_stack, "lens": _run_lens}[kind]  # load_manifest checked it
        _check_side_files(manifest)
        status_file = manifest.get("status_file")
        progress = JsonLines(sys.stdout, manifest.get("progress_file"))
        cancel_file = manifest.get("cancel_file")
        cancel = (lambda: os.path.exists(cancel_file)) if cancel_file else None
        _write_pid(manifest.get("pid_file"))
        outcome = runner(manifest, manifest_path, progress, cancel)
        ok = outcome.pop("ok", True)
        status = {"ok": ok, "error": outcome.pop("error", None), "cancelled": False, **outcome}
        _write_status(status_file, status)
        progress(
            "done",
            fraction=1.0,
            **{k: v for k, v in outcome.items() if k in ("output", "depth_map")},
        )
        note_late_cancel()
        return 0 if ok else EXIT_ERROR
    except BaseException as exc:
        code, message = describe_failure(exc)
        if code is None:
            raise
        _write_status(
            status_file,
            {
                "ok": False,
                "output": None,
                "error": message,
                "cancelled": isinstance(exc, (Cancelled, KeyboardInterrupt)),
            },
        )
        print_failure(code, message)
        return code
