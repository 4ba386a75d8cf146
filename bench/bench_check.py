"""Benchmark: `focusbridge check` against `focusbridge stack` on the same frames (issue 11).

    .venv/bin/python bench/bench_check.py [--repeat 3] [--sets real,0.5,3,12]
        [--types tif,jpg,png,dng] [--baseline DIR] [--findings] [BRACKET_DIR ...]

The target: a check takes at most 20 % of the stacking time (default options) at every frame
size and for every input type. Each command runs as a subprocess through the venv's
`focusbridge` entry point, so start-up (imports, exiftool) counts on both sides. For every set,
repeat by repeat: `focusbridge stack FRAMES -o OUT --overwrite`, then `focusbridge check FRAMES
--json` (and, with `--baseline DIR`, the same check with PYTHONPATH=DIR: an older copy of
`pybridge/` and `exif/`, e.g. `git archive HEAD pybridge exif | tar -x -C DIR`). The table has
the median wall time of each, the ratio check / stack of the medians, and the same ratio of
CPU time (user + system of the command and its children: steadier on a busy machine).
Then, also per repeat, both commands once more through `pybridge.cli.main` in one Python
process that has imported everything first ("in-process"): the commands' own work, without
the interpreter's start-up and imports, a fixed ~0.3 s on both sides that is most of a small
bracket's check.

Sets:

* real brackets: the folders given (default: ../shared/data/brackets/{ring6,pcb7,depthmap10}
  next to the checkout, and tests/data/brackets/{pcb7,depthmap10}); every image
  file in a folder whose name does not start with "expected", sorted by name. Nothing is
  copied.
* synthetic brackets (tests/synthetic.py `make_bracket`, FRAMES frames, the test bracket's
  parameters scaled with the size: max_blur 16 px per 480 px of the short side), written once
  under bench/work/check-sets/ and reused: 0.5 MP (800x600), 3 MP (2000x1500) and 12 MP
  (4000x3000), each as 16-bit TIFF, JPEG (quality 95), 16-bit PNG and DNG (tests/dng.py: a
  real CFA DNG that LibRaw demosaics), as `--types` says.

`--findings` runs no timing: it prints what the check finds (gaps, wasted frames, order,
duplicates, exposure jumps, motion) on every set, whole and with frames taken out of the
middle (two, and three where there are 10 or more), beside the baseline's findings when
`--baseline` is given, and marks every difference.

Prints a markdown table and writes it (with the command and the machine) to
bench/work/check-results.md, or to `--report FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
SETS = WORK / "check-sets"
OUT = WORK / "check-out"
BIN = ROOT / ".venv" / "bin" / "focusbridge"
SHARED = ROOT.parent / "shared" / "data" / "brackets"
DEFAULT_BRACKETS = [
    SHARED / "ring6",
    SHARED / "pcb7",
    SHARED / "depthmap10",
    ROOT / "tests" / "data" / "brackets" / "pcb7",
    ROOT / "tests" / "data" / "brackets" / "depthmap10",
]
SIZES = {"0.5": (600, 800), "3": (1500, 2000), "12": (3000, 4000)}  # MP: (height, width)
TYPES = ("tif", "jpg", "png", "dng")
IMAGE_EXTS = {".jpg", ".jpeg", ".tif", ".tiff", ".png", ".dng"}
sys.path.insert(0, str(ROOT / "tests"))


# ---------------------------------------------------------------------------- the sets


def real_set(folder: Path) -> tuple[str, list[Path]]:
    frames = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTS
        and not p.name.lower().startswith("expected")
    )
    try:
        label = str(folder.resolve().relative_to(ROOT))
    except ValueError:
        label = folder.name
    return label, frames


def synthetic_sets(size_key: str, kinds: list[str], frames: int, seed: int):
    """The frames of one synthetic bracket in each file type (rendered once for all)."""
    h, w = SIZES[size_key]
    folder = SETS / f"{w}x{h}-n{frames}-s{seed}"
    missing = [k for k in kinds if not (folder / f".done-{k}").exists()]
    if missing:
        _render(folder, (h, w), frames, seed, missing)
    return [
        (
            f"synthetic {w}x{h} ({w * h / 1e6:.1f} MP) {kind}",
            [folder / f"frame_{k:03d}.{kind}" for k in range(frames)],
        )
        for kind in kinds
    ]


def _render(folder: Path, size, frames: int, seed: int, kinds: list[str]) -> None:
    import numpy as np
    from dng import write_dng
    from synthetic import make_bracket, save_image

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def sink(k: int, frame) -> None:
        for kind in kinds:
            path = folder / f"frame_{k:03d}.{kind}"
            if kind == "dng":
                write_dng(path, np.round(frame * 65535).astype(np.uint16))
            else:
                save_image(path, frame, 16)

    # the test bracket's parameters (tests/test_check.py), blur scaled with the size
    make_bracket(
        frames,
        size,
        max_blur=16.0 * min(size) / 480,
        seed=seed,
        flicker=0.005,
        slant=0.9,
        sink=sink,
    )
    for kind in kinds:
        (folder / f".done-{kind}").write_text("")
    print(f"  rendered {folder.name} ({', '.join(kinds)}) in {time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------------------- running


def _env(pythonpath: str | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: byte code cached, not recompiled
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    return env


def timed(cmd: list[str], pythonpath: str | None = None) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system, the command and its children: exiftool) and
    standard output of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(pythonpath))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, cpu, proc.stdout


def compile_all(baseline: str | None) -> None:
    """Byte code for every module once, so no run pays for compiling."""
    for where in filter(None, (ROOT / "pybridge", ROOT / "exif", baseline)):
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(where)],
            env=_env(None),
            stdout=subprocess.DEVNULL,
            check=False,
        )


# The same two commands run through pybridge.cli.main inside one Python process that has
# loaded everything first: the work of each, without the interpreter's start-up and imports
# (about 0.3 s, the same for both, which is most of a small bracket's check).
_IN_PROCESS = """
import contextlib, io, json, sys, time
import exiftool, pybridge.app, pybridge.capture, pybridge.check, pybridge.pipeline
import exif.merge, exif.tool
from pybridge.cli import main
stack_args, check_args = json.loads(sys.argv[1])
took = {}
for key, args in (("stack", stack_args), ("check", check_args)):
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    took[key] = time.perf_counter() - t0
    if code:
        sys.exit(f"{key} failed ({code})")
print(json.dumps(took))
"""


def in_process(frames: list[Path], out: Path, extra: list[str]) -> dict:
    args = [stack_cmd(frames, out)[1:] + ["--progress", "none"], check_cmd(frames, extra)[1:]]
    proc = subprocess.run(
        [str(BIN.parent / "python"), "-c", _IN_PROCESS, json.dumps(args)],
        capture_output=True,
        text=True,
        env=_env(None),
    )
    if proc.returncode != 0:
        sys.exit(f"in-process run failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stack_cmd(frames: list[Path], out: Path) -> list[str]:
    return [str(BIN), "stack", *map(str, frames), "-o", str(out), "--overwrite"]


def check_cmd(frames: list[Path], extra: list[str]) -> list[str]:
    return [str(BIN), "check", *map(str, frames), "--json", *extra]


def findings(report: dict) -> str:
    """The check's findings in one short line (what must not change)."""
    parts = [f"gaps {report['gaps']}"]
    if report["wasted"]:
        parts.append(f"wasted {report['wasted']}")
    if report["order"] == "out of order":
        parts.append(f"out of order {report['suggested_order']}")
    for key, label in (("duplicates", "dup"), ("exposure_jumps", "exposure"), ("motion", "motion")):
        found = report[key]
        if found:
            parts.append(f"{label} {[f['between'] if isinstance(f, dict) else f for f in found]}")
    return "; ".join(parts)


def bench(sets, args) -> list[dict]:
    """Per set, repeat by repeat: stack, check (and the baseline's check) one after the other,
    so a slow spell of the machine hits all of them."""
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, frames in sets:
        out = OUT / "stacked.tif"
        runs: dict[str, list[tuple[float, float]]] = {"stack": [], "check": [], "before": []}
        inner: dict[str, list[float]] = {"stack": [], "check": []}
        found = ""
        for _ in range(args.repeat):
            runs["stack"].append(timed(stack_cmd(frames, out))[:2])
            wall, cpu, text = timed(check_cmd(frames, args.check_args))
            runs["check"].append((wall, cpu))
            found = findings(json.loads(text))
            if args.baseline:
                runs["before"].append(timed(check_cmd(frames, args.check_args), args.baseline)[:2])
            for key, seconds in in_process(frames, out, args.check_args).items():
                inner[key].append(seconds)
        out.unlink(missing_ok=True)
        row = {"set": name, "frames": len(frames), "findings": found, "runs": runs}
        for key, values in runs.items():
            if values:
                row[key] = statistics.median(w for w, _ in values)
                row[key + "_cpu"] = statistics.median(c for _, c in values)
        for key in ("check", "before"):
            if key in row:
                row[key + "_ratio"] = row[key] / row["stack"]
                row[key + "_cpu_ratio"] = row[key + "_cpu"] / row["stack_cpu"]
        row["inner_stack"] = statistics.median(inner["stack"])
        row["inner_check"] = statistics.median(inner["check"])
        row["inner_ratio"] = row["inner_check"] / row["inner_stack"]
        rows.append(row)
        print(_line(row, bool(args.baseline)), flush=True)
    return rows


def _header(baseline: bool) -> list[str]:
    before = "check s before | ratio before | " if baseline else ""
    return [
        f"| set | frames | stack s | {before}check s | ratio | CPU ratio | "
        "in-process stack s | check s | ratio |",
        "|---|---|---|" + ("---|---|" if baseline else "") + "---|---|---|---|---|---|",
    ]


def _line(row: dict, baseline: bool) -> str:
    over = "" if row["check_ratio"] <= 0.20 else " **>0.20**"
    before = f"{row['before']:.2f} | {row['before_ratio']:.2f} | " if baseline else ""
    inner = "" if row["inner_ratio"] <= 0.20 else " **>0.20**"
    return (
        f"| {row['set']} | {row['frames']} | {row['stack']:.2f} | {before}{row['check']:.2f} | "
        f"{row['check_ratio']:.2f}{over} | {row['check_cpu_ratio']:.2f} | "
        f"{row['inner_stack']:.2f} | {row['inner_check']:.2f} | {row['inner_ratio']:.2f}{inner} |"
    )


def variants(frames: list[Path]) -> list[tuple[str, list[Path]]]:
    """The bracket whole and with two (and three) frames taken out of the middle."""
    n = len(frames)
    out = [("whole", frames)]
    if n >= 7:
        k = n // 2 - 1
        out.append(
            (f"without {k},{k + 1}", [f for i, f in enumerate(frames) if i not in (k, k + 1)])
        )
    if n >= 10:
        k = n // 2 - 2
        drop = (k, k + 1, k + 2)
        out.append((f"without {k}-{k + 2}", [f for i, f in enumerate(frames) if i not in drop]))
    return out


def compare_findings(sets, args) -> list[str]:
    lines = ["| set | frames | check finds | baseline finds |", "|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    differ = 0
    for name, frames in sets:
        for label, subset in variants(frames):
            now = findings(json.loads(timed(check_cmd(subset, args.check_args))[2]))
            before = "-"
            if args.baseline:
                before = findings(
                    json.loads(timed(check_cmd(subset, args.check_args), args.baseline)[2])
                )
            mark = "" if not args.baseline or before == now else " **differs**"
            differ += bool(mark)
            line = f"| {name} | {label} | {now}{mark} | {before} |"
            lines.append(line)
            print(line, flush=True)
    if args.baseline:
        lines.append("")
        lines.append(f"{differ} of the findings differ from the baseline's")
        print(lines[-1])
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("brackets", nargs="*", type=Path, help="real bracket folders")
    ap.add_argument("--repeat", type=int, default=3, help="runs per command (median), default 3")
    ap.add_argument(
        "--sets",
        default="real,0.5,3,12",
        help="real and/or synthetic sizes in MP (0.5, 3, 12); default all",
    )
    ap.add_argument("--types", default="tif,jpg,png,dng", help="synthetic file types")
    ap.add_argument("--frames", type=int, default=10, help="frames per synthetic bracket")
    ap.add_argument("--seed", type=int, default=1, help="synthetic scene seed")
    ap.add_argument("--baseline", metavar="DIR", help="PYTHONPATH of an older pybridge/exif")
    ap.add_argument("--check-args", default="", help="extra arguments for focusbridge check")
    ap.add_argument("--findings", action="store_true", help="compare findings, no timing")
    ap.add_argument("--generate-only", action="store_true", help="write the sets and stop")
    ap.add_argument("--report", type=Path, default=WORK / "check-results.md")
    args = ap.parse_args(argv)
    args.check_args = args.check_args.split()
    if args.baseline:
        args.baseline = str(Path(args.baseline).resolve())
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    for t in types:
        if t not in TYPES:
            ap.error(f"--types: {t} is not one of {', '.join(TYPES)}")
    sets = []
    if "real" in wanted:
        for folder in args.brackets or DEFAULT_BRACKETS:
            if not folder.is_dir():
                print(f"  (no bracket folder {folder}: left out)")
                continue
            sets.append(real_set(folder))
    for key in wanted:
        if key == "real":
            continue
        if key not in SIZES:
            ap.error(f"--sets: {key} is not real or one of {', '.join(SIZES)}")
        sets.extend(synthetic_sets(key, types, args.frames, args.seed))

    if args.generate_only:
        return 0
    command = " ".join([Path(sys.executable).name, *sys.argv])
    head = [
        "# focusbridge check vs stack (bench/bench_check.py)",
        "",
        f"command: `{command}`",
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "",
    ]
    WORK.mkdir(parents=True, exist_ok=True)
    compile_all(args.baseline)
    if args.findings:
        body = compare_findings(sets, args)
    else:
        print("\n".join(_header(bool(args.baseline))), flush=True)
        rows = bench(sets, args)
        body = _header(bool(args.baseline)) + [_line(r, bool(args.baseline)) for r in rows]
        body += ["", "Findings of the check (last run):", ""]
        body += [f"* {r['set']}: {r['findings']}" for r in rows]
        worst = max((r["check_ratio"] for r in rows), default=0.0)
        body += ["", f"largest check/stack ratio: {worst:.2f} (target <= 0.20)"]
        print(body[-1])
        (WORK / "check-results.json").write_text(json.dumps(rows, indent=1))
    args.report.write_text("\n".join(head + body) + "\n")
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    if not BIN.exists():
        sys.exit(f"{BIN} not found: make the venv first")
    sys.exit(main())
