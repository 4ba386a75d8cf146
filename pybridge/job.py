"""`focusbridge run-job MANIFEST`: the darktable plugin's way in.

Every file name travels inside the JSON manifest, never on a command line, so nothing a user
named a file can reach a shell. The manifest's schema is in docs/ARCHITECTURE.md. The kinds of
job: "stack" (the default), "lens" (batch lens rewrite / undo), "brackets" (which of the files
belong together: pybridge.brackets, with the caller's own groups), "batch" (several stacks one
after another in this process, one progress stream) and "check" (pybridge.check on a bracket).

Results go three ways: JSON progress lines on stdout (and appended to `progress_file`), the
exit status, and `status_file`, written atomically at the very end so a poller that sees it
knows the job is over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_output, names_a_folder
from .errors import (
    EXIT_CANCELLED,
    EXIT_ERROR,
    Cancelled,
    ManifestError,
    describe_failure,
    one_line,
    print_failure,
)
from .options import (
    FORMATS,
    OptionError,
    Options,
    OutputOptions,
    StackOptions,
    StackOutputOptions,
    option,
    options_schema,
    split_manifest_options,
)
from .signals import note_late_cancel

KINDS = ("stack", "lens", "brackets", "batch", "check")
_PATH = {"type": "string", "minLength": 1}
_PATHS = {"type": "array", "items": _PATH}
_OPTIONAL_PATH = {"type": ["string", "null"], "minLength": 1}
_RUN_FILES = ("status_file", "progress_file", "cancel_file", "pid_file")
# the retouching outputs: paths, so each stack of a batch has its own (not shared options)
_STACK_PATHS = ("aligned_frames", "layers")
_BATCH_ENTRY = ("frames", "sources", "output", *_STACK_PATHS)
CHECK_LONG_SIDE = (64, 20000)  # px, as `focusbridge check --long-side`


def manifest_schema() -> dict:
    """JSON Schema of a job manifest, made from the same definitions run-job checks with."""
    common = {"version": {"const": 1}, **{k: _OPTIONAL_PATH for k in _RUN_FILES}}

    def kind(name: str, required: list[str], properties: dict) -> dict:
        return {
            "type": "object",
            "required": required,
            "additionalProperties": False,
            "properties": {**common, "kind": {"const": name}, **properties},
        }

    retouch = StackOutputOptions.schema()["properties"]
    check = CheckJob.schema()["properties"]
    check["coverage_map"]["minLength"] = 1
    check["long_side"]["maximum"] = CHECK_LONG_SIDE[1]
    groups = {
        "type": "array",
        "items": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0},
            "minItems": 2,
            "uniqueItems": True,
        },
    }
    one_stack = {
        "type": "object",
        "required": ["frames", "output"],
        "additionalProperties": False,
        "properties": {
            "frames": {**_PATHS, "minItems": 2},
            "sources": _PATHS,
            "output": _PATH,
            **{k: retouch[k] for k in _STACK_PATHS},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "focusbridge run-job manifest",
        "oneOf": [
            kind(
                "stack",
                ["frames", "output"],
                {
                    "frames": {**_PATHS, "minItems": 2},
                    "sources": _PATHS,
                    "output": _PATH,
                    "options": options_schema(),
                },
            ),
            kind(
                "lens",
                ["kind", "files"],
                {
                    "files": _PATHS,
                    **LensJob.schema()["properties"],
                    "fields": LensFields.schema(),
                },
            ),
            kind(
                "brackets",
                ["kind", "sources"],
                {
                    "sources": {**_PATHS, "minItems": 1},
                    "groups": groups,
                    **BracketsJob.schema()["properties"],
                },
            ),
            kind(
                "batch",
                ["kind", "stacks"],
                {
                    "stacks": {"type": "array", "minItems": 1, "items": one_stack},
                    "options": batch_options_schema(),
                },
            ),
            kind(
                "check",
                ["kind", "frames"],
                {"frames": {**_PATHS, "minItems": 2}, "sources": _PATHS, **check},
            ),
        ],
    }


def batch_options_schema() -> dict:
    """A batch's shared `options`: engine and output options, without the per-stack paths."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **StackOptions.schema()["properties"],
            **OutputOptions.schema()["properties"],
        },
    }


def _allowed_keys(kind: str) -> set[str]:
    return {
        "stack": {"frames", "sources", "output", "options"},
        "lens": {"files", "fields", *LensJob.names()},
        "brackets": {"sources", "groups", *BracketsJob.names()},
        "batch": {"stacks", "options"},
        "check": {"frames", "sources", *CheckJob.names()},
    }[kind]


def read_manifest(path: Path) -> dict:
    """The manifest's JSON object (check_manifest checks it, once run_job knows where the
    status file goes)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(path, "no such file") from None
    except RecursionError:
        raise ManifestError(path, "not a readable JSON job manifest (nested too deeply)") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(path, _not_utf8(exc)) from None
    except (OSError, ValueError) as exc:
        raise ManifestError(path, f"not a readable JSON job manifest ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise ManifestError(path, "a job manifest must be a JSON object")
    return data


def _not_utf8(exc: UnicodeDecodeError) -> str:
    """Which string of the manifest is not UTF-8 text: a file name from a folder written in
    another encoding, most likely (the JSON string around the bad byte, shown with it
    replaced)."""
    raw = exc.object
    start = raw.rfind(b'"', 0, exc.start) + 1
    end = raw.find(b'"', exc.end)
    text = raw[start : end if end >= 0 else len(raw)][:200].decode("utf-8", "replace")
    return (
        f"the string {json.dumps(text, ensure_ascii=False)} is not UTF-8 text "
        f"(byte 0x{raw[exc.start]:02x} at offset {exc.start}); a job manifest holds UTF-8 "
        "file names (rename a file whose name uses another encoding)"
    )


def check_manifest(data: dict, path: Path) -> None:
    """What every kind of job needs: version, kind, known keys, the run files, no NUL in a
    string (no file name holds one: each would be an internal error further on)."""
    nul = _nul_key(data)
    if nul:
        raise ManifestError(path, f"'{nul}' holds a NUL character, which no file name can")
    if data.get("version", 1) != 1 or isinstance(data.get("version"), bool):
        raise ManifestError(path, f"unsupported manifest version {data.get('version')!r}")
    if data.get("kind", "stack") not in KINDS:
        raise ManifestError(
            path,
            f"unknown job kind {data.get('kind')!r} ({', '.join(KINDS[:-1])} or {KINDS[-1]})",
        )
    kind = data.get("kind", "stack")
    allowed = {"version", "kind", *_RUN_FILES} | _allowed_keys(kind)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ManifestError(path, f"unknown key(s) for a {kind} job: {', '.join(unknown)}")
    for key in _RUN_FILES:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ManifestError(path, f"'{key}' must be a file path or null")


def _nul_key(value, key: str = "") -> str | None:
    """Where the first string holding a NUL is ('frames[1]', 'options.layers'), or None."""
    if isinstance(value, str):
        return key if "\0" in value else None
    if isinstance(value, dict):
        items = ((f"{key}.{k}" if key else k, v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{key}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next(filter(None, (_nul_key(v, k) for k, v in items)), None)


def _path(value) -> bool:
    """A string that can name a file (the rest of a manifest is refused with its key)."""
    return isinstance(value, str) and value != "" and "\0" not in value


def _output(value, path: Path, where: str = "") -> str:
    """`output`: a file's name; '.', '/' or 'out.tif/' name folders (Path drops the slash)."""
    if not isinstance(value, str) or not value:
        raise ManifestError(path, f"{where}'output' must be a file path")
    if names_a_folder(value):
        raise ManifestError(path, f"{where}'output' must name a file, not a folder ({value!r})")
    return value


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

    side = [
        (key, Path(manifest[key]))
        for key in ("status_file", "progress_file", "pid_file")
        if _path(manifest.get(key))
    ]
    opts = manifest.get("options")
    opts = opts if isinstance(opts, dict) else {}
    named = _named_files(manifest, opts)
    for entry in _batch_entries(manifest):  # a batch: every stack's inputs and outputs
        named += _named_files(entry, entry)
    coverage = manifest.get("coverage_map")
    if _path(coverage):
        named.append(("coverage map", Path(coverage)))
    check_outputs(side, named, overwrite=True)


def _batch_entries(manifest: dict) -> list[dict]:
    entries = manifest.get("stacks") if manifest.get("kind") == "batch" else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _named_files(entry: dict, opts: dict) -> list[tuple[str, Path]]:
    """The inputs and outputs one stack (or another job) names, as far as they are well formed
    (the rest is refused later); `opts` holds its retouching outputs."""
    from .pipeline import side_path

    named = [
        ("input", Path(v))
        for key in ("frames", "sources", "files")
        for v in (entry.get(key) if isinstance(entry.get(key), list) else [])
        if _path(v)
    ]
    output = entry.get("output")
    if _path(output) and not names_a_folder(output):
        for suffix in [Path(output).suffix] + [s for s, *_ in FORMATS.values()]:
            out = Path(output).with_suffix(suffix) if suffix else Path(output)
            named += [
                ("result", out),
                ("depth map", side_path(out, "depth")),
                ("confidence map", side_path(out, "confidence")),
            ]
    named += _retouch_outputs(entry, opts)
    return named


def _retouch_outputs(entry: dict, opts: dict) -> list[tuple[str, Path]]:
    """The layers file and the aligned frames a stack asks for, as far as it is well formed
    (the rest is refused later)."""
    from .retouch import aligned_frame_paths

    named = []
    layers = opts.get("layers")
    if _path(layers):
        named.append(("layers", Path(layers)))
    folder = opts.get("aligned_frames")
    names = entry.get("sources") or entry.get("frames")
    if _path(folder) and isinstance(names, list):
        names = [n for n in names if _path(n)]
        named += [("aligned frame", p) for p in aligned_frame_paths(folder, names)]
    return named


def _write_status(status_file: str | None, status) -> None:
    """Whole or not at all, so a poller that sees the file can trust it."""
    if status_file:
        with atomic_output(Path(status_file), overwrite=True) as tmp:
            tmp.write_text(json.dumps(status), encoding="utf-8")


def _run_stack(manifest: dict, path: Path, progress, cancel) -> dict:
    frames = _string_list(manifest, "frames", path)
    sources = _string_list(manifest, "sources", path, required=False)
    output = _output(manifest.get("output"), path)
    try:
        options, outputs = split_manifest_options(manifest.get("options"))
    except OptionError as exc:
        raise ManifestError(path, str(exc)) from None
    return _stack(frames, sources, output, options, outputs, progress, cancel)


def _stack(frames, sources, output: str, options, outputs, progress, cancel) -> dict:
    """One stack through the application layer; its part of the status file."""
    from .app import stack
    from .pipeline import side_path

    out = Path(output)
    if outputs.format and out.suffix.lower() not in FORMATS[outputs.format]:
        out = out.with_suffix(FORMATS[outputs.format][0])
    result = stack(
        frames,
        out,
        options,
        depth_map=side_path(out, "depth") if outputs.depth_map else None,
        confidence_map=side_path(out, "confidence") if outputs.confidence_map else None,
        aligned_frames=outputs.aligned_frames,
        layers=outputs.layers,
        metadata=outputs.metadata,
        sources=sources,
        progress=progress,
        cancel=cancel,
    )
    return {
        "output": str(result.output),
        "depth_map": str(result.depth_map_path) if result.depth_map_path else None,
        "aligned_frames": [str(p) for p in result.aligned_frame_paths],
        "layers": str(result.layers_path) if result.layers_path else None,
        "metadata": result.metadata_written,
        "warnings": result.warnings,
        "frames": [t.to_dict() for t in result.transforms],
    }


# ------------------------------------------------------------------------------ brackets


@dataclass
class BracketsJob(Options):
    """A brackets job's settings: what `focusbridge brackets` takes besides the files."""

    gap: float | None = option(
        None,
        "split at every pause between frames longer than this many seconds (null: at pauses "
        "over max(3 x the median interval, 2 s), never across more than 30 s)",
        minimum=0,
    )


def _run_brackets(manifest: dict, path: Path, progress, cancel) -> dict:
    """Which of `sources` form brackets (docs/batch.md): each of `groups` (lists of indexes,
    the caller's own grouping, e.g. darktable's) is one bracket as it stands, the rest goes
    through pybridge.brackets' detection. Every index ends up in one bracket or unassigned."""
    from .brackets import Shot, group, read_shots

    sources = _string_list(manifest, "sources", path)
    if not sources:
        raise ManifestError(path, "'sources' must name at least one file")
    groups = _index_groups(manifest.get("groups"), len(sources), path)
    try:
        job = BracketsJob.from_json({k: v for k, v in manifest.items() if k in BracketsJob.names()})
    except OptionError as exc:
        raise ManifestError(path, str(exc)) from None
    if cancel is not None and cancel():
        raise Cancelled()
    progress("brackets", count=len(sources), fraction=0.1)
    brackets: list[dict] = []
    unassigned: dict[int, str] = {}
    shots: dict[int, Shot] = {}
    for i, name in enumerate(sources):
        p = Path(os.fsdecode(name))
        if p.is_file():
            shots[i] = Shot(path=p, folder=p.parent)
        else:
            unassigned[i] = "no such file" if not p.exists() else "not a file"
    read_shots(list(shots.values()))  # one exiftool call for all of them
    grouped = {i for g in groups for i in g}
    for g in groups:
        members = []
        for i in g:
            if i in unassigned:
                continue
            if shots[i].problem:
                unassigned[i] = shots[i].problem
            else:
                members.append(i)
        if len(members) >= 2:
            brackets.append({"indexes": sorted(members), "reason": "one of the given groups"})
        else:
            unassigned.update({i: "a single frame, not a bracket" for i in members})
    rest = {i: s for i, s in shots.items() if i not in grouped and i not in unassigned}
    found = group(list(rest.values()), gap=job.gap)
    # back from paths to indexes (two indexes may name one file: darktable's duplicates)
    by_name: dict[str, list[int]] = {}
    for i, s in rest.items():
        by_name.setdefault(str(s.path), []).append(i)

    def index_of(p: Path) -> int:
        return by_name[str(p)].pop(0)

    for b in found.brackets:
        brackets.append({"indexes": sorted(index_of(f) for f in b.frames), "reason": b.reason})
    for u in found.unassigned:
        unassigned[index_of(u.path)] = u.reason
    brackets.sort(key=lambda b: b["indexes"][0])
    return {
        "brackets": brackets,
        "unassigned": [
            {"index": i, "file": sources[i], "reason": reason}
            for i, reason in sorted(unassigned.items())
        ],
    }


def _index_groups(value, count: int, path: Path) -> list[list[int]]:
    """`groups`: lists of at least two indexes into the sources, none in two groups."""
    if value is None:
        return []
    problem = "'groups' must be a list of lists of at least two indexes into 'sources'"
    if not isinstance(value, list):
        raise ManifestError(path, problem)
    seen: set[int] = set()
    for g in value:
        if not isinstance(g, list) or len(g) < 2:
            raise ManifestError(path, problem)
        for i in g:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < count:
                raise ManifestError(path, f"{problem} (0..{count - 1}), not {i!r}")
            if i in seen:
                raise ManifestError(path, f"'groups': index {i} is in two groups")
            seen.add(i)
    return value


# ------------------------------------------------------------------------------ batch


def _run_batch(manifest: dict, path: Path, progress, cancel) -> dict:
    """Several stacks one after another in this process (the darktable plugin's queue): one
    progress stream across all of them, weighted by their frames; the cancel file is honoured
    between and within stacks; a stack that fails does not stop the others."""
    entries = manifest.get("stacks")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(path, "'stacks' must be a list of at least one stack job")
    data = manifest.get("options")
    try:
        if isinstance(data, dict) and set(data) & set(_STACK_PATHS):
            raise OptionError(
                "options",
                "cannot hold aligned_frames or layers in a batch: they are paths, so each "
                "stack in 'stacks' names its own",
            )
        options, outputs = split_manifest_options(data)
    except OptionError as exc:
        raise ManifestError(path, str(exc)) from None
    stacks = [_batch_entry(e, i, outputs, path) for i, e in enumerate(entries)]
    outs = [str(Path(s[2]).with_suffix("")) for s in stacks]
    for i, out in enumerate(outs):
        if out in outs[:i]:
            raise ManifestError(
                path, f"stacks[{i}]: output {stacks[i][2]} is also stacks[{outs.index(out)}]'s"
            )
    from exif.tool import exiftool_kept

    total = sum(len(s[0]) for s in stacks)
    with exiftool_kept():  # one exiftool merges the metadata of every stack
        results, stopped = _run_stacks(stacks, options, total, progress, cancel)
    failed = [(i, r) for i, r in enumerate(results) if not r["ok"] and not r["cancelled"]]
    stacked = sum(r["ok"] for r in results)
    if stopped:
        error = f"cancelled after {stacked} of {len(results)} stacks"
    elif failed:
        error = (
            f"{len(failed)} of {len(results)} stacks failed; first: stacks[{failed[0][0]}]: "
            f"{failed[0][1]['error']}"
        )
    else:
        error = None
    return {
        "ok": not failed and not stopped,
        "error": error,
        "cancelled": stopped,
        "stacked": stacked,
        "results": results,
    }


def _run_stacks(stacks, options, total: int, progress, cancel) -> tuple[list[dict], bool]:
    """The batch job's stacks, one after another: each one's result, and whether a cancel
    stopped them."""
    rearm = _signals_armed()
    results: list[dict] = []
    done = 0
    stopped = False
    for i, (frames, sources, output, outs_i) in enumerate(stacks):
        share = len(frames)
        stopped = stopped or (cancel is not None and cancel())
        if stopped:
            results.append({"ok": False, "output": None, "error": "cancelled", "cancelled": True})
            continue
        if rearm and i:
            _rearm_signals()  # a stack that committed leaves signals ignored

        def each(phase, frame=None, count=None, fraction=0.0, _i=i, _at=done, _n=share, **extra):
            overall = (_at + min(max(fraction, 0.0), 1.0) * _n) / total
            progress(phase, frame, count, overall, bracket=_i, brackets=len(stacks), **extra)

        try:
            outcome = _stack(frames, sources, output, options, outs_i, each, cancel)
            results.append({"ok": True, "error": None, "cancelled": False, **outcome})
        except BaseException as exc:
            code, message = describe_failure(exc)
            if code is None:
                raise
            stopped = code == EXIT_CANCELLED
            results.append({"ok": False, "output": None, "error": message, "cancelled": stopped})
            if not stopped:
                print_failure(code, message)
        done += share
        r = results[-1]
        progress(
            "batch",
            frame=i,
            count=len(stacks),
            fraction=done / total,
            output=r["output"],
            outcome="done" if r["ok"] else "cancelled" if r["cancelled"] else "failed",
        )
    return results, stopped


def _batch_entry(entry, i: int, outputs, path: Path):
    """(frames, sources, output, output options) of stacks[i], strictly checked."""
    where = f"stacks[{i}]"
    if not isinstance(entry, dict):
        raise ManifestError(path, f"'{where}' must be a JSON object (a stack job)")
    unknown = sorted(set(entry) - set(_BATCH_ENTRY))
    if unknown:
        raise ManifestError(path, f"unknown key(s) in {where}: {', '.join(unknown)}")
    try:
        frames = _string_list(entry, "frames", path)
        sources = _string_list(entry, "sources", path, required=False)
    except ManifestError as exc:
        raise ManifestError(path, f"{where}: {exc.problem}") from None
    if len(frames) < 2:
        raise ManifestError(path, f"{where}: 'frames' must name at least two files")
    output = _output(entry.get("output"), path, f"{where}: ")
    try:
        own = dataclasses.replace(outputs, **{k: entry.get(k) for k in _STACK_PATHS})
    except OptionError as exc:
        raise ManifestError(path, f"{where}: {exc}") from None
    return frames, sources, output, own


def _signals_armed() -> bool:
    """Does this process route SIGTERM through pybridge.signals (the command line does)?"""
    import signal
    import threading

    from . import signals

    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signals._on_signal
    )


def _rearm_signals() -> None:
    from . import signals

    signals.install()


# ------------------------------------------------------------------------------ check


@dataclass
class CheckJob(Options):
    """A check job's settings: what `focusbridge check` takes besides the frames."""

    coverage_map: str | None = option(
        None,
        "also write a quick stacked preview with the areas sharp in no frame tinted red "
        "(.png, .tif or .jpg)",
    )
    long_side: int | None = option(
        None,
        "size the frames are checked at, in px (64..20000; larger sees smaller gaps, slower); "
        "null: frames up to 1250 px as they are, larger ones at half size, 750..1000",
        minimum=CHECK_LONG_SIDE[0],
    )
    overwrite: bool = option(False, "replace an existing coverage map")


def _run_check(manifest: dict, path: Path, progress, cancel) -> dict:
    """`focusbridge check` on `frames` (in focus order); focus distances from `sources`
    (the original files, when the frames are exports) or the frames."""
    from .capture import check_with_distances

    frames = _string_list(manifest, "frames", path)
    if len(frames) < 2:
        raise ManifestError(path, "'frames' must name at least two files")
    sources = _string_list(manifest, "sources", path, required=False)
    if sources is not None and len(sources) != len(frames):
        raise ManifestError(path, f"'sources' names {len(sources)} files for {len(frames)} frames")
    try:
        job = CheckJob.from_json({k: v for k, v in manifest.items() if k in CheckJob.names()})
    except OptionError as exc:
        raise ManifestError(path, str(exc)) from None
    if job.coverage_map == "":
        raise ManifestError(path, "'coverage_map' must be a file path or null")
    if job.long_side is not None and job.long_side > CHECK_LONG_SIDE[1]:
        raise ManifestError(path, f"'long_side' must be 64..20000 px, not {job.long_side}")
    if cancel is not None and cancel():
        raise Cancelled()
    progress("check", count=len(frames), fraction=0.05)
    result = check_with_distances(
        frames,
        sources,
        coverage_map=job.coverage_map,
        overwrite=job.overwrite,
        long_side=job.long_side,
        cancel=cancel,
    )
    return {
        "check": result.to_json(),
        "problems": not result.ok,
        "summary": result.summary_lines(),
        "coverage_map": result.coverage_map,
    }


# ------------------------------------------------------------------------------ lens


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
    results = []
    try:
        # progress as the files are done: the plugin gives up on a job silent for 30 minutes
        def done(count: int, total: int) -> None:
            progress("lens", count=len(files), fraction=0.1 + 0.85 * count / max(total, 1))

        if job.action == "undo":
            for k, f in enumerate(files):  # one at a time, so a cancel stops between files
                if cancel is not None and cancel():
                    raise Cancelled()
                results.append(_undo_result(undo_lens([f])[0]))
                done(k + 1, len(files))
        else:
            report = set_lens(
                files,
                lens_spec(job.preset, **fields),
                dry_run=job.dry_run,
                should_stop=cancel,
                on_batch=done,
            )
            results = [_set_result(r) for r in report.results]
    except Cancelled as exc:
        # what was done before the cancel is reported, so the plugin can undo exactly that
        done = getattr(exc, "done", None)
        if done is not None:
            results = [_set_result(r) for r in done.results]
        changed = sum(r["outcome"] in ("updated", "restored") for r in results)
        return {
            "ok": False,
            "error": f"cancelled after changing {changed} of {len(files)} files",
            "cancelled": True,
            "results": results,
        }
    failed = [r for r in results if r["outcome"] == "error"]
    error = (
        f"{len(failed)} of {len(results)} files failed; first: "
        f"{failed[0]['file']}: {failed[0]['message']}"
        if failed
        else None
    )
    return {"ok": not failed, "error": error, "results": results}


def _undo_result(r) -> dict:
    if not r.ok:
        return {"file": str(r.path), "outcome": "error", "message": r.error}
    return {
        "file": str(r.path),
        "outcome": "restored" if r.undone else "unchanged",
        "message": r.error or ("" if r.undone else "nothing to undo"),
    }


def _set_result(r) -> dict:
    if not r.ok:
        return {"file": str(r.path), "outcome": "error", "message": r.error}
    message = "; ".join(f"{tag}: {old or '-'} -> {new}" for tag, old, new in r.changes)
    if r.not_writable:
        message += (
            ("; " if message else "")
            + "not in this file's maker notes: "
            + ", ".join(r.not_writable)
        )
    return {
        "file": str(r.path),
        "outcome": "updated" if r.changes else "unchanged",
        "message": message,
    }


def _write_pid(pid_file: str | None) -> None:
    """The bridge's own pid, so the plugin can stop it on any platform (no shell's `$!`)."""
    if pid_file:
        _write_status(pid_file, os.getpid())


_RUNNERS = {
    "stack": _run_stack,
    "lens": _run_lens,
    "brackets": _run_brackets,
    "batch": _run_batch,
    "check": _run_check,
}


def run_job(manifest_path: Path) -> int:
    """Run one job; returns the process exit status (0, 1, or 130 when cancelled)."""
    from .progress import JsonLines

    status_file = None
    try:
        manifest = read_manifest(manifest_path)
        # first the side files (so not even an error status lands on a photograph); from
        # then on every failure ends in the status file, which a poller waits for
        _check_side_files(manifest)
        if _path(manifest.get("status_file")):
            status_file = manifest["status_file"]
        check_manifest(manifest, manifest_path)
        runner = _RUNNERS[manifest.get("kind", "stack")]  # check_manifest checked it
        progress = JsonLines(sys.stdout, manifest.get("progress_file"))
        cancel_file = manifest.get("cancel_file")
        cancel = (lambda: os.path.exists(cancel_file)) if cancel_file else None
        _write_pid(manifest.get("pid_file"))
        outcome = runner(manifest, manifest_path, progress, cancel)
        ok = outcome.pop("ok", True)
        # a batch stopped by a cancel reports what it finished before (a status, exit 130)
        cancelled = outcome.pop("cancelled", False)
        status = {"ok": ok, "error": outcome.pop("error", None), "cancelled": cancelled, **outcome}
        _write_status(status_file, status)
        if cancelled:
            print_failure(EXIT_CANCELLED, "cancelled")
            return EXIT_CANCELLED
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
