"""Benchmark: `focusbridge batch` against a shell loop of `focusbridge stack`, and through Dask.

    .venv/bin/python bench/bench_batch.py [--brackets 12 --frames 8 --size 1200x1700 --repeat 3]
        [--no-metadata]

Generates (once, cached under bench/work/batch-sets/) BRACKETS synthetic brackets of FRAMES
16-bit TIFF frames each (tests/synthetic.py make_bracket, seed = bracket number), one folder
per bracket; every frame carries the tags of a real Canon JPEG, maker notes included, as a
camera's frames do, so every stack merges metadata with exiftool (`--no-metadata`: frames
without any, as generated; then no exiftool runs), then runs, one after the other on the
same inputs:

1. loop:  `focusbridge stack DIR/*.tif -o OUT/DIR_stacked.tif` for every bracket, sequentially;
2. batch: `focusbridge batch DIR... --by-folder --output-dir OUT --jobs 2`;
3. dask:  the same batch with `--scheduler ADDRESS` of a distributed.LocalCluster(n_workers=2,
   threads_per_worker=1, processes=True, preload=["pybridge.cluster"]) started here
   (started before the clock runs, as a user starts `dask scheduler` and `dask worker
   --preload pybridge.cluster` beforehand, docs/batch.md; everything `focusbridge batch
   --scheduler` does, loading Dask included, is timed).

Wall time, CPU time (user + system) and peak RSS come from `/usr/bin/time -v` around each
command (its peak is the largest single process of the tree, so for batch it is the largest
pool worker).  Dask workers are not children of the command: their peaks are read from each
worker with VmHWM (/proc/self/status) after the run (a fresh cluster per run), and their CPU
time from getrusage before and after, added to the command's.  The loop's peak is the largest
of its `stack` runs, i.e. a single stack's peak.  The nanny leaves its workers' environment
(MALLOC_TRIM_THRESHOLD_...) in this process, so it is put back before the batch command
starts, as from a user's shell.  On a machine that other work shares, compare the rows of
one run: the runs of each round come one after the other, and the table shows the
median of --repeat rounds (with each round's ratios beside it).

Prints a markdown table and writes it to bench/work/batch-results.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
BIN = ROOT / ".venv" / "bin" / "focusbridge"
TIME = "/usr/bin/time"
sys.path.insert(0, str(ROOT / "tests"))

RSS_RE = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")
CPU_RE = re.compile(r"(?:User|System) time \(seconds\): ([\d.]+)")


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def generate(
    sets: Path, brackets: int, frames: int, size: tuple[int, int], camera: Path | None = None
) -> list[Path]:
    """Bracket folders sets/b00 ... (kept between runs: a folder with all frames is reused).
    `camera`: a camera file whose tags (EXIF, maker notes) every frame gets, as a camera's
    frames carry them: then every stack merges metadata with exiftool."""
    from synthetic import make_bracket, save_bracket

    folders = []
    for b in range(brackets):
        folder = sets / f"b{b:02d}"
        folders.append(folder)
        if len(list(folder.glob("*.tif"))) == frames and (folder / ".done").exists():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.monotonic()
        bracket = make_bracket(n_frames=frames, size=size, seed=b, bit_depth=16)
        saved = save_bracket(bracket, folder, ".tif", 16, prefix=f"{folder.name}_")
        if camera is not None:
            subprocess.run(
                ["exiftool", "-q", "-overwrite_original", "-TagsFromFile", str(camera)]
                + ["-all:all", "-ThumbnailImage=", *map(str, saved)],
                check=True,
            )
        (folder / ".done").write_text("")
        print(f"  generated {folder.name} in {time.monotonic() - t0:.1f} s", flush=True)
    return folders


def timed(cmd: list[str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system, its children included) of
    one command under /usr/bin/time -v."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [TIME, "-v", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    m = RSS_RE.search(proc.stderr)
    cpu = sum(float(t) for t in CPU_RE.findall(proc.stderr))
    return wall, int(m.group(1)) // 1024 if m else 0, cpu


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run_loop(folders: list[Path], out: Path) -> dict:
    fresh(out)
    t0 = time.monotonic()
    peaks, walls, cpu = [], [], 0.0
    for d in folders:
        frames = sorted(str(p) for p in d.glob("*.tif"))
        wall, rss, used = timed(
            [str(BIN), "stack", *frames, "-o", str(out / f"{d.name}_stacked.tif")]
        )
        walls.append(wall)
        peaks.append(rss)
        cpu += used
    return {
        "wall": time.monotonic() - t0,
        "cpu": cpu,
        "peak": max(peaks),
        "single": sorted(walls)[len(walls) // 2],
        "workers": [max(peaks)],
    }


def batch_cmd(folders: list[Path], out: Path, *extra: str) -> list[str]:
    return [
        str(BIN),
        "batch",
        *map(str, folders),
        "--by-folder",
        "--output-dir",
        str(out),
        "--progress",
        "none",
        *extra,
    ]


def run_batch(folders: list[Path], out: Path, jobs: int) -> dict:
    fresh(out)
    wall, rss, cpu = timed(batch_cmd(folders, out, "--jobs", str(jobs)))
    return {"wall": wall, "cpu": cpu, "peak": rss, "workers": [rss]}


def _maxrss_mib() -> int:
    """This process's peak RSS (MiB): VmHWM starts afresh at exec, unlike ru_maxrss, which a
    worker started by fork + exec inherits from this (generating) script."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _cpu_seconds() -> float:
    """User + system seconds of this process (a worker) and its children (exiftool)."""
    return sum(
        r.ru_utime + r.ru_stime
        for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def run_dask(folders: list[Path], out: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster

    fresh(out)
    environ = dict(os.environ)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit=0,
            preload=["pybridge.cluster"],  # as docs/batch.md starts workers
        ) as cluster,
        Client(cluster) as client,
    ):
        # the nanny leaves its worker settings (MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS...)
        # in this process's environment; `focusbridge batch`, started from a shell as a user
        # would, must not inherit them
        os.environ.clear()
        os.environ.update(environ)
        base = client.run(_maxrss_mib)
        before = client.run(_cpu_seconds)
        wall, client_rss, client_cpu = timed(
            batch_cmd(folders, out, "--scheduler", cluster.scheduler_address)
        )
        after = client.run(_cpu_seconds)
        peaks = client.run(_maxrss_mib)
    return {
        "wall": wall,
        "cpu": client_cpu + sum(after[w] - before[w] for w in after),
        "peak": max(peaks.values()),
        "client": client_rss,
        "workers": sorted(peaks.values()),
        "idle": max(base.values()),
    }


def combine(runs: list[dict]) -> dict:
    """One row from several rounds: median wall and CPU, the largest peaks."""
    out = dict(runs[0])
    for key in ("wall", "cpu", "single"):
        if key in out:
            out[key] = statistics.median(r[key] for r in runs)
    for key in ("peak", "client", "idle"):
        if key in out:
            out[key] = max(r[key] for r in runs)
    if "workers" in out:
        out["workers"] = max((r["workers"] for r in runs), key=max)
    return out


def check_outputs(out: Path, n: int) -> None:
    got = len(list(out.glob("*_stacked*.tif")))
    if got != n:
        sys.exit(f"{out}: {got} results, expected {n}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brackets", type=int, default=12)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", default="1200x1700", help="HEIGHTxWIDTH (default 1200x1700)")
    ap.add_argument("--jobs", type=int, default=2, help="batch --jobs and Dask workers")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of the three runs, interleaved; the table shows medians (default 3)",
    )
    ap.add_argument(
        "--no-metadata",
        dest="camera_metadata",
        action="store_false",
        help="frames without metadata (as generated) instead of frames with a camera's tags "
        "(tests/data/camera-metadata/Canon.jpg, maker notes included), which every stack "
        "merges onto its result, as with a camera's frames",
    )
    ap.add_argument("--report", default=str(WORK / "batch-results.md"))
    args = ap.parse_args()
    size = parse_size(args.size)
    if not Path(TIME).exists():
        sys.exit(f"{TIME} is missing (apt-get install time)")

    camera = ROOT / "tests" / "data" / "camera-metadata" / "Canon.jpg"
    name = f"{args.brackets}x{args.frames}-{size[0]}x{size[1]}"
    name += "-camera" if args.camera_metadata else ""
    sets = WORK / "batch-sets" / name
    runs = WORK / "batch-runs"
    print(f"inputs: {sets}", flush=True)
    t0 = time.monotonic()
    folders = generate(
        sets, args.brackets, args.frames, size, camera if args.camera_metadata else None
    )
    print(f"inputs ready in {time.monotonic() - t0:.1f} s", flush=True)

    runners = {
        "loop": lambda: run_loop(folders, runs / "loop"),
        "batch": lambda: run_batch(folders, runs / "batch", args.jobs),
        "dask": lambda: run_dask(folders, runs / "dask", args.jobs),
    }
    # rounds interleave the three runs, so a slow spell of a shared machine hits all of them
    rounds: list[dict] = []
    for k in range(args.repeat):
        got = {}
        for key, run in runners.items():
            print(f"round {k + 1}/{args.repeat}: {key} ...", flush=True)
            got[key] = run()
            check_outputs(runs / key, len(folders))
            print(f"  {got[key]['wall']:.1f} s", flush=True)
        rounds.append(got)
    res = {key: combine([r[key] for r in rounds]) for key in runners}

    single = res["loop"]["peak"]
    mp = size[0] * size[1] / 1e6
    lines = [
        f"Batch benchmark: {args.brackets} brackets x {args.frames} frames x "
        f"{size[0]}x{size[1]} ({mp:.1f} MP, 16-bit TIFF"
        + (", a camera's tags on every frame" if args.camera_metadata else ", no metadata")
        + f"); {os.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}",
        "",
        "| run | wall (s) | s/bracket | CPU (s) | peak RSS per worker (MiB) | peak / single stack |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "loop": "shell loop of `stack`",
        "batch": f"`batch --jobs {args.jobs}`",
        "dask": f"`batch --scheduler` (LocalCluster {args.jobs}x1)",
    }
    for key, label in labels.items():
        r = res[key]
        lines.append(
            f"| {label} | {r['wall']:.1f} | {r['wall'] / len(folders):.2f} | {r['cpu']:.1f} | "
            f"{r['peak']} | {r['peak'] / single:.2f} |"
        )
    b_l = res["batch"]["wall"] / res["loop"]["wall"]
    d_b = res["dask"]["wall"] / res["batch"]["wall"]
    lines += [
        "",
        "| ratio | value | target | |",
        "|---|---:|---:|---|",
        f"| batch / loop wall | {b_l:.2f} | <= 0.60 | {'ok' if b_l <= 0.6 else 'MISSED'} |",
        f"| dask / batch wall | {d_b:.2f} | <= 1.15 | {'ok' if d_b <= 1.15 else 'MISSED'} |",
        "",
        f"Single stack: median {res['loop']['single']:.1f} s, peak {single} MiB (largest of the "
        f"loop's runs).  batch peak: largest process of the tree (`/usr/bin/time -v`).  "
        f"Dask workers' peaks {res['dask']['workers']} MiB (VmHWM in each worker; "
        f"{res['dask']['idle']} MiB idle before the run), `batch --scheduler` client process "
        f"{res['dask']['client']} MiB.",
        "",
        f"Wall and CPU: medians of {len(rounds)} interleaved rounds; peaks: the largest of any "
        "round.  Per round, batch / loop: "
        + ", ".join(f"{r['batch']['wall'] / r['loop']['wall']:.2f}" for r in rounds)
        + "; dask / batch: "
        + ", ".join(f"{r['dask']['wall'] / r['batch']['wall']:.2f}" for r in rounds)
        + ".",
    ]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    print(f"written to {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
