#!/usr/bin/env python3
"""How far can fusion go on the noise-limited sets?  Oracle bounds beside our result.

run_bench.py's noise-limited sets (11 frames, 1500 x 1000, noise sd 0.02 / 0.04) are scored
against their truth.  This script asks what any *fusion* (choosing or averaging the frames'
pixels, without spatial denoising or deconvolution) could reach there, using what no stacker
knows: the true depth of every pixel and the true frame transforms.

* ``oracle``: every pixel from the frame focused at its true depth (perfectly aligned);
* ``oracle+nb``: that frame averaged with its two neighbours at weight w (best of a few w):
  what overlapping depths of field allow;
* ``ours`` / ``ours-noavg``: ``pybridge.pipeline.stack`` with the defaults / without the
  noise-aware averaging, on the same frames in memory (16-bit quantisation aside, what
  ``focusbridge stack`` does on the bench's TIFFs).

PSNR (dB) inside the 3 % border, the whole frame and the depth-edge band.

``--level0`` asks instead what any *weighting* of the frames' finest pyramid level could reach
(98-99 % of our error is there), with weights that know the truth and the noise-free frames:
over a Gaussian window (sigma 1 and 2 px) the weights that minimise the local squared error
of the weighted noisy level against the truth's (``make_bracket(noise=0)`` gives each frame's
clean level, so the noise term is exact: error = |sum w_k clean_k - truth|^2 + noise * |w|^2),
the coarser levels being ours:

* ``linear``: any weights, negative ones included (a local deconvolution);
* ``non-negative``: weights >= 0 (their sum free), what a fusion can do: solved by projected
  gradient (FISTA, ``--iterations``);
* ``wiener``: ours with its finest level shrunk by the true local signal / (signal + error)
  power over the same window (the ceiling of a local shrinkage denoiser on our result).

Project venv (``--level0``: about 4 min and 3 GB a set):

    .venv/bin/python bench/noise_bound.py [--sizes 1000x1500] [--seeds 0,1] [--sd 0.02,0.04]
    .venv/bin/python bench/noise_bound.py --level0 [--iterations 300] [...]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from synthetic import make_bracket, psnr  # noqa: E402

from pybridge.fuse import _collapse, _laplacian_levels  # noqa: E402
from pybridge.pipeline import stack  # noqa: E402

NEIGHBOUR_WEIGHTS = (0.2, 0.4, 0.7, 1.0)


def _inner(h: int, w: int) -> np.ndarray:
    """The pixels scored: all but a 3 % border."""
    border = int(0.03 * max(h, w))
    inner = np.zeros((h, w), bool)
    inner[border : h - border, border : w - border] = True
    return inner


def _on_truth_grid(b, k: int) -> np.ndarray:
    """Frame k of bracket b warped back with the generator's own transform."""
    h, w = b.truth.shape[:2]
    return cv2.warpAffine(
        b.frames[k],
        b.transforms[k][:2],
        (w, h),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT,
    )


def bounds(spec: dict) -> dict[str, tuple[float, float]]:
    b = make_bracket(**spec)
    n = spec["n_frames"]
    inner = _inner(*b.truth.shape[:2])

    def score(img):
        return psnr(img, b.truth, inner), psnr(img, b.truth, inner & b.edge_band)

    aligned = np.stack([_on_truth_grid(b, k) for k in range(n)])
    focus = np.clip(np.rint(b.depth), 0, n - 1).astype(int)
    rows, cols = np.indices(focus.shape)
    pick = aligned[focus, rows, cols]
    near = aligned[np.clip(focus - 1, 0, n - 1), rows, cols]
    far = aligned[np.clip(focus + 1, 0, n - 1), rows, cols]
    out = {"oracle": score(pick)}
    out["oracle+nb"] = max(
        (score((pick + wt * (near + far)) / (1 + 2 * wt)) for wt in NEIGHBOUR_WEIGHTS),
        key=lambda s: s[0],
    )
    out["ours"] = score(stack(b.frames, crop=False).image)
    out["ours-noavg"] = score(stack(b.frames, crop=False, noise_averaging=False).image)
    return out


WINDOWS = (1.0, 2.0)  # Gaussian sigma (px) of the window the level-0 oracles fit weights over


def _finest(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(finest Laplacian level, the next Gaussian level), as the pyramid fuser splits it."""
    level, down = _laplacian_levels(img, 1)
    return level, down


def _with_finest(level: np.ndarray, down: np.ndarray) -> np.ndarray:
    return np.clip(_collapse([level, down]), 0, 1)


def _non_negative(gram: np.ndarray, target: np.ndarray, start: np.ndarray, iterations: int):
    """Per pixel, argmin over w >= 0 of w.G.w - 2 w.b (G, b: pixels x n x n, pixels x n), by
    FISTA with the step 1 / trace(G) (<= 1 / the largest eigenvalue)."""
    step = 1.0 / np.trace(gram, axis1=1, axis2=2)[:, None]
    x = np.clip(start, 0, None)
    y, t = x.copy(), 1.0
    for _ in range(iterations):
        grad = np.einsum("pij,pj->pi", gram, y) - target
        x_next = np.clip(y - step * grad, 0, None)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = x_next + ((t - 1) / t_next) * (x_next - x)
        x, t = x_next, t_next
    return x


def level0_oracles(spec: dict, iterations: int) -> dict[str, float]:
    """PSNR (dB, inside the 3 % border) of ours and of the finest-level oracles (module doc)."""
    noisy, clean = make_bracket(**spec), make_bracket(**dict(spec, noise=0.0))
    h, w = noisy.truth.shape[:2]
    inner = _inner(h, w)

    def aligned(b, k):  # frame k on the truth's grid, its gain divided out
        return _on_truth_grid(b, k) / b.gains[k]

    n = spec["n_frames"]
    levels = [_finest(aligned(noisy, k))[0] for k in range(n)]
    clean_levels = [_finest(aligned(clean, k))[0] for k in range(n)]
    noise = float(np.mean([np.var(a - c) for a, c in zip(levels, clean_levels, strict=True)]))
    truth = _finest(noisy.truth)[0]
    ours, ours_down = _finest(stack(noisy.frames, crop=False).image)
    out = {"ours": psnr(_with_finest(ours, ours_down), noisy.truth, inner)}
    for sigma in WINDOWS:

        def window(x, sigma=sigma):  # summed over the channels, averaged over the window
            return cv2.GaussianBlur(x.sum(axis=2), (0, 0), sigma)

        gram = np.empty((h, w, n, n), np.float32)
        target = np.empty((h, w, n), np.float32)
        for k in range(n):
            target[..., k] = window(clean_levels[k] * truth)
            for j in range(k, n):
                gram[..., k, j] = gram[..., j, k] = window(clean_levels[k] * clean_levels[j])
        gram += np.float32(3 * noise) * np.eye(n, dtype=np.float32)  # 3 channels a pixel
        weights = np.linalg.solve(gram, target[..., None])[..., 0]
        for name, wts in (
            ("linear", weights),
            (
                "non-negative",
                _non_negative(
                    gram.reshape(-1, n, n),
                    target.reshape(-1, n),
                    weights.reshape(-1, n),
                    iterations,
                ).reshape(h, w, n),
            ),
        ):
            fused = sum(wts[..., k : k + 1] * levels[k] for k in range(n))
            out[f"{name} s{sigma:g}"] = psnr(_with_finest(fused, ours_down), noisy.truth, inner)
        del gram, target, weights
        signal = cv2.GaussianBlur(truth * truth, (0, 0), sigma)
        error = cv2.GaussianBlur((ours - truth) ** 2, (0, 0), sigma)
        shrunk = ours * signal / (signal + error + 1e-12)
        out[f"wiener s{sigma:g}"] = psnr(_with_finest(shrunk, ours_down), noisy.truth, inner)
    return out


def level0_table(args, base: dict) -> None:
    print("| set | " + " | ".join(_LEVEL0_COLUMNS) + " |")
    print("|---|" + "---|" * len(_LEVEL0_COLUMNS))
    for size in args.sizes.split(","):
        hw = tuple(int(v) for v in size.split("x"))
        for sd in (float(v) for v in args.sd.split(",")):
            for seed in (int(v) for v in args.seeds.split(",")):
                r = level0_oracles(dict(base, size=hw, noise=sd, seed=seed), args.iterations)
                cells = " | ".join(f"{r[k]:.2f}" for k in _LEVEL0_COLUMNS)
                print(f"| {hw[1]}x{hw[0]} sd{sd:g} s{seed} | {cells} |", flush=True)


_LEVEL0_COLUMNS = ["ours"] + [
    f"{name} s{sigma:g}" for sigma in WINDOWS for name in ("linear", "non-negative", "wiener")
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000x1500", help="HxW, comma-separated")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--sd", default="0.02,0.04", help="noise sigmas")
    ap.add_argument("--level0", action="store_true", help="the finest level's weight oracles")
    ap.add_argument("--iterations", type=int, default=300, help="for --level0's non-negative")
    args = ap.parse_args()
    base = dict(n_frames=11, breathing=0.01, flicker=0.03, max_blur=8.0)
    if args.level0:
        level0_table(args, base)
        return
    print("| set | oracle | oracle+nb | ours | ours-noavg | ours - oracle+nb |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        hw = tuple(int(v) for v in size.split("x"))
        for sd in (float(v) for v in args.sd.split(",")):
            for seed in (int(v) for v in args.seeds.split(",")):
                r = bounds(dict(base, size=hw, noise=sd, seed=seed))
                cells = " | ".join(f"{r[k][0]:.2f} / {r[k][1]:.2f}" for k in r)
                gap = r["ours"][0] - r["oracle+nb"][0]
                print(f"| {hw[1]}x{hw[0]} sd{sd:g} s{seed} | {cells} | {gap:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
