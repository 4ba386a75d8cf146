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

PSNR (dB) inside the 3 % border, the whole frame and the depth-edge band.  Project venv:

    .venv/bin/python bench/noise_bound.py [--sizes 1000x1500] [--seeds 0,1] [--sd 0.02,0.04]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from synthetic import make_bracket, psnr  # noqa: E402

from pybridge.pipeline import stack  # noqa: E402

NEIGHBOUR_WEIGHTS = (0.2, 0.4, 0.7, 1.0)


def bounds(spec: dict) -> dict[str, tuple[float, float]]:
    b = make_bracket(**spec)
    n = spec["n_frames"]
    h, w = b.truth.shape[:2]
    border = int(0.03 * max(h, w))
    inner = np.zeros((h, w), bool)
    inner[border : h - border, border : w - border] = True

    def score(img):
        return psnr(img, b.truth, inner), psnr(img, b.truth, inner & b.edge_band)

    aligned = np.stack(
        [
            cv2.warpAffine(f, t[:2], (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
            for f, t in zip(b.frames, b.transforms, strict=True)
        ]
    )
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000x1500", help="HxW, comma-separated")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--sd", default="0.02,0.04", help="noise sigmas")
    args = ap.parse_args()
    base = dict(n_frames=11, breathing=0.01, flicker=0.03, max_blur=8.0)
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
