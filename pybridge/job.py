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

from .errors import StackError, one_line

_STACK_OPTIONS = {"method", "align", "depth_map", "format", "reference", "overwrite", "crop",
                  "metadata", "halo_suppression", "match_gain", "bit_depth", "align_model",
                  "confidence_map", "interpolation"}


_FORMAT_SUFFIXES = {"tiff": (".tif", ".tiff"), "jpeg": (".jpg", ".jpeg"), "png": (".png",)}


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
    if data.get("version", 1) != 1:
        raise ManifestError(path, f"unsupported manifest version {data.get('version')!r}")
    return data


def _string_list(manifest: dict, key: str, path: Path, required: bool = True) -> list[str] | None:
    value = manifest.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ManifestError(path, f"'{key}' must be a list of file paths")
    return value


def _write_status(status_file: str | None, status: dict) -> None:
    if not status_file:
        return
    target = Path(status_file)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(status, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, target)


def _run_stack(manifest: dict, path: Path, progress, cancel) -> dict:
    from .pipeline import side_path, stack

    frames = _string_list(manifest, "frames", path)
    sources = _string_list(manifest, "sources", path, required=False)
    output = manifest.get("output")
    if not isinstance(output, str) or not output:
        raise ManifestError(path, "'output' must be a file path")
    options = manifest.get("options") or {}
    unknown = set(options) - _STACK_OPTIONS
    if unknown:
        raise ManifestError(path, f"unknown option(s): {', '.join(sorted(unknown))}")
    out = Path(output)
    fmt = options.get("format")
    if fmt:
        suffixes = _FORMAT_SUFFIXES.get(fmt)
        if suffixes is None:
            raise ManifestError(path, f"unknown output format {fmt!r} (tiff, jpeg or png)")
        if out.suffix.lower() not in suffixes:
            out = out.with_suffix(suffixes[0])
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
                   progress=progress, cancel=cancel)
    return {"output": str(result.output),
            "depth_map": str(result.depth_map_path) if result.depth_map_path else None,
            "metadata": result.metadata_written,
            "frames": [t.to_dict() for t in result.transforms]}


def _run_lens(manifest: dict, path: Path, progress, cancel) -> dict:
    """Lens rewrite or undo on the original files (the plugin's lens section)."""
    from exif.lens import LensSpec, format_lens_info, preset, set_lens, undo_lens
    from exif.tool import ExifError

    files = [Path(f) for f in _string_list(manifest, "files", path)]
    action = manifest.get("action", "set")
    progress("lens", count=len(files), fraction=0.1)
    try:
        if action == "undo":
            done = undo_lens(files)
            results = [{"file": str(r.path), "outcome": "restored" if r.undone else "unchanged",
                        "message": r.error or ("" if r.undone else "nothing to undo")}
                       if r.ok else {"file": str(r.path), "outcome": "error", "message": r.error}
                       for r in done]
        elif action == "set":
            spec = LensSpec()
            if manifest.get("preset"):
                spec = preset(manifest["preset"])
            fields = dict(manifest.get("fields") or {})
            if isinstance(fields.get("lens_info"), list):
                fields["lens_info"] = format_lens_info(fields["lens_info"])
            unknown = set(fields) - set(vars(LensSpec()))
            if unknown:
                raise ManifestError(path, f"unknown lens field(s): {', '.join(sorted(unknown))}")
            spec = spec.merged(LensSpec(**{k: v for k, v in fields.items() if v not in ("", None)}))
            report = set_lens(files, spec, dry_run=bool(manifest.get("dry_run")))
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
        else:
            raise ManifestError(path, f"unknown lens action {action!r} (set or undo)")
    except ExifError as exc:
        raise StackError(str(exc)) from None
    ok = all(r["outcome"] != "error" for r in results)
    failed = [r for r in results if r["outcome"] == "error"]
    error = None if ok else (f"{len(failed)} of {len(results)} files failed; first: "
                             f"{failed[0]['file']}: {failed[0]['message']}")
    return {"ok": ok, "error": error, "results": results}


def run_job(manifest_path: Path) -> int:
    """Run one job; returns the process exit status (0, 1, or 130 when cancelled)."""
    from .cli import EXIT_CANCELLED, EXIT_ERROR, describe_failure, print_failure
    from .progress import JsonLines

    status_file = None
    try:
        manifest = load_manifest(manifest_path)
        status_file = manifest.get("status_file")
        progress = JsonLines(sys.stdout, manifest.get("progress_file"))
        cancel_file = manifest.get("cancel_file")
        cancel = (lambda: os.path.exists(cancel_file)) if cancel_file else None
        kind = manifest.get("kind", "stack")
        runner = {"stack": _run_stack, "lens": _run_lens}.get(kind)
        if runner is None:
            raise ManifestError(manifest_path, f"unknown job kind {kind!r} (stack or lens)")
        outcome = runner(manifest, manifest_path, progress, cancel)
        ok = outcome.pop("ok", True)
        status = {"ok": ok, "error": outcome.pop("error", None), "cancelled": False, **outcome}
        _write_status(status_file, status)
        progress("done", fraction=1.0, **{k: v for k, v in outcome.items()
                                           if k in ("output", "depth_map")})
        return 0 if ok else EXIT_ERROR
    except BaseException as exc:
        code, message = describe_failure(exc)
        if code is None:
            raise
        _write_status(status_file, {"ok": False, "output": None, "error": message,
                                    "cancelled": code == EXIT_CANCELLED})
        print_failure(code, message)
        return code
