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
from pathlib import Path

from .errors import Cancelled, StackError, one_line

_FORMAT_SUFFIXES = {"tiff": (".tif", ".tiff"), "jpeg": (".jpg", ".jpeg"), "png": (".png",)}


def _choice(*allowed):
    def check(v):
        return isinstance(v, str) and v in allowed, "one of " + ", ".join(map(repr, allowed))
    return check


def _flag(v):
    return isinstance(v, bool), "true or false"


def _flag_or_null(v):
    return v is None or isinstance(v, bool), "true, false or null"


def _int_in(*allowed):
    def check(v):
        return (isinstance(v, int) and not isinstance(v, bool) and v in allowed,
                " or ".join(map(str, allowed)))
    return check


def _reference(v):
    ok = (isinstance(v, int) and not isinstance(v, bool)) or v in ("middle", "first", "last")
    return ok, "'middle', 'first', 'last' or a frame number"


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number >= 0"


def _stack_options():
    from .align import INTERPOLATIONS, MODELS
    from .fuse import METHODS
    # JSON types are checked, not truthiness: "false" (a string) is an error, not true
    return {"method": _choice(*METHODS), "align": _flag,
            "align_model": _choice(*(m for m in MODELS if m != "none")),
            "interpolation": _choice(*INTERPOLATIONS), "reference": _reference,
            "match_gain": _flag, "halo_suppression": _flag, "crop": _flag,
            "depth_map": _flag, "confidence_map": _flag, "format": _choice(*_FORMAT_SUFFIXES),
            "bit_depth": _int_in(8, 16), "overwrite": _flag, "metadata": _flag_or_null,
            "max_pixels": _count}


class ManifestError(StackError):
    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")


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
    for key in ("status_file", "progress_file", "cancel_file", "pid_file"):
        _optional_path(data, key, path)
    return data


def _optional_path(manifest: dict, key: str, path: Path) -> str | None:
    value = manifest.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ManifestError(path, f"'{key}' must be a file path or null")
    return value


def _string_list(manifest: dict, key: str, path: Path, required: bool = True) -> list[str] | None:
    value = manifest.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ManifestError(path, f"'{key}' must be a list of file paths")
    return value


def _checked(manifest: dict, key: str, table: dict, path: Path) -> dict:
    """`manifest[key]` as a dict whose every entry passes its type check in `table`."""
    value = manifest.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(path, f"'{key}' must be a JSON object")
    unknown = set(value) - set(table)
    if unknown:
        raise ManifestError(path, f"unknown {key} entr{'y' if len(unknown) == 1 else 'ies'}: "
                                  f"{', '.join(sorted(unknown))}")
    for name, v in value.items():
        ok, expected = table[name](v)
        if not ok:
            raise ManifestError(path, f"{key} '{name}' must be {expected}, not {json.dumps(v)}")
    return value


def _check_side_files(manifest: dict) -> None:
    """The files run-job itself writes (status, progress, pid) must be none of the files the
    job reads or writes, whatever else is wrong with the manifest: checked first, so that not
    even an error status lands on a photograph."""
    from .pipeline import check_outputs, side_path

    side = [(key, Path(manifest[key])) for key in ("status_file", "progress_file", "pid_file")
            if manifest.get(key)]
    named = [("input", Path(v)) for key in ("frames", "sources", "files")
             for v in (manifest.get(key) if isinstance(manifest.get(key), list) else [])
             if isinstance(v, str) and v]
    output = manifest.get("output")
    if isinstance(output, str) and output:
        for suffix in [Path(output).suffix] + [s for s, *_ in _FORMAT_SUFFIXES.values()]:
            out = Path(output).with_suffix(suffix) if suffix else Path(output)
            named += [("result", out), ("depth map", side_path(out, "depth")),
                      ("confidence map", side_path(out, "confidence"))]
    check_outputs(side, named, overwrite=True)


def _write_status(status_file: str | None, status: dict) -> None:
    if not status_file:
        return
    target = Path(status_file)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, target)


def _run_stack(manifest: dict, path: Path, progress, cancel) -> dict:
    from .pipeline import side_path, stack

    frames = _string_list(manifest, "frames", path)
    sources = _string_list(manifest, "sources", path, required=False)
    output = manifest.get("output")
    if not isinstance(output, str) or not output:
        raise ManifestError(path, "'output' must be a file path")
    options = _checked(manifest, "options", _stack_options(), path)
    out = Path(output)
    fmt = options.get("format")
    if fmt and out.suffix.lower() not in _FORMAT_SUFFIXES[fmt]:
        out = out.with_suffix(_FORMAT_SUFFIXES[fmt][0])
    depth = side_path(out, "depth") if options.get("depth_map") else None
    confidence = side_path(out, "confidence") if options.get("confidence_map") else None
    align = options.get("align", True)
    if align is True and options.get("align_model"):
        align = options["align_model"]
    result = stack(frames, out, method=options.get("method", "pyramid"), align=align,
                   reference=options.get("reference", "middle"),
                   match_gain=options.get("match_gain", True),
                   interpolation=options.get("interpolation", "cubic"),
                   halo_suppression=options.get("halo_suppression", True),
                   crop=options.get("crop", False), depth_map=depth, confidence_map=confidence,
                   bit_depth=options.get("bit_depth", 16), overwrite=options.get("overwrite", False),
                   metadata=options.get("metadata", None), sources=sources,
                   max_pixels=options.get("max_pixels"), progress=progress, cancel=cancel)
    return {"output": str(result.output),
            "depth_map": str(result.depth_map_path) if result.depth_map_path else None,
            "metadata": result.metadata_written,
            "warnings": result.warnings,
            "frames": [t.to_dict() for t in result.transforms]}


def _lens_fields():
    def text(v):
        return isinstance(v, str), "a string"

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"

    def lens_info(v):
        ok = isinstance(v, str) or (isinstance(v, list) and all(
            isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in v))
        return ok, 'a string like "100 100 2.8 2.8" or a list of numbers'

    def lens_type(v):
        return isinstance(v, int) and not isinstance(v, bool), "a whole number"
    return {"make": text, "model": text, "serial": text, "focal_length": number,
            "aperture": number, "lens_info": lens_info, "canon_lens_type": lens_type}


def _run_lens(manifest: dict, path: Path, progress, cancel) -> dict:
    """Lens rewrite or undo on the original files (the plugin's lens section)."""
    from exif.lens import LensSpec, format_lens_info, preset, set_lens, undo_lens
    from exif.tool import ExifCancelled, ExifError

    files = [Path(f) for f in _string_list(manifest, "files", path)]
    action = manifest.get("action", "set")
    if action not in ("set", "undo"):
        raise ManifestError(path, f"unknown lens action {action!r} (set or undo)")
    fields = _checked(manifest, "fields", _lens_fields(), path)
    if not isinstance(manifest.get("dry_run", False), bool):
        raise ManifestError(path, "'dry_run' must be true or false")
    if manifest.get("preset") is not None and not isinstance(manifest["preset"], str):
        raise ManifestError(path, "'preset' must be a lens preset name")
    progress("lens", count=len(files), fraction=0.1)
    try:
        if action == "undo":
            results = []
            for f in files:       # one at a time, so a cancel stops between files
                if cancel is not None and cancel():
                    raise Cancelled()
                r = undo_lens([f])[0]
                results.append({"file": str(r.path), "outcome": "restored" if r.undone else "unchanged",
                                "message": r.error or ("" if r.undone else "nothing to undo")}
                               if r.ok else {"file": str(r.path), "outcome": "error", "message": r.error})
        else:
            spec = preset(manifest["preset"]) if manifest.get("preset") else LensSpec()
            fields = dict(fields)
            if isinstance(fields.get("lens_info"), list):
                fields["lens_info"] = format_lens_info(fields["lens_info"])
            spec = spec.merged(LensSpec(**{k: v for k, v in fields.items() if v not in ("", None)}))
            report = set_lens(files, spec, dry_run=manifest.get("dry_run", False),
                              should_stop=cancel)
            results = []
            for r in report.results:
                if not r.ok:
                    results.append({"file": str(r.path), "outcome": "error", "message": r.error})
                    continue
                message = "; ".join(f"{tag}: {old or '-'} -> {new}" for tag, old, new in r.changes)
                if r.not_writable:
                    message += (("; " if message else "") + "not in this file's maker notes: "
                                + ", ".join(r.not_writable))
                results.append({"file": str(r.path),
                                "outcome": "updated" if r.changes else "unchanged",
                                "message": message})
    except ExifCancelled:
        raise Cancelled() from None
    except ExifError as exc:
        raise StackError(str(exc)) from None
    ok = all(r["outcome"] != "error" for r in results)
    failed = [r for r in results if r["outcome"] == "error"]
    error = None if ok else (f"{len(failed)} of {len(results)} files failed; first: "
                             f"{failed[0]['file']}: {failed[0]['message']}")
    return {"ok": ok, "error": error, "results": results}


def _write_pid(pid_file: str | None) -> None:
    """The bridge's own pid, so the plugin can stop it on any platform (no shell's `$!`)."""
    if pid_file:
        _write_status(pid_file, os.getpid())


def run_job(manifest_path: Path) -> int:
    """Run one job; returns the process exit status (0, 1, or 130 when cancelled)."""
    from .cli import EXIT_CANCELLED, EXIT_ERROR, describe_failure, note_late_cancel, print_failure
    from .progress import JsonLines

    status_file = None
    try:
        manifest = load_manifest(manifest_path)
        kind = manifest.get("kind", "stack")
        runner = {"stack": _run_stack, "lens": _run_lens}.get(kind) if isinstance(kind, str) else None
        if runner is None:
            raise ManifestError(manifest_path, f"unknown job kind {kind!r} (stack or lens)")
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
        progress("done", fraction=1.0, **{k: v for k, v in outcome.items()
                                           if k in ("output", "depth_map")})
        note_late_cancel()
        return 0 if ok else EXIT_ERROR
    except BaseException as exc:
        code, message = describe_failure(exc)
        if code is None:
            raise
        _write_status(status_file, {"ok": False, "output": None, "error": message,
                                    "cancelled": code == EXIT_CANCELLED})
        print_failure(code, message)
        return code
