"""Scenes the main benchmark does not have (a generalisation check for issue 9's noise-aware
fusion): dark backgrounds behind thin hairs, shot noise, JPEG frames with crushed black corners,
many frames, strong breathing, vignetting. Run with the peers venv's python:

  PY=bench/work/peers-venv/bin/python
  $PY bench/scenes.py gen   [SCENE ...]   # brackets -> bench/work/scenes/sets/SCENE/
  $PY bench/scenes.py run   [SCENE ...] [--tools ours,ours-depthmap,ours-noavg,focusweave,enfuse]
  $PY bench/scenes.py score [SCENE ...]   # -> bench/work/scenes/results.{json,md}
  $PY bench/scenes.py crops SCENE [--box x,y,size]  # 100 % crops -> bench/work/scenes/crops/

Every tool runs alone (one process at a time).  Scenes are post-processed make_bracket()
renders (noise=0, flicker=0), then this script applies its own pixel transform (same on truth),
vignetting, per-frame gains, noise model and file format.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
import metrics  # noqa: E402
import run_bench  # noqa: E402
import synthetic  # noqa: E402

BASE = ROOT / "bench" / "work" / "scenes"
SETS = BASE / "sets"
RUNS = BASE / "runs"

# ----------------------------------------------------------------------------------------
# scenes

# what the scenes share: the halo scene's thin hairs (glints off, the three nearest layers) on
# a flat-fielded backdrop, and the default scene with one background half made flat
_HAIRS = dict(
    base="halo",
    size=(800, 1000),
    max_blur=14,
    breathing=0.001,
    shift=2,
    rotation=0.05,
    glints=False,
    keep_layers=3,
    flicker=0.02,
)
_FLAT = dict(
    base="default-flat",
    size=(800, 1000),
    max_blur=8,
    breathing=0.01,
    shift=3,
    rotation=0.1,
    transform=None,
    flicker=0.03,
    fmt="tif",
)
# (1c)'s camera-like JPEG: shot noise (sd 0.006 at 0.08, 0.02 at 0.85), spatially correlated
# (demosaic-like Gaussian 0.8 px, rescaled to the same sd), 8-bit JPEG q90, 21 frames
_CAMERA_JPEG = dict(_HAIRS, n=21, noise=("shot-corr", 4.5e-4, 2e-3, 0.8), seed=10, fmt="jpg")

SCENES = {
    # (1a) insect-like: bright thin hairs on a dark (~0.08) background, 25 frames, sd 0.02
    "darkbg-bright-hairs": dict(
        _HAIRS, n=25, transform="invert", noise=("gauss", 0.02), seed=3, fmt="tif"
    ),
    # (1b) dark hairs on a dark-grey (~0.13) background, 17 frames, sd 0.015
    "darkbg-dark-hairs": dict(
        _HAIRS,
        n=17,
        max_blur=12,
        breathing=0.0015,
        transform="darken",
        noise=("gauss", 0.015),
        seed=4,
        fmt="tif",
    ),
    # (1c) as 1a, but closer to a real camera JPEG (_CAMERA_JPEG)
    "darkbg-jpeg-corr": dict(_CAMERA_JPEG, transform="invert"),
    # (1d) as 1a (Gaussian sd 0.02, TIFF) but the corners fall to black (clipped noise there),
    # as a dark vignetted insect shot: ~12 % of the frame
    "darkbg-blackcorners": dict(
        _HAIRS,
        n=25,
        transform="invert-blackcorners",
        corner_t=0.45,
        noise=("gauss", 0.02),
        seed=3,
        fmt="tif",
    ),
    # (1e) 1c's camera-like JPEG with 1d's black corners
    "darkbg-jpeg-blackcorners": dict(_CAMERA_JPEG, transform="invert-blackcorners", corner_t=0.45),
    # (1f) as 1e with larger black corners (~25 % of the frame)
    "darkbg-jpeg-blackcorners25": dict(
        _CAMERA_JPEG, transform="invert-blackcorners", corner_t=0.33
    ),
    # (2b) shot noise, background half dark (0.06) and half bright (0.85), flat both:
    # sd = sqrt(8e-4 x + 1e-3^2): 0.007 on the dark half, 0.026 on the bright half
    "shot-darkbright": dict(
        _FLAT,
        flat_colours=(0.06, 0.85),
        n=15,
        max_blur=10,
        breathing=0.003,
        noise=("shot", 8e-4, 1e-3),
        seed=11,
        flicker=0.02,
    ),
    # (2) shot noise: sd = sqrt(6e-4 * x + 2e-3^2)  (0.008 at 0.1, 0.017 at 0.5, 0.023 at 0.9)
    "shotnoise": dict(_FLAT, n=11, noise=("shot", 6e-4, 2e-3), seed=5),
    # (3) 8-bit JPEG q90 with sd 0.01 noise
    "jpeg90": dict(_FLAT, n=11, noise=("gauss", 0.01), seed=6, fmt="jpg"),
    # (4) 36 frames, small focus steps (blur step 8/35 px: ~5 frames pixel-sharp per depth)
    "manyframes": dict(
        _FLAT,
        n=36,
        size=(700, 1000),
        breathing=0.0005,
        shift=2,
        rotation=0.05,
        noise=("gauss", 0.01),
        seed=7,
        flicker=0.02,
    ),
    # (5) smooth vignetted bright background (halo scene without glints), low noise
    "vignette": dict(
        _HAIRS,
        n=11,
        max_blur=10,
        breathing=0.01,
        shift=3,
        rotation=0.1,
        keep_layers=2,
        transform="vignette",
        noise=("gauss", 0.002),
        seed=8,
        fmt="tif",
    ),
    # (6) strong breathing: 0.6 %/frame, 4.8 % across 9 frames
    "breathing5": dict(_FLAT, n=9, breathing=0.006, noise=("gauss", 0.01), seed=9),
}


class _Patches:
    """default-flat: the second background texture (one half-plane) becomes a smooth flat
    colour; glints=False: the halo scene's glints are not drawn."""

    def __init__(self, flat_half: bool, no_glints: bool, keep_layers: int = 1, flat_colours=None):
        self.flat_half, self.no_glints, self.keep_layers = flat_half, no_glints, keep_layers
        self.flat_colours = flat_colours  # both background halves flat: (first, second) grey

    def __enter__(self):
        self.orig_tex = synthetic._texture
        self.orig_circle = synthetic.cv2.circle
        self.orig_init_halo = synthetic._Scene._init_halo
        calls = {"n": 0}
        orig_tex = self.orig_tex

        def tex(rng, h, w, scale, kind=None):
            t = orig_tex(rng, h, w, scale, kind)
            if self.flat_colours and kind is not None and h > 300 and w > 300:
                c = np.float32(self.flat_colours[calls["n"]])
                calls["n"] += 1
                g = 0.02 * synthetic._smooth_noise(rng, h, w, 60.0)
                return np.clip(c * (1 + g[..., None]) * np.ones(3, np.float32), 0.01, 0.99).astype(
                    np.float32
                )
            if self.flat_half and kind is not None and h > 300 and w > 300:
                calls["n"] += 1
                if calls["n"] == 2:
                    c = rng.uniform(0.2, 0.6, 3).astype(np.float32)
                    g = 0.03 * synthetic._smooth_noise(rng, h, w, 60.0)
                    t = np.clip(c[None, None] * (1 + g[..., None]), 0.02, 0.98).astype(np.float32)
            return t

        synthetic._texture = tex
        if self.no_glints or self.keep_layers > 1:
            orig_circle, orig_init = self.orig_circle, self.orig_init_halo
            no_glints, keep = self.no_glints, self.keep_layers

            def init_halo(scene, *a, **k):
                if no_glints:
                    synthetic.cv2.circle = lambda *aa, **kk: None
                try:
                    orig_init(scene, *a, **k)
                finally:
                    synthetic.cv2.circle = orig_circle
                # fewer hair layers (every keep-th depth), so there is open background
                scene.layers = scene.layers[::keep]

            synthetic._Scene._init_halo = init_halo
        return self

    def __exit__(self, *exc):
        synthetic._texture = self.orig_tex
        synthetic.cv2.circle = self.orig_circle
        synthetic._Scene._init_halo = self.orig_init_halo


def _transform(img, kind, vig=None):
    if kind == "invert":
        return 0.95 * (1.0 - img)  # bg 0.88-0.95 -> ~0.05-0.11; hairs -> 0.82-0.93
    if kind == "darken":
        return 0.15 * img  # bg ~0.13-0.14, hairs ~0.003-0.02
    if kind == "vignette":
        return img * vig[..., None]
    if kind == "invert-blackcorners":
        return 0.95 * (1.0 - img) * vig[..., None]
    return img


def _vignette(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    return (1.0 - 0.5 * r2).astype(np.float32)


def gen(name: str) -> None:
    spec = SCENES[name]
    out = SETS / name
    if out.exists():
        shutil.rmtree(out)
    (out / "frames").mkdir(parents=True)
    t0 = time.time()
    H, W = spec["size"]
    scene = "halo" if spec["base"] == "halo" else "default"
    with _Patches(
        spec["base"] == "default-flat",
        not spec.get("glints", True),
        spec.get("keep_layers", 1),
        spec.get("flat_colours"),
    ):
        br = synthetic.make_bracket(
            spec["n"],
            (H, W),
            breathing=spec["breathing"],
            shift=spec["shift"],
            rotation=spec["rotation"],
            flicker=0.0,
            noise=0.0,
            seed=spec["seed"],
            max_blur=spec["max_blur"],
            scene=scene,
        )
    vig = _vignette(H, W) if spec["transform"] == "vignette" else None
    if spec["transform"] == "invert-blackcorners":
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        r2 = ((xx - (W - 1) / 2) ** 2 + (yy - (H - 1) / 2) ** 2) / ((W / 2) ** 2 + (H / 2) ** 2)
        vig = np.clip((spec["corner_t"] + 0.15 - r2) / 0.15, 0, 1).astype(np.float32)
        print(f"  black corners: {float((vig < 0.05).mean()):.3f} of the frame")
    rng = np.random.default_rng(1000 + spec["seed"])
    ref = br.reference
    clean, paths = [], []
    for k, f in enumerate(br.frames):
        img = _transform(f, spec["transform"], vig)
        if k != ref:
            img = img * (1 + rng.uniform(-spec["flicker"], spec["flicker"], 3)).astype(np.float32)
        img = np.clip(img, 0, 1).astype(np.float32)
        clean.append(img)
        nz = spec["noise"]
        if nz[0] == "gauss":
            sd = np.float32(nz[1])
        else:
            sd = np.sqrt(nz[1] * img + nz[2] ** 2).astype(np.float32)
        z = rng.standard_normal(img.shape, dtype=np.float32)
        if nz[0] == "shot-corr":
            z = cv2.GaussianBlur(z, (0, 0), nz[3])
            z /= z.std()
        noisy = np.clip(img + z * sd, 0, 1)
        p = out / "frames" / f"frame_{k:03d}.{spec['fmt']}"
        if spec["fmt"] == "jpg":
            data = np.round(noisy * 255).astype(np.uint8)[..., ::-1]
            ok, buf = cv2.imencode(
                ".jpg", np.ascontiguousarray(data), [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
            p.write_bytes(buf.tobytes())
        else:
            synthetic.save_image(p, noisy, 16)
        paths.append(p)
    truth = np.clip(_transform(br.truth, spec["transform"], vig), 0, 1)
    synthetic.save_image(out / "truth.tif", truth, 16)
    np.save(out / "edge_band.npy", br.edge_band)
    np.save(out / "depth.npy", br.depth)
    # flat boxes: flat (luma high-pass std) in every *clean* frame on the reference grid,
    # and in the truth, and not touching the depth-edge band
    B = 48
    hp_t = metrics.highpass(metrics.gray(truth))
    warped_hp = []
    for k, c in enumerate(clean):
        w = (
            c
            if k == ref
            else cv2.warpAffine(
                c,
                br.transforms[k][:2],
                (W, H),
                flags=cv2.INTER_CUBIC,
                borderMode=cv2.BORDER_REFLECT,
            )
        )
        warped_hp.append(metrics.highpass(metrics.gray(w)))
    band = cv2.dilate(br.edge_band.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    mg = int(0.08 * min(H, W))
    cands = []
    for y in range(mg, H - mg - B, B // 2):
        for x in range(mg, W - mg - B, B // 2):
            if band[y : y + B, x : x + B].any():
                continue
            s = max(float(h[y : y + B, x : x + B].std()) for h in warped_hp + [hp_t])
            lum = float(metrics.gray(truth)[y : y + B, x : x + B].mean())
            if 0.03 < lum < 0.97:
                cands.append((s, x, y, lum))
    # noise of one frame's high-pass at this luma: keep boxes whose clean structure is far
    # below it (< 0.0008 absolute, i.e. < 1/5 .. 1/25 of the noise high-pass)
    cands.sort()
    boxes = [([x, y, B, B], lum) for s, x, y, lum in cands if s < 0.0008]
    # spread them out: greedy, no overlap; at most 15 per luma class (<0.3, 0.3-0.6, >0.6)
    chosen, per = [], {0: 0, 1: 0, 2: 0}
    for b, lum in boxes:
        cls = 0 if lum < 0.3 else 1 if lum <= 0.6 else 2
        if per[cls] >= 15:
            continue
        if all(abs(b[0] - c[0]) >= B or abs(b[1] - c[1]) >= B for c in chosen):
            chosen.append(b)
            per[cls] += 1
        if len(chosen) >= 30:
            break
    meta = dict(
        spec=spec,
        reference=ref,
        frames=[str(p) for p in paths],
        boxes=chosen,
        box_lumas=[
            round(float(metrics.gray(truth)[b[1] : b[1] + B, b[0] : b[0] + B].mean()), 3)
            for b in chosen
        ],
        n_candidates=len(cands),
        seconds=round(time.time() - t0, 1),
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(
        f"{name}: {len(paths)} frames, {len(chosen)} flat boxes "
        f"(luma {np.round(meta['box_lumas'][:6], 3).tolist()}...), {meta['seconds']} s",
        flush=True,
    )


# ----------------------------------------------------------------------------------------
# tools

TOOLS = ["ours", "ours-depthmap", "ours-noavg", "focusweave", "enfuse"]


def run(name, tools):
    meta = json.loads((SETS / name / "meta.json").read_text())
    frames = [Path(p) for p in meta["frames"]]
    for tool in tools:
        rd = RUNS / name / tool
        if rd.exists():
            shutil.rmtree(rd)
        rd.mkdir(parents=True)
        # the commands run_bench.py gives each tool
        bracket = run_bench.BracketSet(name, "synth", frames, SETS / name / "frames")
        cmds, outp = run_bench.tool_steps(tool, bracket, rd, [])
        t0 = time.time()
        rc = 0
        with open(rd / "log.txt", "w") as log:
            for c in cmds:
                rc = subprocess.run(
                    c.argv,
                    cwd=c.cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=900,
                ).returncode
                if rc:
                    break
        for p in rd.glob("aligned_*.tif"):
            p.unlink()
        wall = time.time() - t0
        (rd / "status.json").write_text(json.dumps(dict(rc=rc, wall=wall, ok=outp.exists())))
        print(f"{name} {tool}: rc {rc} {wall:.1f} s", flush=True)


# ----------------------------------------------------------------------------------------
# scoring


def score(name):
    meta = json.loads((SETS / name / "meta.json").read_text())
    truth, _, _ = metrics.load_image(SETS / name / "truth.tif")
    band = np.load(SETS / name / "edge_band.npy")
    reff, _, _ = metrics.load_image(meta["frames"][meta["reference"]])
    boxes = meta["boxes"]
    # near-edge flat mask: in the depth-edge band, truth locally flat (|high-pass| < 0.002
    # over 9x9), 3 % border off
    hp_t = np.abs(metrics.highpass(metrics.gray(truth)))
    near = band & (cv2.dilate(hp_t, np.ones((9, 9), np.uint8)) < 0.002)
    b3 = int(0.03 * min(near.shape))
    near[:b3] = near[-b3:] = False
    near[:, :b3] = near[:, -b3:] = False
    hp_ref = metrics.highpass(metrics.gray(reff))
    near_ref = float(hp_ref[near].std()) if near.any() else float("nan")
    rows = {}
    # the reference frame itself, as a baseline row
    metrics.flat_noise_ratio(reff, np.ones(reff.shape[:2], bool), reff, boxes)
    rows["(reference frame)"] = dict(
        psnr=metrics.psnr(reff, truth),
        flat_ratio=1.0,
        ref_hp=[metrics.box_std(metrics.highpass(metrics.gray(reff)), b) for b in boxes],
    )
    extra_tools = sorted(p.name for p in (RUNS / name).iterdir() if p.name not in TOOLS)
    for tool in TOOLS + extra_tools:
        rd = RUNS / name / tool
        st = rd / "status.json"
        if not st.exists():
            continue
        s = json.loads(st.read_text())
        rec = dict(wall=round(s["wall"], 1), rc=s["rc"])
        outp = rd / "out.tif"
        if not outp.exists():
            rows[tool] = rec
            continue
        q = metrics.quality(outp, truth, band)
        rec.update(
            psnr=q["psnr"],
            edge_psnr=q["edge_psnr"],
            ssim=q["ssim"],
            reg_scale=q["reg_scale"],
            valid=q["valid_fraction"],
        )
        img, alpha, desc = metrics.load_image(outp)
        rec["output"] = desc
        img2, valid, info = metrics.on_reference(img, alpha, reff)
        fr = metrics.flat_noise_ratio(img2, valid, reff, boxes)
        hp_o = metrics.highpass(metrics.gray(img2))
        m = near & valid
        rec["near_ratio"] = float(hp_o[m].std()) / near_ref if m.any() else None
        lumas = meta["box_lumas"]
        used = [
            luma
            for b, luma in zip(boxes, lumas, strict=False)
            if valid[b[1] : b[1] + b[3], b[0] : b[0] + b[2]].all()
        ]
        if len(used) == len(fr["flat_ratios"]):
            dark = [r for r, luma in zip(fr["flat_ratios"], used, strict=False) if luma < 0.3]
            bright = [r for r, luma in zip(fr["flat_ratios"], used, strict=False) if luma > 0.6]
            rec["flat_dark"] = float(np.median(dark)) if dark else None
            rec["flat_bright"] = float(np.median(bright)) if bright else None
            rec["n_dark_bright"] = (len(dark), len(bright))
        rec.update(
            flat_ratio=fr["flat_ratio"],
            flat_used=fr["flat_boxes_used"],
            flat_registered=info["registered"],
            flat_ratio_max=max(fr["flat_ratios"]) if fr["flat_ratios"] else None,
        )
        # flat-box PSNR vs truth (noise + bias in flat areas), on the truth grid
        reg = metrics.register(img, truth, alpha)
        fm = np.zeros(truth.shape[:2], bool)
        for x, y, w, h in boxes:
            fm[y : y + h, x : x + w] = True
        rec["flat_psnr"] = metrics.psnr(reg.warped, truth, fm & reg.valid)
        rows[tool] = rec
    fm = np.zeros(truth.shape[:2], bool)
    for x, y, w, h in boxes:
        fm[y : y + h, x : x + w] = True
    rows["(reference frame)"]["flat_psnr"] = metrics.psnr(reff, truth, fm)
    rows["(reference frame)"]["edge_psnr"] = metrics.psnr(reff, truth, band)
    rows["(reference frame)"]["near_ratio"] = 1.0
    return dict(scene=name, boxes=len(boxes), rows=rows, near_px=int(near.sum()))


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render(results):
    lines = []
    for r in results:
        spec = SCENES[r["scene"]]
        lines.append(
            f"\n### {r['scene']}  ({spec['n']} frames {spec['size'][1]}x{spec['size'][0]}, "
            f"noise {spec['noise']}, {spec['fmt']}, {r['boxes']} flat boxes, "
            f"{r.get('near_px')} near-edge flat px)\n"
        )
        lines.append(
            "| tool | PSNR | edge PSNR | flat-box PSNR | flat ratio (median) | "
            "flat ratio (max box) | near-edge flat ratio | wall s |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        extra = []
        for tool, rec in r["rows"].items():
            lines.append(
                f"| {tool} | {fmt(rec.get('psnr'))} | {fmt(rec.get('edge_psnr'))} | "
                f"{fmt(rec.get('flat_psnr'))} | {fmt(rec.get('flat_ratio'))}"
                f"{'†' if rec.get('flat_registered') else ''} | {fmt(rec.get('flat_ratio_max'))} | {fmt(rec.get('near_ratio'))} | "
                f"{fmt(rec.get('wall'), 1)} |"
            )
            if rec.get("n_dark_bright") and all(rec["n_dark_bright"]):
                extra.append(
                    f"{tool}: dark boxes {fmt(rec['flat_dark'])}, bright boxes "
                    f"{fmt(rec['flat_bright'])} {tuple(rec['n_dark_bright'])}"
                )
        if extra:
            lines.append("\nflat ratio by box luma (<0.3 / >0.6): " + "; ".join(extra))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# crops


def crops(name, box=None, tools=None, gain=None):
    meta = json.loads((SETS / name / "meta.json").read_text())
    truth, _, _ = metrics.load_image(SETS / name / "truth.tif")
    reff, _, _ = metrics.load_image(meta["frames"][meta["reference"]])
    if box is None:
        b = meta["boxes"][0]
        box = (b[0] + b[2] // 2 - 80, b[1] + b[3] // 2 - 80, 160)
    x, y, s = box
    x, y = max(0, x), max(0, y)
    cols = [("truth", truth), ("ref frame", reff)]
    for tool in tools or TOOLS:
        p = RUNS / name / tool / "out.tif"
        if p.exists():
            img, alpha, _ = metrics.load_image(p)
            img, _, _ = metrics.on_reference(img, alpha, reff)
            cols.append((tool, img))
    tiles, hps = [], []
    for lab, im in cols:
        c = np.clip(im[y : y + s, x : x + s], 0, 1)
        hp = metrics.highpass(metrics.gray(im))[y : y + s, x : x + s]
        tiles.append((lab, c))
        hps.append(hp)
    g = gain or 0.12 / max(1e-6, float(np.percentile(np.abs(hps[1]), 99)))
    g = min(g, 200.0)
    row1, row2 = [], []
    for (lab, c), hp in zip(tiles, hps, strict=False):
        t = (c * 255).astype(np.uint8)[..., ::-1].copy()
        cv2.putText(t, lab[:14], (3, 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 255, 255), 1)
        row1.append(np.pad(t, ((0, 2), (0, 2), (0, 0))))
        h = np.clip(0.5 + hp * g, 0, 1)
        h8 = np.repeat((h * 255).astype(np.uint8)[..., None], 3, axis=2)
        row2.append(np.pad(h8, ((0, 2), (0, 2), (0, 0))))
    img = np.vstack([np.hstack(row1), np.hstack(row2)])
    (BASE / "crops").mkdir(exist_ok=True)
    p = BASE / "crops" / f"{name}_{x}_{y}_{s}.png"
    cv2.imwrite(str(p), img)
    # also a 2x upscaled version for viewing
    cv2.imwrite(
        str(p.with_name(p.stem + "_x2.png")),
        cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST),
    )
    print(p, f"hp gain {g:.1f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["gen", "run", "score", "crops"])
    ap.add_argument("scenes", nargs="*")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--box", default=None)
    ap.add_argument("--gain", type=float, default=None)
    a = ap.parse_args()
    names = a.scenes or list(SCENES)
    if a.cmd == "gen":
        for n in names:
            gen(n)
    elif a.cmd == "run":
        for n in names:
            run(n, a.tools.split(","))
    elif a.cmd == "score":
        res_path = BASE / "results.json"
        old = json.loads(res_path.read_text()) if res_path.exists() else {}
        for n in names:
            old[n] = score(n)
            print(render([old[n]]), flush=True)
        res_path.write_text(json.dumps(old, indent=1))
        (BASE / "results.md").write_text(render([old[k] for k in SCENES if k in old]))
    else:
        box = tuple(int(v) for v in a.box.split(",")) if a.box else None
        crops(names[0], box, a.tools.split(",") if a.tools else None, a.gain)


if __name__ == "__main__":
    main()
