"""Generalisation studies of `focusbridge check` on varied synthetic brackets: its gap finding,
and (`--findings`) its other findings.

    .venv/bin/python bench/check_scenes.py [--scenes PATTERN,...] [--real] [--report FILE]
    .venv/bin/python bench/check_scenes.py --findings [--real] [--scenes ...] [--baseline DIR]

Renders a set of synthetic focus brackets (once: cached under bench/work/check-scenes/, which
is git-ignored, 1.6 GB) and runs `pybridge.check.check_bracket` in-process on their files:
each bracket complete; with 1, 2 and 3 consecutive frames taken out of the middle; with two
frames one apart taken out (two gaps side by side); and with frame 1 taken out (a gap at the
end pair, where the detector sees the inner frame's blocks only). Prints a table (scene, size,
frames, what was removed, the gaps expected, the gaps found, a verdict, the step ratios, the
share of the frame focused in the missing frames against the gaps' area found) and a summary:
false gaps on complete brackets, gaps found at the right pairs, missed, extra. `--real` adds
the real brackets in ../shared/data/brackets (pcb7 must report its gap [0, 1]). The table
also goes to bench/work/check-scenes.md (and .json). First run about 5 minutes on two cores
(rendering), later runs about a minute.

`--findings` (the other findings): every scene's complete bracket (and with `--real` the
real ones, and make_bracket brackets breathing 0-5 % a frame, for motion) is read once as the
check reads it (check size, the cheap decode) and manipulated there; the check takes those
arrays as they are. Per bracket: complete and reversed (nothing may be reported but what the
bracket shows: wasted only where less than 1 % of the subject, away from the borders, is
focused with detail, from the depth map; real brackets: depthmap10's frames 0, 1); order:
two frames swapped (neighbours, two apart, far apart), one moved, a stretch reversed,
shuffled, a file counter that wrapped (must be out of order, and the suggested order must
restore focus order); padded before, after, both with blurred copies of an end frame (those
must be wasted; order unchanged); duplicates: a frame repeated identically, re-shot (every
frame with fresh noise), re-shot 0.4 px shifted, the whole bracket JPEG-encoded and the copy
encoded again; exposure: gain steps of 3, 6, 10 %, flicker of 2 %, a drift of 2 % a frame, a
vignette change (a neighbour pair whose mean level differs by more than 5 % must be reported,
3-5 % may be, in every case); motion: a patch where the frame is sharp moved 6 or 12 px (at
check size, the threshold is 4) from one frame on. Prints the cases with a wrong or missed
finding, then per manipulation and per finding the rates (false: reported where it may not
be; detected: all it must report found). `--baseline DIR` checks with DIR/pybridge (an older
copy, `git archive HEAD pybridge exif | tar -x -C DIR`) for a before/after. Report:
bench/work/check-findings.md (and .json). About 5 minutes on two cores.

Two generators, unlike each other:

* `make_bracket` (tests/synthetic.py): textured objects at integer depths (each exactly in
  focus in one frame) in front of a slanted plane, disk defocus with occlusion, breathing,
  shifts, flicker; also its "halo" scene (thin hairs in front of a bright backdrop).
* `surface` (here): one continuous textured surface (slanted plane, dome, corrugated "wave",
  or "terraces": flat patches at random, non-integer depths, like parts on a board), with a
  natural multi-scale texture (1/f "pink" noise under a patchy contrast envelope, or the
  all-in-focus photo ../shared/data/brackets/pcb7/expected.jpg scaled), rendered with a
  per-pixel Gaussian (sigma = radius / 2) or disk defocus of radius `step_blur` px per frame
  of focus travel (|depth - k| * step_blur at full size); optionally only part of the frame is
  the subject (an ellipse) on a flat background; slight breathing and shifts.

`step_blur` (b) is the defocus blur radius one focus step makes at full size, so between two
neighbours the worst blur has diameter b: b <= 2 px is a complete bracket in the photographic
sense (circle of confusion about 2 px), the kind this study calls "complete". Brackets with a
larger b are "coarse": evenly stepped but soft between every two frames; a gap reported there
is defensible photographically, though not more at one pair than at another, so such reports
are listed as "coarse" rather than false. With m frames taken out the step there is (m + 1) b:
a gap is expected where (m + 1) b > 2 px and at least 0.5 % of the frame was focused in the
missing frames ("gap"); otherwise the missing frame did not matter ("harmless": reported at
that pair or not, both fine; a gap elsewhere is an EXTRA).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
if "--baseline" in sys.argv[:-1]:  # an older pybridge/ to compare with (read before importing)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--baseline") + 1]).resolve()))
from synthetic import disk_kernel, make_bracket, save_image  # noqa: E402

from pybridge.check import check_bracket, check_long_side  # noqa: E402
from pybridge.frames import probe_frame, read_frame_small  # noqa: E402

WORK = ROOT / "bench" / "work" / "check-scenes"
SHARED = ROOT.parent / "shared" / "data" / "brackets"
PHOTO = SHARED / "pcb7" / "expected.jpg"
COC_PX = 2.0  # blur diameter (px, full size) that still counts as sharp


@dataclass
class Scene:
    name: str
    kind: str  # "make_bracket" or "surface"
    size: tuple[int, int]  # (height, width)
    frames: int
    step_blur: float  # blur radius (px, full size) per focus step
    ext: str = "tif"  # "tif" (16-bit) or "jpg" (8-bit, quality 95)
    noise: float = 0.0
    reverse: bool = False  # far to near: the frames given in the opposite order
    params: dict = field(default_factory=dict)  # generator options

    @property
    def coarse(self) -> bool:
        return self.step_blur > COC_PX

    @property
    def folder(self) -> Path:
        return WORK / self.name


def _scenes() -> list[Scene]:
    """The scenes. Names: generator (mb: make_bracket, sf: surface), texture and shape, size
    in MP, frame count, defocus (g: Gaussian, d: disk) and step blur b in px; jpg: 8-bit JPEG
    (else 16-bit TIFF); part: the subject fills part of the frame; rev: far to near. A scene
    is rendered once under its name: delete its folder after changing it."""
    S = Scene
    return [
        # make_bracket: the benchmark's bracket (noise 0.002, not 0.005; steps 2.2 and 5.6 px)
        S("mb-bench-0.5mp", "make_bracket", (600, 800), 10, 20 / 9, params=dict(slant=0.9)),
        S("mb-bench-3mp", "make_bracket", (1500, 2000), 10, 50 / 9, params=dict(slant=0.9)),
        S("mb-1mp-n12-b2-jpg", "make_bracket", (866, 1155), 12, 2.0, "jpg", 0.01),
        S("mb-0.5mp-n20-b1", "make_bracket", (600, 800), 20, 1.0, params=dict(slant=0.5)),
        S("mb-halo-1mp-n8-b2", "make_bracket", (866, 1155), 8, 2.0, params=dict(scene="halo")),
        S("mb-3mp-n12-b2-rev", "make_bracket", (1500, 2000), 12, 2.0, noise=0.01, reverse=True),
        S("mb-0.5mp-n6-b2-noisy", "make_bracket", (600, 800), 6, 2.0, "jpg", 0.03),
        # finely stepped (a focus-bracketing camera at a small step width): every removal is
        # harmless, and the reference frame, unresampled by the generator, is the sharpest
        S("mb-0.4mp-n28-b0.3-jpg", "make_bracket", (500, 750), 28, 8 / 27, "jpg", 0.01),
        # surface: continuous surfaces, natural textures, Gaussian or disk defocus
        S("sf-pink-slant-0.5mp-n10-g1", "surface", (600, 800), 10, 1.0, params=dict()),
        S("sf-pink-slant-2mp-n15-d2-jpg", "surface", (1225, 1633), 15, 2.0, "jpg", 0.01,
          params=dict(blur="disk")),
        S("sf-photo-dome-3mp-n12-g1.5-jpg", "surface", (1500, 2000), 12, 1.5, "jpg", 0.03,
          params=dict(texture="photo", shape="dome")),
        S("sf-photo-slant-12mp-n8-g2", "surface", (3000, 4000), 8, 2.0,
          params=dict(texture="photo")),
        S("sf-pink-terraces-1mp-n10-d1.5", "surface", (866, 1155), 10, 1.5, noise=0.01,
          params=dict(shape="terraces", blur="disk")),
        S("sf-pink-dome-part-1mp-n12-g1-rev", "surface", (866, 1155), 12, 1.0, reverse=True,
          params=dict(shape="dome", subject=0.35)),
        S("sf-photo-wave-6mp-n20-g1-jpg", "surface", (2000, 3000), 20, 1.0, "jpg",
          params=dict(texture="photo", shape="wave")),
        S("sf-pink-slant-0.5mp-n40-g0.7", "surface", (600, 800), 40, 0.7, noise=0.01),
        S("sf-pink-slant-1mp-n5-d2", "surface", (866, 1155), 5, 2.0, params=dict(blur="disk")),
        S("sf-photo-wave-1mp-n30-g0.3-jpg", "surface", (866, 1155), 30, 0.3, "jpg", 0.01,
          params=dict(texture="photo", shape="wave")),
        S("sf-photo-terr-part-2mp-n10-d2-rev", "surface", (1225, 1633), 10, 2.0, reverse=True,
          params=dict(texture="photo", shape="terraces", subject=0.4, blur="disk")),
        S("sf-pink-dome-1mp-n10-d4-coarse", "surface", (866, 1155), 10, 4.0, noise=0.01,
          params=dict(shape="dome", blur="disk")),
        S("sf-pink-wave-part-12mp-n10-g2-jpg", "surface", (3000, 4000), 10, 2.0, "jpg", 0.01,
          params=dict(shape="wave", subject=0.5)),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- rendering


def _pink(rng, h: int, w: int) -> np.ndarray:
    """1/f noise (amplitude ~ 1/frequency: the spectrum of natural images) under a patchy
    contrast envelope (some places busy, some nearly flat), about 0..1."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f
    t = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    t /= float(t.std()) or 1.0
    env = rng.standard_normal((max(2, h // 64), max(2, w // 64))).astype(np.float32)
    env = cv2.resize(cv2.GaussianBlur(env, (0, 0), 1.5), (w, h), interpolation=cv2.INTER_CUBIC)
    env = np.clip(0.6 + env / (float(env.std()) or 1.0) * 0.5, 0.08, 1.5)
    return np.clip(0.5 + 0.17 * t * env, 0.0, 1.0)


def _photo(h: int, w: int) -> np.ndarray:
    img = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(PHOTO)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    f = max(h / img.shape[0], w / img.shape[1])
    size = (math.ceil(img.shape[1] * f), math.ceil(img.shape[0] * f))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    y0, x0 = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[y0 : y0 + h, x0 : x0 + w])


def _depth(rng, shape: str, h: int, w: int, n: int) -> np.ndarray:
    """Depth (frame units, 0 .. n-1: depth d is in focus in frame d) of the surface."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    th = rng.uniform(0, 2 * math.pi)
    u = (xx - w / 2) * math.cos(th) + (yy - h / 2) * math.sin(th)
    u = (u - u.min()) / float(u.max() - u.min())
    if shape == "slant":
        d = u
    elif shape == "dome":  # nearest in the middle
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        d = r2 / float(r2.max())
    elif shape == "wave":  # a corrugated slope
        d = u + 0.12 * np.sin(2 * math.pi * 3.0 * (xx / w + 0.3 * yy / h))
    elif shape == "terraces":  # flat patches at random depths (Voronoi cells)
        k = 14
        seeds = np.stack([rng.uniform(0, w, k), rng.uniform(0, h, k)], axis=1).astype(np.float32)
        small = 8
        gy, gx = np.mgrid[0 : h // small + 1, 0 : w // small + 1].astype(np.float32) * small
        dist = (gx[..., None] - seeds[:, 0]) ** 2 + (gy[..., None] - seeds[:, 1]) ** 2
        levels = rng.uniform(0, 1, k).astype(np.float32)
        levels[:2] = (0.0, 1.0)  # the surface spans the whole bracket
        cells = levels[np.argmin(dist, axis=2)]
        d = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)
    else:
        raise ValueError(shape)
    d = (d - d.min()) / float(d.max() - d.min())
    return (d * (n - 1)).astype(np.float32)


def _ladder(max_r: float) -> np.ndarray:
    levels = [0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]
    while levels[-1] < max_r:
        levels.append(levels[-1] * 1.2)
    return np.array(levels, np.float32)


def _defocus(img: np.ndarray, r: float, model: str) -> np.ndarray:
    """Blur of radius r (disk) or sigma r/2 (Gaussian); large blurs are done at a reduced
    size (the result is smooth) and scaled back."""
    if r <= 0.0:
        return img
    h, w = img.shape[:2]
    f = 2 ** int(math.log2(r / 3.0)) if r >= 6.0 else 1
    small = img if f == 1 else cv2.resize(img, (w // f, h // f), interpolation=cv2.INTER_AREA)
    if model == "gauss":
        out = cv2.GaussianBlur(small, (0, 0), r / 2.0 / f)
    else:
        k = disk_kernel(r / f)
        out = small if k is None else cv2.filter2D(small, -1, k, borderType=cv2.BORDER_REFLECT)
    if f > 1:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(img.shape)


def _render_surface(scene: Scene, sink) -> np.ndarray:
    """Frames of a `surface` scene, each passed to sink(k, frame); returns the depth map
    (NaN on the flat background)."""
    p = {"texture": "pink", "shape": "slant", "blur": "gauss", "subject": 1.0}
    p.update(scene.params)
    rng = np.random.default_rng(zlib.crc32(scene.name.encode()))
    H, W = scene.size
    n = scene.frames
    breathing, shift = 0.002, 0.7
    margin = int(math.ceil(0.5 * max(H, W) * breathing * n + 2 * shift + 4))
    CH, CW = H + 2 * margin, W + 2 * margin
    if p["texture"] == "photo":
        tex = _photo(CH, CW)
        colour = None
    else:  # grey, coloured after the blur (a linear map: the same as blurring in colour)
        tex = _pink(rng, CH, CW)[..., None]
        c0, c1 = rng.uniform(0.05, 0.45, 3), rng.uniform(0.55, 0.95, 3)
        colour = (c0.astype(np.float32), (c1 - c0).astype(np.float32))
    depth = _depth(rng, p["shape"], CH, CW, n)
    if p["subject"] < 1.0:  # an ellipse of that share of the frame; flat background around
        yy, xx = np.mgrid[0:CH, 0:CW].astype(np.float32)
        f = math.sqrt(p["subject"] / math.pi)
        r = np.hypot((xx - CW / 2) / (f * W), (yy - CH / 2) / (f * H))
        mask = np.clip((1.0 - r) * 40.0, 0.0, 1.0)[..., None]
        flat = 0.45 + 0.03 * (yy / CH)[..., None]
        tex = (tex * mask + flat * (1 - mask)).astype(np.float32)
        # only the subject's depths count; the background is flat (no focus to find)
        inside = mask[..., 0] > 0.5
        sub = depth[inside]
        depth = ((depth - sub.min()) / float(sub.max() - sub.min()) * (n - 1)).astype(np.float32)
    else:
        inside = np.ones(depth.shape, bool)
    levels = _ladder(float(scene.step_blur * (n - 1)))
    index = np.arange(len(levels), dtype=np.float32)
    pos = [
        np.interp(scene.step_blur * np.abs(depth - k), levels, index).astype(np.float32)
        for k in range(n)
    ]
    accum = [np.zeros_like(tex) for _ in range(n)]
    for j, r in enumerate(levels):
        blurred = None
        for k in range(n):
            if not (pos[k].min() < j + 1 and pos[k].max() > j - 1):
                continue
            wgt = np.clip(1.0 - np.abs(pos[k] - j), 0.0, 1.0)
            if blurred is None:
                blurred = _defocus(tex, float(r), p["blur"])
            accum[k] += blurred * wgt[..., None]
    del pos
    noise_rng = np.random.default_rng(1)
    ref = n // 2
    cx, cy = (W - 1) / 2, (H - 1) / 2
    for k in range(n):
        s = 1.0 + breathing * (k - ref)
        tx, ty = rng.uniform(-shift, shift, 2) if k != ref else (0.0, 0.0)
        # frame pixel -> canvas pixel: scaled about the frame centre, shifted
        m = np.array([[1 / s, 0, cx + margin - cx / s + tx], [0, 1 / s, cy + margin - cy / s + ty]])
        img = cv2.warpAffine(accum[k], m, (W, H), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
        accum[k] = None
        img = img.reshape(H, W, -1)
        if colour is not None:
            img = colour[0] + colour[1] * img
        if scene.noise:
            img += noise_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(scene.noise)
        sink(k, np.clip(img, 0.0, 1.0).astype(np.float32))
    depth = np.where(inside, depth, np.nan)
    return depth[margin : margin + H, margin : margin + W]


def render(scene: Scene) -> tuple[list[Path], np.ndarray]:
    """The scene's frame files (rendered once) and its depth map (1/4 size, frame units)."""
    folder = scene.folder
    files = [folder / f"frame_{k:03d}.{scene.ext}" for k in range(scene.frames)]
    done = folder / ".done"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()

        def sink(k, frame):
            save_image(files[k], frame, 16)

        if scene.kind == "make_bracket":
            H, W = scene.size
            opts = dict(noise=scene.noise or 0.002, flicker=0.005, seed=1)
            opts.update(scene.params)
            b = make_bracket(
                scene.frames,
                scene.size,
                max_blur=scene.step_blur * (scene.frames - 1),
                sink=sink,
                **opts,
            )
            depth = b.depth
        else:
            depth = _render_surface(scene, sink)
        small = depth[::4, ::4]
        np.save(folder / "depth.npy", small.astype(np.float32))
        done.write_text(f"{time.monotonic() - t0:.1f} s\n")
        print(f"  rendered {scene.name} in {time.monotonic() - t0:.0f} s", flush=True)
    return files, np.load(folder / "depth.npy")


# ---------------------------------------------------------------------------- the study


def variants(n: int) -> list[tuple[str, tuple[int, ...]]]:
    """(label, frames taken out): whole; 1, 2 and 3 from the middle; two apart (two gaps side
    by side); frame 1 (a gap at the end pair, where only one frame's blocks are seen)."""
    out = [("complete", ())]
    for m in (1, 2, 3):
        if n - m >= 4:
            a = n // 2 - (m + 1) // 2 + (1 if m == 1 else 0)
            out.append((f"-{m} mid", tuple(range(a, a + m))))
    if n - 2 >= 5:
        out.append(("-2 apart", (n // 2 - 1, n // 2 + 1)))
    if n - 1 >= 4:
        out.append(("-1 end", (1,)))
    return out


def expected(scene: Scene, removed: tuple[int, ...], depth: np.ndarray) -> list[tuple]:
    """Per run of consecutive frames taken out: the pair of neighbours it leaves (indexes into
    the frames as given), "gap" or "harmless", and the share of the frame whose focus was in
    the missing frames (nearer them than any frame kept). Harmless: the step left is still
    within the circle of confusion ((m + 1) b <= COC_PX), or hardly anything (< 0.5 % of the
    frame) was focused there."""
    n = scene.frames
    kept = [k for k in range(n) if k not in removed]
    runs: list[list[int]] = []
    for k in sorted(removed):
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    out = []
    for run in runs:
        a, m = run[0], len(run)
        left = kept.index(a - 1)
        pair = [left, left + 1]
        if scene.reverse:
            pair = [len(kept) - 2 - left, len(kept) - 1 - left]
        area = float(((depth > a - 0.5) & (depth < a + m - 0.5)).mean())
        kind = "gap" if (m + 1) * scene.step_blur > COC_PX and area >= 0.005 else "harmless"
        out.append((pair, kind, area))
    return out


def verdict(scene: Scene, want: list[tuple], found: list[list[int]]) -> str:
    must = [p for p, kind, _ in want if kind == "gap"]
    may = [p for p, kind, _ in want if kind == "harmless"]
    extra = [p for p in found if p not in must and p not in may]
    missing = [p for p in must if p not in found]
    if not want:
        return "ok" if not found else ("coarse" if scene.coarse else "FALSE")
    if not must:
        v = "EXTRA" if extra else "ok (harmless)"
    elif missing:
        v = ("MISSED" if len(missing) == len(must) else "PARTLY") + ("+EXTRA" if extra else "")
    else:
        v = "found+EXTRA" if extra else "found"
    return v + (" (coarse)" if extra and scene.coarse else "")


def run_scene(scene: Scene) -> list[dict]:
    files, depth = render(scene)
    rows = []
    for label, removed in variants(scene.frames):
        frames = [f for k, f in enumerate(files) if k not in removed]
        if scene.reverse:
            frames = frames[::-1]
        want = expected(scene, removed, depth)
        t0 = time.perf_counter()
        r = check_bracket(frames)
        took = time.perf_counter() - t0
        found = [g["between"] for g in r.gaps]
        areas = [g["area_fraction"] for g in r.gaps]
        rows.append(
            {
                "scene": scene.name,
                "size": f"{scene.size[1]}x{scene.size[0]}",
                "frames": len(frames),
                "removed": label + (f" {list(removed)}" if removed else ""),
                "expected": " ".join(f"{p} {kind}" for p, kind, _ in want) or "none",
                "found": found,
                "ratios": r.step_ratios,
                "area": (
                    "/".join(f"{a:.1%}" for _, _, a in want)
                    + "; found "
                    + ",".join(f"{a:.1%}" for a in areas)
                )
                if want
                else "",
                "notes": r.notes,
                "verdict": verdict(scene, want, found),
                "coarse": scene.coarse,
                "seconds": round(took, 2),
            }
        )
    return rows


REAL = [  # what today's check reports on the real brackets (pcb7's gap [0, 1] is real)
    ("pcb7", "pcb_*.jpg", (), [[0, 1]]),
    ("pcb7", "pcb_*.jpg", (2, 3), [[1, 2]]),
    ("depthmap10", "pcb_*.JPG", (), []),
    ("ring6", "step*.jpg", (), []),
    ("ring6", "step*.jpg", (2, 3), [[1, 2]]),
]


def run_real() -> list[dict]:
    rows = []
    for name, pattern, removed, want in REAL:
        files = sorted((SHARED / name).glob(pattern))
        if not files:
            continue
        frames = [f for k, f in enumerate(files) if k not in removed]
        t0 = time.perf_counter()
        r = check_bracket(frames)
        found = [g["between"] for g in r.gaps]
        rows.append(
            {
                "scene": f"real {name}",
                "size": f"{r.size[0]}x{r.size[1]}",
                "frames": len(frames),
                "removed": f"-{list(removed)}" if removed else "complete",
                "expected": str(want),
                "found": found,
                "ratios": r.step_ratios,
                "area": ",".join(f"{g['area_fraction']:.1%}" for g in r.gaps),
                "notes": r.notes,
                "verdict": "ok" if found == want else "CHANGED",
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return rows


def _fmt(row: dict) -> str:
    ratios = " ".join("-" if e is None else f"{e:.2f}" for e in row["ratios"])
    return (
        f"| {row['scene']} | {row['size']} | {row['frames']} | {row['removed']} | "
        f"{row['expected']} | {row['found']} | {row['verdict']} | {ratios} | {row['area']} |"
    )


def summary(rows: list[dict]) -> list[str]:
    synth = [r for r in rows if not r["scene"].startswith("real")]
    complete = [r for r in synth if r["expected"] == "none" and not r["coarse"]]
    coarse = [r for r in synth if r["expected"] == "none" and r["coarse"]]
    false = [r for r in complete if r["verdict"] == "FALSE"]
    must = [r for r in synth if " gap" in r["expected"]]
    harmless = [r for r in synth if r["expected"] != "none" and " gap" not in r["expected"]]
    real = [r for r in rows if r["scene"].startswith("real")]

    def count(subset, word):
        return sum(r["verdict"].startswith(word) for r in subset)

    lines = [
        "",
        f"complete brackets with a false gap: {len(false)} of {len(complete)}"
        + (f" ({', '.join(r['scene'] for r in false)})" if false else ""),
        f"coarse (evenly stepped) brackets with a gap reported: "
        f"{sum(bool(r['found']) for r in coarse)} of {len(coarse)}",
        f"frames missing (a photographic gap): all gaps found at the right pairs in "
        f"{count(must, 'found')} of {len(must)}; partly: {count(must, 'PARTLY')}, missed: "
        f"{count(must, 'MISSED')}; with an extra (false) gap: "
        f"{sum('EXTRA' in r['verdict'] for r in must)}",
        f"harmless removals: reported at the pair {sum(r['verdict'] == 'ok (harmless)' and bool(r['found']) for r in harmless)}, "
        f"not reported {sum(not r['found'] for r in harmless)}, a gap elsewhere "
        f"{count(harmless, 'EXTRA')} (of {len(harmless)})",
        f"check time: {sum(r['seconds'] for r in rows):.0f} s in all",
    ]
    if real:
        lines.append(
            f"real brackets as expected: {sum(r['verdict'] == 'ok' for r in real)} of {len(real)}"
        )
    return lines


# ---------------------------------------------------------------------------- findings study


@dataclass
class Case:
    """One manipulated bracket and what the check must (and may) report on it. Frames are
    named by their focus position `pos` (the complete bracket's index; padding frames -1, -2
    before it, n, n + 1 after it; a repeated frame the position of its original), so what is
    reported (indexes into the frames given) is judged whatever the order given. Exposure
    jumps are judged from the frames' mean levels (`judge`), for every case."""

    bracket: str
    name: str
    family: str  # clean, order, duplicates, exposure, motion, wasted
    frames: list
    pos: list[float]
    out_of_order: bool = False  # True: must be out of order; False: must be in focus order
    duplicates: set = field(default_factory=set)  # position pairs that must be duplicates
    motion: tuple[set, set] = (set(), set())  # position pairs: must, may be reported
    wasted: tuple[set, set] = (set(), set())  # positions: must, may be reported wasted


def load_checked(files) -> list[np.ndarray]:
    """The frames as the check reads them (frames.read_frame_small at check_long_side): the
    manipulations are made at that size, and the check takes arrays of it as they are."""
    full = probe_frame(files[0])
    side = check_long_side(max(full.height, full.width))
    return [read_frame_small(f, side)[0].pixels for f in files]


def _pair(pos, i: int, j: int) -> tuple:
    return tuple(sorted((pos[i], pos[j])))


def _blurred(frame: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(frame, (0, 0), sigma).reshape(frame.shape)


def _noisy(frame: np.ndarray, rng, sigma: float) -> np.ndarray:
    return np.clip(frame + rng.normal(0, sigma, frame.shape), 0, 1).astype(np.float32)


def _jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    data = np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8)[..., ::-1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(data), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def _detail_place(frame: np.ndarray, radius: int) -> tuple[int, int]:
    """Where the frame is most detailed (sharp), a patch of `radius` from the borders: where a
    moving subject shows."""
    grey = frame.mean(axis=2)
    energy = cv2.GaussianBlur(cv2.Laplacian(grey, cv2.CV_32F) ** 2, (0, 0), radius / 2)
    h, w = grey.shape
    m = int(1.5 * radius)
    inner = energy[m : h - m, m : w - m]
    y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(x) + m, int(y) + m


def _moved(frame: np.ndarray, centre, radius: int, dx: float) -> np.ndarray:
    """A round patch of the frame moved sideways by dx px (soft-edged), as in the tests."""
    h, w = frame.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cv2.circle(mask, centre, radius, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(2.0, radius / 16))[..., None]
    m = np.float32([[1, 0, dx], [0, 1, 0]])
    shifted = cv2.warpAffine(frame, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return (frame * (1 - mask) + shifted.reshape(frame.shape) * mask).astype(np.float32)


def _times(frames, factors) -> list[np.ndarray]:
    """Frames times per-frame factors (a number, or an image to multiply by), clipped."""
    out = []
    for f, g in zip(frames, factors, strict=True):
        g = np.asarray(g, np.float32)
        out.append(np.clip(f * (g[..., None] if g.ndim == 2 else g), 0, 1).astype(np.float32))
    return out


def cases(name: str, frames: list, allow_wasted: set, wasted_not: set) -> list[Case]:
    """The manipulations of one complete bracket (frames in focus order, as given, at check
    size). `allow_wasted`: positions that may be reported wasted (little or no detail is
    focused there); `wasted_not`: positions that must not be (they add detail)."""
    n = len(frames)
    pos = list(range(n))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    out = []
    keep = {"wasted": (set(), set(allow_wasted))}

    def add(label, family, given, where, **kw):
        out.append(Case(name, label, family, given, list(where), **{**keep, **kw}))

    def shown(label, family, order, **kw):  # an order of the complete bracket's frames
        add(label, family, [frames[k] for k in order], order, **kw)

    shown("complete", "clean", pos)
    shown("reversed", "clean", pos[::-1])
    # order: must be out of order, and the suggested order must restore focus order
    mid = n // 2
    for label, (a, b) in {
        "swap neighbours": (mid, mid + 1),
        "swap 2 apart": (mid - 1, mid + 1),
        "swap far apart": (2, n - 3),
    }.items():
        if 0 <= a < b < n:
            o = pos.copy()
            o[a], o[b] = o[b], o[a]
            shown(label, "order", o, out_of_order=True)
    o = pos.copy()
    o.insert(n - 2, o.pop(1))  # one frame moved: the second one to near the end
    shown("one moved", "order", o, out_of_order=True)
    a, b = n // 3, max(n // 3 + 2, 2 * n // 3)
    shown("stretch reversed", "order", pos[:a] + pos[a:b][::-1] + pos[b:], out_of_order=True)
    shuffled = [int(k) for k in rng.permutation(n)]
    shown("shuffled", "order", shuffled, out_of_order=True)
    k = (2 * n) // 3  # IMG_9999 then IMG_0001: the last third first
    shown("counter wrapped", "order", pos[k:] + pos[:k], out_of_order=True)
    # frames focused before / after the subject: wasted (and in order, no gap)
    before = [_blurred(frames[0], s) for s in (4.0, 2.0)]
    after = [_blurred(frames[-1], s) for s in (2.0, 4.0)]
    for label, (fb, pb, fa, pa) in {
        "padded before": (before, [-2, -1], [], []),
        "padded after": ([], [], after, [n, n + 1]),
        "padded both": (before[1:], [-1], after[:1], [n]),
    }.items():
        pads = set(pb + pa)
        add(label, "wasted", fb + frames + fa, pb + pos + pa, wasted=(pads, pads | allow_wasted))
    # duplicates: frame m shot twice. A re-shot copy differs from its original by noise (every
    # frame gets its own), a slight shift, or another JPEG encoding of the whole bracket
    m = mid - 1
    sigma = 0.004
    noisy = [_noisy(f, rng, sigma) for f in frames]
    shift = np.float32([[1, 0, 0.4], [0, 1, -0.3]])
    # Lanczos: a re-shot frame is not blurred, and bilinear blurs a copy by what its
    # fractional shift decides (by 0.4, 0.3 px: half the focus measure's band), which a
    # check that resamples bicubic then sees as another focus
    moved = cv2.warpAffine(
        frames[m],
        shift,
        frames[m].shape[1::-1],
        flags=cv2.INTER_LANCZOS4,
        borderMode=cv2.BORDER_REFLECT,
    )
    jpeg = [_jpeg(f, 95) for f in frames]
    where = pos[: m + 1] + [m] + pos[m + 1 :]
    for label, given, copy in (
        ("repeated (identical)", frames, frames[m]),
        ("repeated (fresh noise)", noisy, _noisy(frames[m], rng, sigma)),
        (
            "repeated (0.4 px shift, noise)",
            noisy,
            _noisy(moved.reshape(frames[m].shape), rng, sigma),
        ),
        ("repeated (JPEG again)", jpeg, _jpeg(jpeg[m], 90)),
    ):
        add(
            label,
            "duplicates",
            given[: m + 1] + [copy] + given[m + 1 :],
            where,
            duplicates={(m, m)},
        )
    # exposure: a gain step from frame e on, flicker, a smooth drift, a vignette change
    e = mid + 1
    for g in (0.03, 0.06, 0.10):
        add(f"gain step {g:+.0%}", "exposure", _times(frames, [1.0] * e + [1 + g] * (n - e)), pos)
    add("flicker 2 %", "exposure", _times(frames, list(1 + rng.uniform(-0.02, 0.02, n))), pos)
    add("drift 2 %/frame", "exposure", _times(frames, [1.02 ** (k - mid) for k in pos]), pos)
    h, w = frames[0].shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    vignette = 1 - 0.25 * r2  # corners 25 % darker from frame e on (the mean about 8 %)
    add("vignette change", "exposure", _times(frames, [1.0] * e + [vignette] * (n - e)), pos)
    # motion: a patch where frame e is sharp moved from frame e on (4 px at check size is the
    # check's threshold: 6 and 12 px must be found)
    radius = max(16, round(0.12 * min(h, w)))
    centre = _detail_place(frames[e], radius)
    for dx in (6, 12):
        add(
            f"patch moved {dx} px",
            "motion",
            frames[:e] + [_moved(f, centre, radius, dx) for f in frames[e:]],
            pos,
            motion=({(e - 1, e)}, {(e - 1, e)}),
        )
    for c in out:  # a frame that adds detail must not be called wasted
        c.wasted = (c.wasted[0], c.wasted[1] - (wasted_not - c.wasted[0]))
    return out


def _levels(frames) -> list[float]:
    return [float(np.mean(f)) for f in frames]


def judge(case: Case, r) -> dict:
    """What the check reported on a case, against what it must and may report. Exposure: a
    neighbour pair whose mean level differs by more than 5 % must be reported, 3-5 % may be."""
    pos = case.pos
    wrong, missed = [], []
    order_out = r.order == "out of order"
    if order_out != case.out_of_order:
        (missed if case.out_of_order else wrong).append("order")
    restored = None
    if order_out and r.suggested_order:
        seq = [pos[k] for k in r.suggested_order]
        restored = seq == sorted(seq) or seq == sorted(seq, reverse=True)
        if case.out_of_order and not restored:
            missed.append("suggested order")
    dups = {_pair(pos, i, j) for i, j in r.duplicates}
    wrong += [f"duplicate {p}" for p in dups - case.duplicates]
    missed += [f"duplicate {p}" for p in case.duplicates - dups]
    level = _levels(case.frames)
    change = [level[i + 1] / max(level[i], 1e-6) - 1 for i in range(len(level) - 1)]
    jumps = (
        {_pair(pos, i, i + 1) for i, c in enumerate(change) if abs(c) > 0.05},
        {_pair(pos, i, i + 1) for i, c in enumerate(change) if abs(c) > 0.03},
    )
    for key, found, (must, may) in (
        ("jump", {_pair(pos, *j["between"]) for j in r.exposure_jumps}, jumps),
        ("motion", {_pair(pos, *m["between"]) for m in r.motion}, case.motion),
    ):
        wrong += [f"{key} {p}" for p in found - may - must]
        missed += [f"{key} {p}" for p in must - found]
    # every frame of a case is of its bracket: a frame called stray is always wrong
    wrong += [f"stray {pos[k]}" for k in getattr(r, "stray", [])]  # (older code: none)
    wasted = {pos[k] for k in r.wasted}
    must, may = case.wasted
    if not order_out:  # wasted frames are not judged out of order
        wrong += [f"wasted {p}" for p in sorted(wasted - may - must)]
        missed += [f"wasted {p}" for p in sorted(must - wasted)]
    return {
        "bracket": case.bracket,
        "case": case.name,
        "family": case.family,
        "frames": len(case.frames),
        "order": "out" if order_out else "in",
        "restored": restored,
        "duplicates": r.duplicates,
        "jumps": [[*j["between"], j["change"]] for j in r.exposure_jumps],
        "motion": [m["between"] for m in r.motion],
        "wasted": r.wasted,
        "stray": getattr(r, "stray", []),
        "gaps": [g["between"] for g in r.gaps],
        "misaligned": any("alignment failed" in n for n in r.notes),
        "must": [
            key
            for key, want in (
                ("order", case.out_of_order),
                ("duplicate", case.duplicates),
                ("jump", jumps[0]),
                ("motion", case.motion[0]),
                ("wasted", case.wasted[0]),
            )
            if want
        ],
        "wrong": wrong,
        "missed": missed,
    }


REAL_FINDINGS = {  # real brackets: (files, frames focused in front of the subject)
    "pcb7": ("pcb_*.jpg", set()),
    "depthmap10": ("pcb_*.JPG", {0, 1}),
    "ring6": ("step*.jpg", set()),
}
BREATHING = (0.0, 0.005, 0.01, 0.02, 0.05)  # make_bracket's breathing: scale change per frame


def _focused(frames, depth) -> tuple[set, set]:
    """From the depth map (frame units, reference geometry): the frames that must not be
    reported wasted: the subject focused nearest them (|depth - k| < 0.5) is 1 % of it or
    more away from the borders (5 % of the frame: breathing and shifts cut those off some
    frames) and shows detail there (Laplacian energy 4x that of the frame focused farthest
    from it). The others may be."""
    n = len(frames)
    h, w = frames[0].shape[:2]
    d = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
    subject = np.isfinite(d)
    inner = np.zeros((h, w), bool)
    inner[h // 20 : h - h // 20, w // 20 : w - w // 20] = True
    energy = [
        cv2.Laplacian(cv2.GaussianBlur(f.mean(axis=2), (0, 0), 1.0), cv2.CV_32F) ** 2
        for f in frames
    ]
    may, must_not = set(), set()
    for k in range(n):
        zone = subject & inner & (np.abs(np.nan_to_num(d, nan=-99.0) - k) < 0.5)
        far = n - 1 if k < n / 2 else 0
        if zone.sum() >= 0.01 * subject.sum() and (
            energy[k][zone].mean() > 4 * energy[far][zone].mean()
        ):
            must_not.add(k)
        else:
            may.add(k)
    return may, must_not


def findings_brackets(scenes: list[Scene], real: bool):
    """(name, frames at check size, may be wasted, must not be wasted, which families) of
    every complete bracket: the scenes (given in their order: far to near where reversed),
    the real brackets, and make_bracket brackets that breathe (each frame scaled by `b` more
    than the one before; motion only)."""
    for scene in scenes:
        files, depth = render(scene)
        frames = load_checked(files)
        may, must_not = _focused(frames, depth)
        if scene.reverse:
            frames = frames[::-1]
            may = {scene.frames - 1 - k for k in may}
            must_not = {scene.frames - 1 - k for k in must_not}
        yield scene.name, frames, may, must_not, "all"
    if real:
        for name, (pattern, front) in REAL_FINDINGS.items():
            files = sorted((SHARED / name).glob(pattern))
            if files:
                yield f"real {name}", load_checked(files), front, set(), "all"
    for b in BREATHING:
        br = make_bracket(
            10,
            (600, 800),
            max_blur=20.0,
            breathing=b,
            seed=1,
            flicker=0.005,
            noise=0.003,
            slant=0.9,
        )
        may, must_not = _focused(br.frames, br.depth)
        yield f"mb breathing {b:.1%}/frame", br.frames, may, must_not, "motion"


def run_findings(scenes: list[Scene], real: bool) -> list[dict]:
    rows = []
    for name, frames, may, must_not, which in findings_brackets(scenes, real):
        for case in cases(name, frames, may, must_not):
            if which != "all" and case.family not in ("clean", which):
                continue
            t0 = time.perf_counter()
            r = check_bracket(case.frames)
            row = judge(case, r)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            if row["wrong"] or row["missed"]:
                print(_fmt_finding(row), flush=True)
    return rows


def _fmt_finding(row: dict) -> str:
    found = []
    if row["order"] == "out":
        found.append("out of order" + ("" if row["restored"] else " (suggestion wrong)"))
    for key in ("duplicates", "jumps", "motion", "wasted", "gaps"):
        if row[key]:
            found.append(f"{key} {row[key]}")
    if row["misaligned"]:
        found.append("alignment failed")
    return (
        f"| {row['bracket']} | {row['frames']} | {row['case']} | {'; '.join(found) or '-'} | "
        f"{', '.join(row['wrong']) or '-'} | {', '.join(row['missed']) or '-'} |"
    )


def findings_summary(rows: list[dict]) -> list[str]:
    """Per manipulation: brackets, detected (everything it must report found, and for order
    the suggestion right), with a wrong finding (anything it may not report), and which; then
    per finding the false-positive rate over all cases, and the
    detection rate over those that must show it (order: out of order, and the suggested
    order right)."""
    lines = [
        "",
        "| manipulation | brackets | detected | with a wrong finding | wrong findings |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["case"] for r in rows):
        subset = [r for r in rows if r["case"] == name]
        detect = sum(not r["missed"] for r in subset)
        kinds: dict = {}
        for r in subset:
            for w in dict.fromkeys(w.split(" ")[0] for w in r["wrong"]):
                kinds[w] = kinds.get(w, 0) + 1
        lines.append(
            f"| {name} | {len(subset)} | {'-' if subset[0]['family'] == 'clean' else detect} | "
            f"{sum(bool(r['wrong']) for r in subset)} | "
            + (", ".join(f"{k} x{v}" for k, v in kinds.items()) or "-")
            + " |"
        )
    lines += [
        "",
        "| finding | false: cases with it reported wrongly | rate | detected: cases that must "
        "show it, all of it found | rate |",
        "|---|---|---|---|---|",
    ]
    for key in ("order", "duplicate", "jump", "motion", "wasted"):
        bad = sum(any(w.startswith(key) for w in r["wrong"]) for r in rows)
        meant = [r for r in rows if key in r["must"]]
        found = sum(
            not any(
                m.split(" ")[0] == key or (key == "order" and m.startswith("suggested"))
                for m in r["missed"]
            )
            for r in meant
        )
        lines.append(
            f"| {key} | {bad} of {len(rows)} | {bad / max(1, len(rows)):.1%} | "
            f"{found} of {len(meant)} | {found / max(1, len(meant)):.0%} |"
        )
    meant = [r for r in rows if "order" in r["must"]]
    out = [r for r in meant if r["order"] == "out"]
    lines.append(
        f"\norder: out of order found in {len(out)} of {len(meant)} shuffled brackets, the "
        f"suggested order right in {sum(bool(r['restored']) for r in out)} of them"
    )
    lines.append(f"check time: {sum(r['seconds'] for r in rows):.0f} s in all, {len(rows)} checks")
    return lines


def main_findings(scenes: list[Scene], args) -> int:
    head = [
        "| bracket | frames | manipulation | found | wrong | missed |",
        "|---|---|---|---|---|---|",
    ]
    print("cases with a wrong or a missed finding:\n" + "\n".join(head), flush=True)
    rows = run_findings(scenes, args.real)
    tail = findings_summary(rows)
    print("\n".join(tail))
    report = args.report or ROOT / "bench" / "work" / "check-findings.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    bad = [_fmt_finding(r) for r in rows if r["wrong"] or r["missed"]]
    report.write_text("\n".join(head + bad + tail) + "\n")
    report.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"report: {report}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenes", default="", help="comma-separated substrings of scene names")
    ap.add_argument("--real", action="store_true", help="also the real brackets in ../shared")
    ap.add_argument(
        "--findings", action="store_true", help="the study of the other findings (see above)"
    )
    ap.add_argument("--baseline", metavar="DIR", help="check with DIR/pybridge (an older copy)")
    ap.add_argument("--report", type=Path, help="default bench/work/check-scenes.md (-findings.md)")
    args = ap.parse_args(argv)
    wanted = [s for s in args.scenes.split(",") if s]
    scenes = [s for s in _scenes() if not wanted or any(w in s.name for w in wanted)]
    if not PHOTO.exists():
        print(f"  ({PHOTO} not found: the photo-textured scenes are left out)")
        scenes = [s for s in scenes if s.params.get("texture") != "photo"]
    if args.findings:
        return main_findings(scenes, args)
    args.report = args.report or ROOT / "bench" / "work" / "check-scenes.md"
    head = [
        "| scene | size | frames | removed | expected | found | verdict | step ratios | "
        "area expected/found |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(head), flush=True)
    rows = []
    for scene in scenes:
        for row in run_scene(scene):
            rows.append(row)
            print(_fmt(row), flush=True)
    if args.real:
        for row in run_real():
            rows.append(row)
            print(_fmt(row), flush=True)
    tail = summary(rows)
    print("\n".join(tail))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(head + [_fmt(r) for r in rows] + tail) + "\n")
    (args.report.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
