#!/usr/bin/env python3
"""Choose the flat boxes of the real brackets, once, and write bench/flat_boxes.json.

The flat-area noise ratio of run_bench.py measures noise where a bracket has no detail in any
frame; this script fixes where that is, by one rule (bench/README.md, "Flat-area noise ratio"):

1. frames sorted by name, reference = the middle frame (index n // 2, focusbridge's default);
2. every frame aligned onto the reference with focusbridge's own transforms
   (``focusbridge stack ... --report r.json``: ``reference_to_frame`` of each frame; cubic);
3. candidate boxes: 64 x 64 tiles on a grid that starts 10 % of the width/height in from the
   top-left and stays 10 % away from every border;
4. a tile is eligible when every aligned frame covers it (coverage eroded by 7 px, so the
   high-pass sees no border) and its mean luma lies in 0.03 .. 0.97 in every frame (not
   clipped);
5. score = the largest, over the frames, of the tile's std of the high-pass
   ``luma - GaussianBlur(luma, sigma=2)`` (bench/metrics.py; luma 0.299 R + 0.587 G + 0.114 B
   of 0..1 RGB): a tile is only flat if it is flat in every frame, whichever frame is in focus
   there;
6. keep the lowest-scoring 10 % of the eligible tiles (rounded up, at least 4), lowest first.

Diagnostic, not part of the rule: ``flat_in_every_frame`` marks a box whose score is at most
1.2x the reference frame's std there (no frame brings detail into focus that the reference
lacks); a bracket where few boxes pass has no area flat in every frame, and bench/README.md
says so.

Also written, for the pictures run_bench.py makes: a 160 x 160 crop centred on the best flat box
("flat") and one centred on the eligible tile with the highest score ("detail": the most
fine detail some frame has in focus).  Each box also carries its diagnostics: the score, the
smallest per-frame std (a score far above it means some frame has detail there) and the
reference frame's std and mean luma.

Run it with the peers venv (it needs numpy, opencv and the project's focusbridge CLI):

    bench/work/peers-venv/bin/python bench/choose_flat_boxes.py [--sets ring6,pcb7,depthmap10]

and paste the table it prints into bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import cv2  # noqa: E402
import metrics  # noqa: E402
import numpy as np  # noqa: E402
from run_bench import OURS_BIN, REAL_DATA, real_frames  # noqa: E402

OUT = HERE / "flat_boxes.json"
TILE = 64
BORDER = 0.10
LUMA_RANGE = (0.03, 0.97)
KEEP_FRACTION = 0.10
MIN_BOXES = 4
CROP = 160
# diagnostic only (not part of the rule): a box counts as flat in every frame when no aligned
# frame has more than this many times the reference frame's high-pass std there.  The
# reference frame is not resampled, so it carries the most noise (the resampled frames have
# up to about 25 % less in the boxes of ring6); more than 1.2x in some frame means detail there.
FLAT_FACTOR = 1.2
RULE = (
    "frames sorted by name, reference = middle frame (index n // 2); frames aligned onto the "
    "reference with focusbridge's transforms (stack --report, cubic); 64x64 tiles on a grid "
    "starting 10 % in from the top-left, at least 10 % away from every border; eligible when "
    "covered by every aligned frame (coverage eroded by 7 px) and mean luma in 0.03..0.97 in "
    "every frame; score = max over frames of std(luma - GaussianBlur(luma, sigma 2)) in the "
    "tile; keep the lowest-scoring 10 % of the eligible tiles (rounded up, at least 4)"
)


def transforms(frames: list[Path]) -> list[np.ndarray]:
    """reference_to_frame (3x3) of every frame, from focusbridge's report."""
    with tempfile.TemporaryDirectory(prefix="fb-flat-") as tmp:
        out, rep = Path(tmp) / "out.tif", Path(tmp) / "r.json"
        argv = [str(OURS_BIN), "stack", *map(str, frames), "-o", str(out), "--report", str(rep)]
        argv += ["--no-metadata", "--progress", "none"]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        report = json.loads(rep.read_text())
    return [np.array(f["reference_to_frame"], np.float64) for f in report["frames"]]


def tile_grid(W: int, H: int) -> list[tuple[int, int]]:
    x0, y0 = math.ceil(BORDER * W), math.ceil(BORDER * H)
    x1, y1 = math.floor((1 - BORDER) * W), math.floor((1 - BORDER) * H)
    return [(x, y) for y in range(y0, y1 - TILE + 1, TILE) for x in range(x0, x1 - TILE + 1, TILE)]


def crop_around(cx: float, cy: float, W: int, H: int) -> list[int]:
    x = int(min(max(round(cx - CROP / 2), 0), W - CROP))
    y = int(min(max(round(cy - CROP / 2), 0), H - CROP))
    return [x, y, CROP, CROP]


def choose(name: str) -> dict:
    src = REAL_DATA / name
    frames = real_frames(src)
    ref_i = len(frames) // 2
    mats = transforms(frames)
    ref = metrics.load_image(frames[ref_i])[0]
    H, W = ref.shape[:2]
    grid = tile_grid(W, H)
    stds = np.zeros((len(frames), len(grid)))
    means = np.zeros((len(frames), len(grid)))
    covered = np.ones(len(grid), bool)
    for k, (path, M) in enumerate(zip(frames, mats, strict=True)):
        img = metrics.load_image(path)[0]
        flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
        warped = cv2.warpPerspective(img, M, (W, H), flags=flags, borderMode=cv2.BORDER_REFLECT)
        cover = cv2.warpPerspective(
            np.ones(img.shape[:2], np.uint8),
            M,
            (W, H),
            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
        )
        cover = cv2.erode(cover, np.ones((15, 15), np.uint8)) > 0
        luma = metrics.gray(np.clip(warped, 0, 1))
        hp = metrics.highpass(luma)
        for j, (x, y) in enumerate(grid):
            sl = (slice(y, y + TILE), slice(x, x + TILE))
            covered[j] &= bool(cover[sl].all())
            stds[k, j] = hp[sl].std()
            means[k, j] = luma[sl].mean()
        print(
            f"  {name}: {path.name} aligned (scale {math.sqrt(abs(np.linalg.det(M[:2, :2]))):.4f})"
        )
    lo, hi = LUMA_RANGE
    eligible = covered & (means.min(axis=0) >= lo) & (means.max(axis=0) <= hi)
    score = stds.max(axis=0)
    idx = [j for j in np.argsort(score, kind="stable") if eligible[j]]
    keep = idx[: max(MIN_BOXES, math.ceil(KEEP_FRACTION * len(idx)))]
    boxes = []
    for j in keep:
        x, y = grid[j]
        boxes.append(
            {
                "box": [x, y, TILE, TILE],
                "score": round(float(score[j]), 6),
                "min_frame_std": round(float(stds[:, j].min()), 6),
                "reference_std": round(float(stds[ref_i, j]), 6),
                "reference_luma": round(float(means[ref_i, j]), 4),
                "flat_in_every_frame": bool(score[j] <= FLAT_FACTOR * stds[ref_i, j]),
            }
        )
    flat_x, flat_y = grid[keep[0]]
    det = idx[-1]
    det_x, det_y = grid[det]
    return {
        "source": str(src),
        "frames": [p.name for p in frames],
        "reference": frames[ref_i].name,
        "reference_index": ref_i,
        "size": [W, H],
        "grid_tiles": len(grid),
        "eligible_tiles": len(idx),
        "boxes": [b["box"] for b in boxes],
        "boxes_flat_in_every_frame": sum(b["flat_in_every_frame"] for b in boxes),
        "box_diagnostics": boxes,
        "eligible_score_quantiles": {
            q: round(float(np.quantile(score[eligible], float(q))), 6)
            for q in ("0.1", "0.5", "0.9")
        },
        "picture_crops": {
            "flat": crop_around(flat_x + TILE / 2, flat_y + TILE / 2, W, H),
            "detail": crop_around(det_x + TILE / 2, det_y + TILE / 2, W, H),
        },
    }


def _one_line(m: re.Match) -> str:
    return "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="ring6,pcb7,depthmap10")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    result = {
        "rule": RULE,
        "tile": TILE,
        "border_fraction": BORDER,
        "luma_range": list(LUMA_RANGE),
        "keep_fraction": KEEP_FRACTION,
        "min_boxes": MIN_BOXES,
        "highpass_sigma": metrics.HIGHPASS_SIGMA,
        "written_by": "bench/choose_flat_boxes.py",
        "brackets": {},
    }
    for name in [s for s in a.sets.split(",") if s]:
        result["brackets"][name] = choose(name)
    text = json.dumps(result, indent=1)
    # one line per box / crop / size: [x, y, w, h]
    text = re.sub(r"\[\s+(-?[\d.]+(?:,\s+-?[\d.]+){1,3})\s+\]", _one_line, text)
    a.out.write_text(text + "\n")
    print(f"wrote {a.out}\n")
    print(
        "| bracket | reference | eligible tiles | boxes (x, y; all 64 x 64) | scores "
        "| flat in every frame |"
    )
    print("|---|---|---|---|---|---|")
    for name, b in result["brackets"].items():
        xy = ", ".join(f"({x}, {y})" for x, y, _, _ in b["boxes"])
        sc = [d["score"] for d in b["box_diagnostics"]]
        print(
            f"| {name} | {b['reference']} | {b['eligible_tiles']} of {b['grid_tiles']} | {xy} "
            f"| {min(sc):.4f} .. {max(sc):.4f} (median of eligible "
            f"{b['eligible_score_quantiles']['0.5']:.4f}) "
            f"| {b['boxes_flat_in_every_frame']} of {len(b['boxes'])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
