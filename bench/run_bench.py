#!/usr/bin/env python3
"""focusbridge benchmark: this project against focusweave, rawhdr and align_image_stack+enfuse,
side by side, in one run, on the same inputs.

Run it with the peers venv's interpreter (see bench/README.md):

    bash bench/setup_peers.sh
    bench/work/peers-venv/bin/python bench/run_bench.py [--quick] [--tools ...] [--sets ...]

Every tool runs as a subprocess under ``/usr/bin/time -v`` (wall, user+system CPU, peak RSS),
one at a time.  Outputs are then registered onto the truth (synthetic sets) or onto
pcb7/expected.jpg and scored; on the real brackets also the flat-area noise ratio against the
middle frame (boxes in bench/flat_boxes.json, chosen by bench/choose_flat_boxes.py), and a
picture of side-by-side crops goes to bench/pictures/SET.png; see bench/metrics.py and
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests"), str(HERE)]

import metrics  # noqa: E402
import numpy as np  # noqa: E402
import synthetic  # noqa: E402

WORK = HERE / "work"
PEERS_BIN = WORK / "peers-venv" / "bin"
OURS_BIN = ROOT / ".venv" / "bin" / "focusbridge"
REAL_DATA = Path(os.environ.get("FOCUSBRIDGE_BRACKETS", "/work/shared/data/brackets"))
GNU_TIME = "/usr/bin/time"

ALL_TOOLS = [
    "ours",
    "ours-depthmap",
    "ours-lanczos",
    "ours-noavg",
    "focusweave",
    "rawhdr",
    "enfuse",
]
DEFAULT_TOOLS = ["ours", "focusweave", "rawhdr", "enfuse"]
SYNTH_GROUPS = ["synth", "noise", "halo", "resample", "speed", "memory"]
REAL_SETS = ["ring6", "pcb7", "depthmap10"]
ALL_SETS = SYNTH_GROUPS + REAL_SETS
# extra arguments of our variants (plus --ours-args)
OURS_VARIANTS = {
    "ours": [],
    "ours-depthmap": ["--method", "depthmap"],
    "ours-lanczos": ["--interpolation", "lanczos"],
    "ours-noavg": ["--no-noise-averaging"],
}
# variants that answer one question skip the groups where they would only cost time:
# ours-lanczos is for the resampling table (synthetic sets with a truth), ours-noavg for noise
SKIP_GROUPS = {"ours-lanczos": {"memory", "real"}, "ours-noavg": {"speed", "memory"}}
# tools shown in the main tables (ours-lanczos has its own section)
SECTION_ONLY = {"ours-lanczos"}
FLAT_BOXES = HERE / "flat_boxes.json"
PICTURES = HERE / "pictures"
PUBLISHED = "focus-stack (published)"  # pcb7/expected.jpg, focus-stack's own result
PICTURE_MAX_BYTES = 400_000


# --------------------------------------------------------------------------------------
# bracket sets


@dataclass
class BracketSet:
    name: str
    group: str  # synth | speed | memory | real
    frames: list[Path]
    frame_dir: Path  # a folder holding exactly the frames (focusweave takes a folder)
    truth: Path | None = None  # reference image to score against (truth / expected.jpg)
    edge_band: Path | None = None
    megapixels: float = 0.0
    params: dict = field(default_factory=dict)
    reference_frame: Path | None = None  # real sets: the middle frame (flat boxes, pictures)
    flat: dict | None = None  # real sets: this bracket's entry of bench/flat_boxes.json

    @property
    def synthetic(self) -> bool:
        return self.edge_band is not None


def _synth_specs(quick: bool) -> dict[str, list[dict]]:
    """Generator parameters of each synthetic group (size is (height, width))."""
    if quick:
        q = dict(n_frames=5, size=(240, 360), breathing=0.01, flicker=0.03, noise=0.005)
        return {
            "synth": [dict(q, seed=s) for s in (0,)],
            "noise": [dict(q, noise=0.02, max_blur=8.0, seed=300)],
            "halo": [dict(q, max_blur=8.0, scene="halo", seed=0)],
            "resample": [dict(q, size=(200, 300), max_blur=8.0, seed=0)],
            "speed": [
                dict(
                    n_frames=5,
                    size=(400, 600),
                    breathing=0.003,
                    flicker=0.01,
                    noise=0.005,
                    max_blur=8.0,
                    seed=100,
                )
            ],
            "memory": [
                dict(
                    n_frames=11,
                    size=(400, 600),
                    breathing=0.003,
                    flicker=0.01,
                    noise=0.005,
                    max_blur=8.0,
                    seed=100,
                )
            ],
        }
    q = dict(n_frames=9, size=(600, 900), breathing=0.01, flicker=0.03, noise=0.005, max_blur=8.0)
    big = dict(
        size=(1600, 2400), breathing=0.003, flicker=0.01, noise=0.005, max_blur=16.0, seed=100
    )
    return {
        "synth": [dict(q, seed=s) for s in (0, 1, 2)],
        # noise-limited: 11 frames, 1.5 MP, noise 4x / 8x the quality set's; two seeds each, so
        # one seed where a tool mis-aligns can't carry the comparison
        "noise": [
            dict(q, n_frames=11, size=(1000, 1500), noise=sd, seed=seed)
            for sd in (0.02, 0.04)
            for seed in (0, 1)
        ],
        # halos: thin dark hairs in front of a bright backlit background
        "halo": [dict(q, size=(900, 600), scene="halo", seed=s) for s in (0, 1)],
        # 1 MP for the resampling comparison (the 3.8 MP one is the speed set)
        "resample": [dict(q, size=(816, 1224), seed=0)],
        "speed": [dict(big, n_frames=15)],
        "memory": [dict(big, n_frames=45)],
    }


def _synth_set(group: str, spec: dict, base: Path) -> BracketSet:
    n, (h, w) = spec["n_frames"], spec["size"]
    suffix = {"synth": f"-s{spec['seed']}", "halo": f"-s{spec['seed']}"}.get(group, "")
    if group == "noise":
        suffix = f"-sd{spec['noise']:g}-s{spec['seed']}"
    name = f"{group}-{n}x{w}x{h}{suffix}"
    folder = base / name
    frame_dir = folder / "frames"
    meta_path = folder / "meta.json"
    want = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
    want["generator_version"] = 2
    frames = [frame_dir / f"frame_{i:03d}.tif" for i in range(n)]
    ok = (
        meta_path.exists()
        and json.loads(meta_path.read_text()).get("params") == want
        and all(p.exists() for p in frames)
        and (folder / "truth.tif").exists()
    )
    if not ok:
        if folder.exists():
            shutil.rmtree(folder)
        frame_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        print(f"  generating {name} ...", flush=True)

        def sink(k, img):
            synthetic.save_image(frame_dir / f"frame_{k:03d}.tif", img, 16)

        br = synthetic.make_bracket(**{k: v for k, v in spec.items()}, sink=sink)
        synthetic.save_image(folder / "truth.tif", br.truth, 16)
        np.save(folder / "edge_band.npy", br.edge_band)
        np.save(folder / "depth.npy", br.depth)
        meta = {
            "params": want,
            "transforms": [t.tolist() for t in br.transforms],
            "gains": [g.tolist() for g in br.gains],
            "reference": br.reference,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        meta_path.write_text(json.dumps(meta, indent=1))
        print(f"  generated {name} in {meta['seconds']} s", flush=True)
    return BracketSet(
        name,
        group,
        frames,
        frame_dir,
        folder / "truth.tif",
        folder / "edge_band.npy",
        h * w / 1e6,
        want,
    )


_IMAGE_EXT = {".jpg", ".jpeg", ".tif", ".tiff", ".png"}


def real_frames(src: Path) -> list[Path]:
    """A real bracket's frames: its image files but expected.*, sorted by name (the focus
    order); the reference frame is the middle one, index len // 2, as focusbridge's default."""
    return sorted(
        p
        for p in src.iterdir()
        if p.is_file() and p.suffix.lower() in _IMAGE_EXT and p.stem != "expected"
    )


def _real_set(name: str, base: Path) -> BracketSet | None:
    src = REAL_DATA / name
    if not src.is_dir():
        print(f"  {name}: {src} not found, skipped", flush=True)
        return None
    frames = real_frames(src)
    truth = src / "expected.jpg"
    # focusweave takes a folder: give it one that holds exactly the frames
    frame_dir = base / name / "frames"
    if frame_dir.exists():
        shutil.rmtree(frame_dir)
    frame_dir.mkdir(parents=True)
    for p in frames:
        (frame_dir / p.name).symlink_to(p)
    import cv2

    h, w = cv2.imread(str(frames[0]), cv2.IMREAD_REDUCED_GRAYSCALE_2).shape
    reference = frames[len(frames) // 2]
    return BracketSet(
        name,
        "real",
        frames,
        frame_dir,
        truth if truth.exists() else None,
        None,
        (2 * h) * (2 * w) / 1e6,
        {"source": str(src)},
        reference,
        _flat_entry(name, frames, reference),
    )


def _flat_entry(name: str, frames: list[Path], reference: Path) -> dict | None:
    """This bracket's flat boxes (bench/flat_boxes.json), if they were chosen on these frames."""
    if not FLAT_BOXES.exists():
        print(f"  {name}: {FLAT_BOXES.name} missing: no flat-area noise ratio", flush=True)
        return None
    entry = json.loads(FLAT_BOXES.read_text())["brackets"].get(name)
    if entry is None:
        print(f"  {name}: not in {FLAT_BOXES.name}: no flat-area noise ratio", flush=True)
        return None
    if entry["frames"] != [p.name for p in frames] or entry["reference"] != reference.name:
        print(
            f"  {name}: frames differ from those {FLAT_BOXES.name} was chosen on "
            "(rerun bench/choose_flat_boxes.py): no flat-area noise ratio",
            flush=True,
        )
        return None
    return entry


SEEDED_GROUPS = ("synth", "noise", "halo")  # the groups whose seeds --seeds replaces


def build_sets(names: list[str], quick: bool, seeds: list[int] | None = None) -> list[BracketSet]:
    """The bracket sets of the groups `names`, written under bench/work once. `seeds`: other
    seeds for the synthetic, noise-limited and halo groups than the report's (a check that a
    result is not one seed's)."""
    base = WORK / ("sets-quick" if quick else "sets")
    specs = _synth_specs(quick)
    out: list[BracketSet] = []
    for name in names:
        if name in specs:
            group = specs[name]
            if seeds is not None and name in SEEDED_GROUPS:
                # one spec per other setting (the noise group's two levels), then each seed
                others = {tuple(sorted((k, v) for k, v in s.items() if k != "seed")) for s in group}
                group = [dict(o, seed=seed) for o in sorted(others) for seed in seeds]
            for spec in group:
                out.append(_synth_set(name, spec, base))
        else:
            if quick and name != "ring6":
                continue
            s = _real_set(name, base)
            if s:
                out.append(s)
    return out


# --------------------------------------------------------------------------------------
# tools


@dataclass
class Step:
    argv: list[str]
    cwd: Path | None = None


def tool_steps(
    tool: str, bs: BracketSet, run_dir: Path, ours_args: list[str]
) -> tuple[list[Step], Path]:
    """Commands for one tool on one set, and the output file they produce."""
    out = run_dir / "out.tif"
    frames = [str(p) for p in bs.frames]
    if tool in OURS_VARIANTS:
        extra = list(ours_args) + OURS_VARIANTS[tool]
        return [Step([str(OURS_BIN), "stack", *frames, "-o", str(out), *extra])], out
    if tool == "focusweave":
        return [
            Step(
                [
                    str(PEERS_BIN / "focusweave"),
                    str(bs.frame_dir),
                    "--keep-size",
                    "--output",
                    str(out),
                ]
            )
        ], out
    if tool == "rawhdr":
        # alignment chains every frame onto the previous aligned one (frame 0's geometry),
        # writes float32 TIFFs; pyramid-fusion then fuses them
        pattern = str(run_dir / "aligned-{:05}.tif")
        aligned = [pattern.format(i) for i in range(len(frames))]
        return [
            Step([str(PEERS_BIN / "rawhdr"), "alignment", "-o", pattern, *frames]),
            Step([str(PEERS_BIN / "rawhdr"), "pyramid-fusion", "-o", str(out), *aligned]),
        ], out
    if tool == "enfuse":
        prefix = str(run_dir / "aligned_")
        aligned = [f"{prefix}{i:04d}.tif" for i in range(len(frames))]
        return [
            Step(["align_image_stack", "-m", "--use-given-order", "-a", prefix, *frames]),
            Step(
                [
                    "enfuse",
                    "--exposure-weight=0",
                    "--saturation-weight=0",
                    "--contrast-weight=1",
                    "--hard-mask",
                    "--gray-projector=l-star",
                    "--contrast-window-size=5",
                    "-o",
                    str(out),
                    *aligned,
                ]
            ),
        ], out
    raise ValueError(tool)


def tool_available(tool: str) -> str | None:
    """None if runnable, else why not."""
    if tool.startswith("ours"):
        if not OURS_BIN.exists():
            return f"{OURS_BIN.relative_to(ROOT)} not installed (engine not landed yet?)"
        try:
            r = subprocess.run(
                [str(OURS_BIN), "stack", "--help"], capture_output=True, text=True, timeout=60
            )
        except Exception as e:  # noqa: BLE001
            return f"focusbridge stack --help failed: {e}"
        if r.returncode != 0:
            return (
                "focusbridge stack --help failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
            )
        for arg in OURS_VARIANTS[tool]:
            if arg.startswith("--") and arg not in r.stdout:
                return f"focusbridge stack has no {arg}"
        if tool == "ours-depthmap" and "depthmap" not in r.stdout:
            return "focusbridge stack has no --method depthmap"
        return None
    exe = {"focusweave": PEERS_BIN / "focusweave", "rawhdr": PEERS_BIN / "rawhdr"}.get(tool)
    if exe is not None:
        return None if exe.exists() else f"{exe} missing: run bash bench/setup_peers.sh"
    for t in ("align_image_stack", "enfuse"):
        if not shutil.which(t):
            return f"{t} missing: apt-get install hugin-tools enfuse"
    return None


_TIME_FIELDS = {
    "user": re.compile(r"User time \(seconds\): ([\d.]+)"),
    "sys": re.compile(r"System time \(seconds\): ([\d.]+)"),
    "wall": re.compile(r"Elapsed \(wall clock\) time .*?: ([\d:.]+)"),
    "rss": re.compile(r"Maximum resident set size \(kbytes\): (\d+)"),
    "status": re.compile(r"Exit status: (\d+)"),
}


def _parse_wall(s: str) -> float:
    parts = [float(x) for x in s.split(":")]
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return secs


def _tree_rss_kb(pid: int) -> int:
    """Sum of VmRSS over pid and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
            ppid = int(st[st.rfind(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def run_step(step: Step, log, timeout: float) -> dict:
    with open(log, "a") as lf:
        lf.write("$ " + shlex.join(step.argv) + "\n")
    tfile = Path(str(log) + ".time")
    argv = [GNU_TIME, "-v", "-o", str(tfile), *step.argv]
    t0 = time.perf_counter()
    with open(log, "a") as lf:
        proc = subprocess.Popen(
            argv, stdout=lf, stderr=subprocess.STDOUT, cwd=step.cwd, stdin=subprocess.DEVNULL
        )
        tree_peak, timed_out = 0, False
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                tree_peak = max(tree_peak, _tree_rss_kb(proc.pid))
                if time.perf_counter() - t0 > timeout:
                    timed_out = True
                    proc.kill()
                    proc.wait()
                    break
    wall_py = time.perf_counter() - t0
    res = {
        "argv": step.argv,
        "rc": proc.returncode,
        "timed_out": timed_out,
        "wall_s": wall_py,
        "tree_rss_mb": tree_peak / 1024.0,
    }
    if tfile.exists():
        txt = tfile.read_text()
        m = {k: r.search(txt) for k, r in _TIME_FIELDS.items()}
        if m["user"] and m["sys"]:
            res["cpu_s"] = float(m["user"].group(1)) + float(m["sys"].group(1))
        if m["wall"]:
            res["wall_s"] = _parse_wall(m["wall"].group(1))
        if m["rss"]:
            res["rss_mb"] = int(m["rss"].group(1)) / 1024.0
        if m["status"]:
            res["rc"] = int(m["status"].group(1))
        elif "Command terminated by signal" in txt:
            res["rc"] = -1
    return res


def run_tool(tool: str, bs: BracketSet, base: Path, ours_args, timeout) -> dict:
    run_dir = base / bs.name / tool
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    steps, out = tool_steps(tool, bs, run_dir, ours_args)
    log = run_dir / "log.txt"
    rec: dict = {
        "set": bs.name,
        "group": bs.group,
        "tool": tool,
        "frames": len(bs.frames),
        "megapixels": bs.megapixels,
        "output_path": str(out),
        "steps": [],
    }
    wall = cpu = 0.0
    rss = tree = 0.0
    for st in steps:
        r = run_step(st, log, timeout)
        rec["steps"].append(r)
        wall += r.get("wall_s", 0.0)
        cpu += r.get("cpu_s", 0.0)
        rss = max(rss, r.get("rss_mb", 0.0))
        tree = max(tree, r.get("tree_rss_mb", 0.0))
        if r["rc"] != 0 or r["timed_out"]:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            rec["status"] = "timeout" if r["timed_out"] else f"failed (rc {r['rc']})"
            rec["error"] = " | ".join(tail)
            break
    else:
        rec["status"] = "ok" if out.exists() else "no output"
    rec.update(wall_s=wall, cpu_s=cpu, rss_mb=rss, tree_rss_mb=tree)
    rec["rss_mb_per_mp"] = rss / bs.megapixels if bs.megapixels else None
    return rec


def score(
    rec: dict, bs: BracketSet, truth_cache: dict, crops: dict | None = None, label=None
) -> None:
    """Quality against the truth / expected.jpg; on real brackets also the flat-area noise
    ratio and the picture crops (into `crops[label]`)."""
    out = Path(rec["output_path"])
    if rec.get("status") != "ok":
        return
    try:
        if bs.truth is None:
            img, _, desc = metrics.load_image(out)
            rec["output"] = desc
            rec["sharpness"] = metrics.sharpness(img)
        elif rec["tool"] != PUBLISHED:
            key = str(bs.truth)
            if key not in truth_cache:
                ref, _, _ = metrics.load_image(bs.truth)
                band = np.load(bs.edge_band) if bs.edge_band else None
                truth_cache.clear()
                truth_cache[key] = (ref, band)
            ref, band = truth_cache[key]
            rec.update(metrics.quality(out, ref, band))
    except Exception as e:  # noqa: BLE001
        rec["score_error"] = f"{type(e).__name__}: {e}"
    if bs.flat is None:
        return
    try:
        key = "reference:" + str(bs.reference_frame)
        if key not in truth_cache:
            truth_cache.clear()
            truth_cache[key] = metrics.load_image(bs.reference_frame)[0]
        ref = truth_cache[key]
        img, alpha, _ = metrics.load_image(out)
        img, valid, info = metrics.on_reference(img, alpha, ref)
        rec["flat_registered"] = info["registered"]
        rec["flat_reg_ecc"] = info["reg_ecc"]
        rec.update(metrics.flat_noise_ratio(img, valid, ref, bs.flat["boxes"]))
        # the same on the boxes that are flat in every frame (flat_boxes.json's diagnostic)
        strict = [d["box"] for d in bs.flat["box_diagnostics"] if d["flat_in_every_frame"]]
        if strict:
            rec["flat_ratio_strict"] = metrics.flat_noise_ratio(img, valid, ref, strict)[
                "flat_ratio"
            ]
        if crops is not None:
            crops[label or rec["tool"]] = [_crop(img, c) for c in _picture_boxes(bs)]
            crops.setdefault("", [_crop(ref, c) for c in _picture_boxes(bs)])
    except Exception as e:  # noqa: BLE001
        rec["score_error"] = (
            rec.get("score_error", "") + f" flat: {type(e).__name__}: {e}"
        ).strip()


# --------------------------------------------------------------------------------------
# pictures: 100 % crops of every output on the reference grid, side by side


def _picture_boxes(bs: BracketSet) -> list[list[int]]:
    c = bs.flat["picture_crops"]
    return [c["flat"], c["detail"]]


def _crop(img: np.ndarray, box) -> np.ndarray:
    x, y, w, h = (int(v) for v in box)
    return np.ascontiguousarray(img[y : y + h, x : x + w])


def _label_lines(label: str) -> list[str]:
    if " (" in label:
        a, b = label.split(" (", 1)
        return [a, "(" + b]
    return label.split("\n")


def _compose(columns: list[tuple[str, list[np.ndarray]]], rows: list[str], size: int):
    import cv2

    font, gap, left, head = cv2.FONT_HERSHEY_SIMPLEX, 6, 72, 34
    W = left + len(columns) * (size + gap)
    H = head + len(rows) * (size + gap)
    canvas = np.full((H, W, 3), 255, np.uint8)
    for j, (label, crops) in enumerate(columns):
        x0 = left + j * (size + gap)
        for li, line in enumerate(_label_lines(label)):
            scale = 0.42
            while cv2.getTextSize(line, font, scale, 1)[0][0] > size and scale > 0.25:
                scale -= 0.02
            cv2.putText(canvas, line, (x0, 13 + 15 * li), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        for i, c in enumerate(crops):
            o = (c.shape[0] - size) // 2
            tile = np.clip(c[o : o + size, o : o + size] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            y0 = head + i * (size + gap)
            canvas[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]] = tile[..., ::-1]
    for i, r in enumerate(rows):
        lines = r.split("\n")
        y0 = head + i * (size + gap) + size // 2 - 7 * (len(lines) - 1)
        for li, line in enumerate(lines):
            cv2.putText(canvas, line, (4, y0 + 15 * li), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _highpass_view(columns, target=0.1):
    """The flat crop's luma high-pass (what the noise ratio measures), grey, amplified by one
    gain for all columns so that the reference frame's std becomes `target`."""
    hps = [metrics.highpass(metrics.gray(crops[0])) for _, crops in columns]
    gain = target / max(float(hps[0].std()), 1e-6)
    views = [np.repeat(np.clip(0.5 + gain * h, 0, 1)[..., None], 3, axis=2) for h in hps]
    return views, gain


def write_picture(path: Path, bs: BracketSet, columns) -> dict:
    """One PNG of 100 % crops (rows: flat, its high-pass amplified, detail; columns: the
    reference frame, then each output); the crops shrink (centred) from 160 px until the file
    is under 400 KB."""
    import cv2

    views, gain = _highpass_view(columns)
    columns = [(label, [c[0], v, c[1]]) for (label, c), v in zip(columns, views, strict=True)]
    rows = ["flat", f"flat\nhigh-pass\nx{gain:.0f}", "detail"]
    for size in (160, 144, 128, 112, 96, 80):
        png = _compose(columns, rows, size)
        ok, buf = cv2.imencode(".png", png, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if ok and len(buf) <= PICTURE_MAX_BYTES:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    boxes = _picture_boxes(bs)
    centre = [[b[0] + b[2] // 2, b[1] + b[3] // 2] for b in boxes]
    return {
        "path": str(path),
        "crop_px": size,
        "bytes": len(buf),
        "centres": centre,
        "highpass_gain": round(gain, 1),
    }


# --------------------------------------------------------------------------------------
# reporting


def _fmt(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf"
        return f"{v:.{nd}f}"
    return str(v)


def _table(records, sets, tools, key, nd=2, means=()) -> list[str]:
    """One row per set, one column per tool; `means`: (label, sets) rows of column means."""
    by = {(r["set"], r["tool"]): r for r in records}
    lines = ["| set | " + " | ".join(tools) + " |", "|---|" + "---|" * len(tools)]
    for s in sets:
        row = []
        for t in tools:
            r = by.get((s, t))
            if r is None:
                row.append("–")
            elif r.get("status") != "ok":
                row.append(r.get("status", "?").split(" (")[0] if r.get("status") else "–")
            else:
                row.append(_fmt(r.get(key), nd))
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    for label, mean_sets in means:
        row = []
        for t in tools:
            vals = [
                by[(s, t)].get(key)
                for s in mean_sets
                if (s, t) in by
                and by[(s, t)].get("status") == "ok"
                and by[(s, t)].get(key) is not None
            ]
            row.append(_fmt(float(np.mean(vals)), nd) if len(vals) == len(mean_sets) else "–")
        lines.append(f"| **{label}** | " + " | ".join(row) + " |")
    return lines


def _sets_of(records, groups) -> list[str]:
    """Set names of these groups, in run order."""
    out: list[str] = []
    for r in records:
        if r["group"] in groups and r["set"] not in out:
            out.append(r["set"])
    return out


def targets(records) -> list[dict]:
    by = {(r["set"], r["tool"]): r for r in records if r.get("status") == "ok"}
    synth = sorted({r["set"] for r in records if r["group"] == "synth"})
    speed = sorted({r["set"] for r in records if r["group"] == "speed"})
    memory = sorted({r["set"] for r in records if r["group"] == "memory"})
    noise = _sets_of(records, {"noise"})
    synthetic = _sets_of(records, set(SYNTH_GROUPS))
    real = _sets_of(records, {"real"})
    out = []

    def mean_of(tool, key):
        vals = [by[(s, tool)].get(key) for s in synth if (s, tool) in by]
        if not synth or len(vals) != len(synth) or any(v is None for v in vals):
            return None
        return float(np.mean(vals))

    def gain(s, key="psnr"):
        """ours - focusweave on set s, or None."""
        a, b = by.get((s, "ours"), {}).get(key), by.get((s, "focusweave"), {}).get(key)
        return None if a is None or b is None else a - b

    def add(name, value, limit, cmp, unit=""):
        ok = None if value is None else (value >= limit if cmp == ">=" else value <= limit)
        out.append({"target": name, "value": value, "limit": f"{cmp} {limit}{unit}", "pass": ok})

    for key, lim, label in (
        ("psnr", 1.0, "mean PSNR, ours - focusweave (dB)"),
        ("edge_psnr", 1.5, "depth-edge PSNR, ours - focusweave (dB)"),
    ):
        a, b = mean_of("ours", key), mean_of("focusweave", key)
        add(label, None if a is None or b is None else a - b, lim, ">=")
    for s in noise:
        add(f"noise-limited set {s}: PSNR, ours - focusweave (dB)", gain(s), 1.5, ">=")
    if synthetic:
        gains = {s: gain(s) for s in synthetic}
        complete = all(v is not None for v in gains.values())
        add(
            f"mean PSNR over all {len(synthetic)} synthetic sets, ours - focusweave (dB)",
            float(np.mean(list(gains.values()))) if complete else None,
            1.0,
            ">=",
        )
        worst = min(gains, key=lambda s: gains[s]) if complete else None
        add(
            "worst synthetic set, PSNR ours - focusweave (dB)" + (f": {worst}" if worst else ""),
            gains[worst] if worst else None,
            -0.1,
            ">=",
        )
    if speed:
        a, b = by.get((speed[0], "ours")), by.get((speed[0], "focusweave"))
        add(
            f"wall time, ours / focusweave on {speed[0]}",
            a["wall_s"] / b["wall_s"] if a and b and b["wall_s"] else None,
            0.7,
            "<=",
        )
    if memory and speed:
        a, b = by.get((memory[0], "ours")), by.get((speed[0], "ours"))
        add(
            f"peak RSS, ours {memory[0]} / ours {speed[0]}",
            a["rss_mb"] / b["rss_mb"] if a and b and b["rss_mb"] else None,
            1.1,
            "<=",
        )
    if memory:
        a = by.get((memory[0], "ours"))
        add(
            f"peak RSS per megapixel, ours on {memory[0]} (MB/MP)",
            a["rss_mb_per_mp"] if a else None,
            150,
            "<=",
        )
    for s in real:
        a = by.get((s, "ours"))
        add(
            f"flat-area noise ratio, ours on {s} (result / reference frame)",
            a.get("flat_ratio") if a else None,
            0.8,
            "<=",
        )
    return out


def _flat_section(records, sets: list[BracketSet], tools) -> list[str]:
    real = [s for s in sets if s.group == "real" and s.flat is not None]
    if not real:
        return []
    by = {(r["set"], r["tool"]): r for r in records}
    cols = list(tools) + ([PUBLISHED] if any(r["tool"] == PUBLISHED for r in records) else [])
    L = [
        "### Flat-area noise ratio (result / reference frame)",
        "",
        "Median over the flat boxes of `bench/flat_boxes.json` of std(high-pass of the result's "
        "luma) / std(high-pass of the reference frame's luma), high-pass = luma - "
        "GaussianBlur(luma, sigma 2); below 1: less noise than one frame.  † the output was "
        "registered and resampled onto the reference frame (a resampling smooths noise too).",
        "",
        "| set | boxes | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    strict_rows = []
    for bs in real:
        row, strict = [], []
        for t in cols:
            r = by.get((bs.name, t))
            if r is None:
                row.append("–")
                strict.append("–")
            elif r.get("status") != "ok":
                row.append(r.get("status", "?").split(" (")[0])
                strict.append(row[-1])
            elif r.get("flat_ratio") is None:
                row.append("–")
                strict.append("–")
            else:
                mark = "†" if r.get("flat_registered") else ""
                cell = _fmt(r["flat_ratio"]) + mark
                if r.get("flat_boxes_used", 0) < r.get("flat_boxes", 0):
                    cell += f" ({r['flat_boxes_used']} of {r['flat_boxes']} boxes)"
                row.append(cell)
                v = r.get("flat_ratio_strict")
                strict.append("–" if v is None else _fmt(v) + mark)
        L.append(f"| {bs.name} | {len(bs.flat['boxes'])} | " + " | ".join(row) + " |")
        n_strict = bs.flat.get("boxes_flat_in_every_frame", 0)
        strict_rows.append(f"| {bs.name} | {n_strict} | " + " | ".join(strict) + " |")
    L += [
        "",
        "The same, only on the boxes that are flat in every frame (no aligned frame has more "
        "than 1.2x the reference frame's high-pass there; the other boxes hold faint detail "
        "that some frame brings into focus, which raises the ratio of a result that keeps it; "
        "see bench/README.md, Flat boxes):",
        "",
        "| set | boxes flat in every frame | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
        *strict_rows,
    ]
    return L + [""]


def _resampling_section(records, sets: list[BracketSet]) -> list[str]:
    by = {(r["set"], r["tool"]): r for r in records if r.get("status") == "ok"}
    rows = [s for s in sets if s.synthetic and (s.name, "ours-lanczos") in by]
    rows = [s for s in rows if (s.name, "ours") in by]
    if not rows:
        return []
    L = [
        "### Resampling: `--interpolation cubic` (default) vs `lanczos` (ours)",
        "",
        "| set | MP | PSNR cubic | PSNR lanczos | lanczos - cubic | depth-edge cubic "
        "| depth-edge lanczos | wall cubic (s) | wall lanczos (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted(rows, key=lambda s: s.megapixels):
        c, z = by[(s.name, "ours")], by[(s.name, "ours-lanczos")]
        d = None if c.get("psnr") is None or z.get("psnr") is None else z["psnr"] - c["psnr"]
        L.append(
            f"| {s.name} | {s.megapixels:.2f} | {_fmt(c.get('psnr'))} | {_fmt(z.get('psnr'))} "
            f"| {_fmt(d)} | {_fmt(c.get('edge_psnr'))} | {_fmt(z.get('edge_psnr'))} "
            f"| {_fmt(c.get('wall_s'), 1)} | {_fmt(z.get('wall_s'), 1)} |"
        )
    return L + [""]


def _pictures_section(sets: list[BracketSet], pictures: dict, md_dir: Path | None) -> list[str]:
    shown = [s for s in sets if s.name in pictures]
    if not shown:
        return []
    L = [
        "### Pictures: 100 % crops on the reference frame's grid",
        "",
        "The same crops from every output, registered onto the reference frame where its "
        "geometry differs, beside the reference frame itself: top a flat area (around the "
        "best flat box), then its luma high-pass (luma - GaussianBlur(luma, sigma 2), what the "
        "flat-area noise ratio measures) amplified by one gain for the whole row, then fine "
        "detail (the tile most detailed in some frame); crop positions in "
        "`bench/flat_boxes.json`.",
        "",
    ]
    for s in shown:
        pic = pictures[s.name]
        path = Path(pic["path"])
        link = os.path.relpath(path, md_dir) if md_dir else str(path)
        (fx, fy), (dx, dy) = pic["centres"]
        L += [
            f"**{s.name}** (flat crop centred at ({fx}, {fy}), detail at ({dx}, {dy}); "
            f"{pic['crop_px']} px crops)",
            "",
            f"![{s.name}]({link})",
            "",
        ]
    return L


def render_markdown(records, sets, tools, tgt, pictures=None, md_dir=None) -> str:
    tools = [t for t in tools if t not in SECTION_ONLY]
    names = [s.name for s in sets]
    synth = [s.name for s in sets if s.group == "synth"]
    synthetic = [s.name for s in sets if s.synthetic]
    scored = [s.name for s in sets if s.truth is not None]
    means = []
    if len(synth) > 1:
        means.append(("mean synth", synth))
    if len(synthetic) > len(synth):
        means.append(("mean all synthetic", synthetic))
    L = []
    if tgt:
        L += ["### Targets", "", "| target | value | limit | result |", "|---|---|---|---|"]
        for t in tgt:
            res = "–" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
            L.append(f"| {t['target']} | {_fmt(t['value'])} | {t['limit']} | {res} |")
        L.append("")
    if scored:
        L += ["### PSNR vs truth (dB; pcb7: vs expected.jpg)", ""]
        L += _table(records, scored, tools, "psnr", 2, means) + [""]
        if synthetic:
            L += ["### Depth-edge PSNR (dB, inside edge_band)", ""]
            L += _table(records, synthetic, tools, "edge_psnr", 2, means) + [""]
        L += ["### SSIM", ""]
        L += _table(records, scored, tools, "ssim", 4, means) + [""]
        L += [
            "### Registration ceiling (dB): the truth resampled to the output's geometry and back",
            "",
        ]
        L += _table(records, scored, tools, "reg_ceiling_psnr", 1) + [""]
    L += _flat_section(records, sets, tools)
    L += _resampling_section(records, sets)
    L += (
        [
            "### Wall time (s)"
            + (" (median of repeats)" if any("runs" in r for r in records) else ""),
            "",
        ]
        + _table(records, names, tools, "wall_s", 1)
        + [""]
    )
    L += ["### CPU time, user + system (s)", ""] + _table(records, names, tools, "cpu_s", 1) + [""]
    L += ["### Peak RSS (MB, /usr/bin/time; largest single process)", ""]
    L += _table(records, names, tools, "rss_mb", 0) + [""]
    L += ["### Peak RSS per megapixel of one frame (MB/MP)", ""]
    L += _table(records, names, tools, "rss_mb_per_mp", 1) + [""]
    L += ["### Sharpness (mean gradient energy x1000, no reference)", ""]
    L += _table(records, names, tools, "sharpness", 2) + [""]
    L += ["### Output files", ""] + _table(records, names, tools, "output", 0) + [""]
    L += _pictures_section(sets, pictures or {}, md_dir)
    probs = [r for r in records if r.get("status") != "ok" or r.get("score_error")]
    if probs:
        L += ["### Problems", ""]
        for r in probs:
            L.append(
                f"- {r['set']} / {r['tool']}: {r.get('status')} {r.get('error', '')} "
                f"{r.get('score_error', '')}".rstrip()
            )
        L.append("")
    return "\n".join(L)


def machine_info() -> str:
    def sh(cmd):
        try:
            return subprocess.run(
                cmd, shell=True, capture_output=True, text=True, timeout=60
            ).stdout.strip()
        except Exception as e:  # noqa: BLE001
            return f"({e})"

    import cv2

    proj_py = ROOT / ".venv" / "bin" / "python"
    proj = sh(
        f"{proj_py} -c 'import sys, cv2, numpy; print(sys.version.split()[0], cv2.__version__, numpy.__version__)'"
    )
    fw = sh(
        f"{PEERS_BIN / 'python'} -c 'import importlib.metadata as m; "
        "print(m.version(\"focusweave\"), m.version(\"rawhdr\"))'"
    )
    return "\n".join(
        [
            "```",
            "$ lscpu | head",
            sh("lscpu | head"),
            "$ free -g",
            sh("free -g"),
            "$ uptime   # at the end of the run: other users' load makes timings noisy",
            sh("uptime"),
            "```",
            "",
            f"- peers venv: Python {platform.python_version()}, opencv-python {cv2.__version__}, "
            f"numpy {np.__version__}; focusweave / rawhdr: {fw}",
            f"- project venv (python, cv2, numpy): {proj}",
            f"- enfuse: {sh('enfuse --version | head -1')}; align_image_stack: "
            f"{sh('align_image_stack --help 2>&1 | sed -n 2p')}",
        ]
    )


def _write_results(out_dir, records, sets, tools, argv, a, t_start, partial, pictures):
    """results.json + results.md (rewritten after every tool run, so a cut-off run keeps its data)."""
    tgt = targets(records)
    md = render_markdown(records, sets, tools, tgt, pictures, out_dir)
    cmd = "bench/work/peers-venv/bin/python bench/run_bench.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])
    )
    result = {
        "command": cmd,
        "quick": a.quick,
        "tools": tools,
        "started": t_start,
        "partial": partial,
        "seconds": time.time() - t_start,
        "targets": tgt,
        "records": records,
        "pictures": pictures,
        "sets": [
            {
                "name": s.name,
                "group": s.group,
                "frames": len(s.frames),
                "megapixels": s.megapixels,
                "params": s.params,
            }
            for s in sets
        ],
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "results.md").write_text(
        ("(partial: run still going)\n\n" if partial else "") + md + "\n"
    )
    return md, cmd, tgt


def _finish_real(bs, records, truth_cache, crops, tools, pic_dir, pictures) -> None:
    """After every tool ran on a real bracket: focus-stack's published result (pcb7's
    expected.jpg) scored like an output, and the bracket's picture written."""
    if bs.truth is not None:
        rec = {
            "set": bs.name,
            "group": bs.group,
            "tool": PUBLISHED,
            "status": "ok",
            "published": True,
            "output_path": str(bs.truth),
        }
        score(rec, bs, truth_cache, crops)
        records.append(rec)
        if rec.get("flat_ratio") is not None:
            print(f"  {bs.name} / {PUBLISHED}: flat {_fmt(rec['flat_ratio'], 3)}", flush=True)
    if "" not in crops:
        return
    columns = [(f"reference frame\n{bs.reference_frame.name}", crops[""])]
    columns += [(t, crops[t]) for t in tools if t in crops and t not in SECTION_ONLY]
    if PUBLISHED in crops:
        columns.append((PUBLISHED, crops[PUBLISHED]))
    pictures[bs.name] = write_picture(pic_dir / f"{bs.name}.png", bs, columns)
    print(
        f"  wrote {pictures[bs.name]['path']} ({pictures[bs.name]['bytes'] // 1024} KB, "
        f"{pictures[bs.name]['crop_px']} px crops)",
        flush=True,
    )


# --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="small sets: a smoke test of the whole bench"
    )
    ap.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help=f"comma-separated, from {','.join(ALL_TOOLS)} (default: %(default)s)",
    )
    ap.add_argument(
        "--sets",
        default=",".join(ALL_SETS),
        help=f"comma-separated, from {','.join(ALL_SETS)} (default: all)",
    )
    ap.add_argument(
        "--pictures",
        type=Path,
        default=None,
        help="folder for the real brackets' side-by-side crops (default bench/pictures; "
        "with --quick, the results folder's pictures/)",
    )
    ap.add_argument(
        "--ours-args", default="", help="extra arguments for `focusbridge stack` (one string)"
    )
    ap.add_argument(
        "--timeout", type=float, default=1800, help="seconds per tool step (default 1800)"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each tool up to N times per set (runs over 60 s once) and report the "
        "median wall/CPU time and the largest peak RSS (default 1)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default bench/work or bench/work/quick)",
    )
    ap.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also write a full report (table, command, machine) to this Markdown file",
    )
    ap.add_argument(
        "--seeds",
        default=None,
        help="comma-separated generator seeds for the synth, noise and halo sets instead of "
        "the report's (0,1,2 / 0,1 / 0,1): a check that a result holds on scenes the report "
        "does not have",
    )
    ap.add_argument("--generate-only", action="store_true", help="write the bracket sets and stop")
    a = ap.parse_args(argv)

    tools = [t for t in a.tools.split(",") if t]
    sets_wanted = [s for s in a.sets.split(",") if s]
    for t in tools:
        if t not in ALL_TOOLS:
            ap.error(f"unknown tool {t!r}")
    for s in sets_wanted:
        if s not in ALL_SETS:
            ap.error(f"unknown set {s!r}")
    out_dir = a.out or (WORK / ("quick" if a.quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    pic_dir = a.pictures or (out_dir / "pictures" if a.quick else PICTURES)
    if not Path(GNU_TIME).exists():
        print(f"{GNU_TIME} missing: apt-get install time", file=sys.stderr)
        return 2

    print("bracket sets:", flush=True)
    seeds = [int(v) for v in a.seeds.split(",") if v] if a.seeds else None
    sets = build_sets(sets_wanted, a.quick, seeds)
    for s in sets:
        print(f"  {s.name}: {len(s.frames)} frames, {s.megapixels:.2f} MP", flush=True)
    if a.generate_only:
        return 0

    avail = {t: tool_available(t) for t in tools}
    for t, why in avail.items():
        if why:
            print(f"tool {t}: unavailable: {why}", flush=True)
    ours_args = shlex.split(a.ours_args)
    runs = out_dir / "runs"
    records: list[dict] = []
    truth_cache: dict = {}
    pictures: dict = {}
    t_start = time.time()
    print("load at start:", os.getloadavg(), flush=True)
    # one tool at a time, never in parallel: timings must be clean
    for bs in sets:
        crops: dict = {}  # real brackets: label -> [flat crop, detail crop] ("": reference)
        for tool in tools:
            if bs.group in SKIP_GROUPS.get(tool, ()):
                continue
            if avail[tool]:
                records.append(
                    {
                        "set": bs.name,
                        "group": bs.group,
                        "tool": tool,
                        "status": "unavailable",
                        "error": avail[tool],
                    }
                )
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {bs.name} / {tool} ...", end=" ", flush=True)
            rec = run_tool(tool, bs, runs, ours_args, a.timeout)
            # repeats (timing noise): median wall/CPU, max RSS; a run over 60 s is not repeated
            tries = [rec]
            while len(tries) < a.repeat and rec["status"] == "ok" and rec["wall_s"] < 60:
                again = run_tool(tool, bs, runs, ours_args, a.timeout)
                if again["status"] != "ok":
                    break
                tries.append(again)
            if len(tries) > 1:
                rec = tries[-1]
                rec["runs"] = [
                    {k: t[k] for k in ("wall_s", "cpu_s", "rss_mb", "tree_rss_mb")} for t in tries
                ]
                rec["wall_s"] = float(np.median([t["wall_s"] for t in tries]))
                rec["cpu_s"] = float(np.median([t["cpu_s"] for t in tries]))
                rec["rss_mb"] = max(t["rss_mb"] for t in tries)
                rec["tree_rss_mb"] = max(t["tree_rss_mb"] for t in tries)
                rec["rss_mb_per_mp"] = rec["rss_mb"] / bs.megapixels if bs.megapixels else None
            score(rec, bs, truth_cache, crops)
            records.append(rec)
            msg = f"{rec['status']}  {len(rec.get('runs', [1]))}x  wall {rec['wall_s']:.1f} s  cpu {rec['cpu_s']:.1f} s  rss {rec['rss_mb']:.0f} MB"
            if "psnr" in rec:
                msg += f"  psnr {_fmt(rec['psnr'])}"
            if "edge_psnr" in rec:
                msg += f"  edge {_fmt(rec['edge_psnr'])}"
            if rec.get("flat_ratio") is not None:
                msg += f"  flat {_fmt(rec['flat_ratio'], 3)}" + ("†" * rec["flat_registered"])
            if rec.get("error") or rec.get("score_error"):
                msg += f"  [{rec.get('error', '')}{rec.get('score_error', '')}]"
            print(msg, flush=True)
            # big intermediate files (rawhdr float TIFFs, enfuse remaps) are not kept
            for p in (runs / bs.name / tool).glob("aligned*"):
                p.unlink()
            _write_results(out_dir, records, sets, tools, argv, a, t_start, True, pictures)
        if bs.flat is not None and crops:
            _finish_real(bs, records, truth_cache, crops, tools, pic_dir, pictures)
            _write_results(out_dir, records, sets, tools, argv, a, t_start, True, pictures)

    md, cmd, tgt = _write_results(out_dir, records, sets, tools, argv, a, t_start, False, pictures)
    print()
    print(md)
    print(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    if a.report:
        a.report.write_text(
            "\n".join(
                [
                    "# Benchmark results",
                    "",
                    f"Command: `{cmd}`  ",
                    f"Date: {time.strftime('%Y-%m-%d %H:%M', time.localtime(t_start))}, "
                    f"total {(time.time() - t_start) / 60:.1f} min",
                    "",
                    render_markdown(records, sets, tools, tgt, pictures, a.report.parent),
                    "## Machine",
                    "",
                    machine_info(),
                    "",
                ]
            )
        )
        print(f"wrote {a.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
