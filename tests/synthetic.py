"""Synthetic focus brackets with a known all-in-focus truth.

``make_bracket`` renders a small 2.5-D scene through a simulated focus bracket:

Scene
    * a textured background plane (far; depth ``n-1`` on one side, slanted towards the
      camera by ``slant * (n-1)`` frame units across the image, direction random);
    * several occluding objects (discs, rotated rectangles, smooth blobs), each with its
      own texture (multi-scale noise, wavy stripes, random fine tiles, text-like glyphs at several
      sizes), at integer depths spread over ``0 .. n-2``.  Textures are not exactly periodic
      (random tiles instead of a checkerboard, wavy stripes only on objects), so no aligner is
      trapped by a period ambiguity.  Nearer objects occlude farther ones,
      so there are depth edges everywhere.
    With ``scene="halo"`` the scene is instead made for halos: hairs and bristles (thin dark
    lines 1-3 px wide: long curved hairs and fans of short strokes, colour 0.02-0.14) on one
    layer per near depth ``0 .. n // 2``, in front of a bright backlit background plane (near
    white, 0.88-0.95 with a slow light fall-off, so it reads as defocused; small specular glints
    of radius 0.7-2.5 px reach 1.0) with the default scene's slant.  Defocused glints spread into
    bright discs over the hairs, defocused hairs into faint dark bands over the background.
    ``depth`` is measured in *frame units*: depth ``d`` is in focus in frame ``d``
    (frame 0 focuses nearest).  Objects are piecewise constant in depth, the plane is slanted.

Rendering of frame ``k`` (on a canvas larger than the frame by a margin that covers the
worst-case warp and blur)
    * defocus: disk kernel (antialiased, radius ``r = max_blur * |depth - k| / (n - 1)``;
      ``r <= 0.5`` px is an exact identity, so frame ``k`` is pixel-sharp where ``depth == k``);
    * layered occlusion model: layers are rendered back to front; each object's colour
      premultiplied by its alpha *and* its alpha are blurred by the same disk kernel and
      composited ``out = C_blur + (1 - A_blur) * out``.  A blurred near object therefore
      spreads over the background behind it -- the situation that produces halos in stackers.
      The slanted plane uses a per-pixel blur radius (interpolation between a ladder of
      disk-blurred copies).
    * geometry: focus breathing (scale ``1 + breathing * (k - ref)`` about the image centre),
      a random shift (uniform, up to ``shift`` px per axis) and rotation (up to ``rotation``
      degrees); the reference frame ``ref = n // 2`` has the identity.  The canvas is sampled
      with ``cv2.warpAffine`` (``INTER_CUBIC``, ``BORDER_REFLECT``) so every frame has valid
      content up to its borders;
    * exposure flicker: per-channel gain ``1 +- flicker`` (the reference frame has gain 1);
    * Gaussian noise of sigma ``noise``; clip to 0..1; optional quantisation (``bit_depth``).

Outputs (``Bracket``)
    ``frames``      float32 HxWx3 RGB in 0..1.
    ``truth``       the all-in-focus (pinhole, unblurred) composite in the reference frame's
                    geometry, same size as the frames, no gain, no noise.
    ``depth``       float32 HxW depth of the visible surface in reference geometry (frame units).
    ``transforms``  3x3 float64, ``transforms[k]`` maps frame-``k`` pixel coordinates to
                    reference/truth pixel coordinates (pixel centres at integers, OpenCV
                    convention), i.e. ``cv2.warpAffine(frame_k, transforms[k][:2], (W, H))``
                    puts frame ``k`` onto the truth's grid.
    ``gains``       per-frame float32 (3,) per-channel gains that were applied.
    ``edge_band``   bool HxW: pixels within ``max(8, max_blur)`` px of a depth discontinuity
                    (for depth-edge PSNR, where halos live).
    ``unwarped``    only with ``keep_unwarped=True``: frame ``k`` rendered (blur only: no warp,
                    gain or noise) in the reference geometry.

``save_bracket`` writes the frames as 16-bit (or 8-bit) TIFF via tifffile, or JPEG/PNG via
``cv2.imencode``; ``save_image`` writes one image; ``psnr`` is the usual peak-signal-to-noise
ratio for data in 0..1 (optionally inside a mask).

Speed: 9 frames of 480x640 render in about 0.5 s on one core (see tests/test_synthetic.py).
This module only needs numpy, cv2 and (for TIFF output) tifffile, so the benchmark can use it
from another virtual environment.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "Bracket",
    "SCENES",
    "make_bracket",
    "save_bracket",
    "save_image",
    "psnr",
    "disk_kernel",
]

SCENES = ("default", "halo")


@dataclass
class Bracket:
    frames: list[np.ndarray]
    truth: np.ndarray
    depth: np.ndarray
    transforms: list[np.ndarray]
    gains: list[np.ndarray]
    edge_band: np.ndarray
    reference: int = 0
    unwarped: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def n_frames(self) -> int:
        return len(self.frames)


# --------------------------------------------------------------------------------------
# kernels


def disk_kernel(radius: float) -> np.ndarray | None:
    """Antialiased, normalised disk kernel; None (identity) for radius <= 0.5 px."""
    if radius <= 0.5:
        return None
    r_int = int(math.ceil(radius + 0.5))
    y, x = np.mgrid[-r_int : r_int + 1, -r_int : r_int + 1]
    k = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0).astype(np.float32)
    return k / k.sum()


def _blur(img: np.ndarray, radius: float, border=cv2.BORDER_REFLECT) -> np.ndarray:
    k = disk_kernel(radius)
    if k is None:
        return img
    return cv2.filter2D(img, -1, k, borderType=border)


def _radius_ladder(max_r: float) -> np.ndarray:
    """Blur radii used for per-pixel (slanted plane) blur: 0.5 px steps up to 3, then x1.15."""
    levels = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    while levels[-1] < max_r:
        levels.append(levels[-1] * 1.15)
    return np.array(levels, dtype=np.float64)


# --------------------------------------------------------------------------------------
# textures

_GLYPHS = string.ascii_letters + string.digits + "#%&@"


def _smooth_noise(rng, h, w, sigma):
    n = rng.standard_normal((h, w)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    s = float(n.std()) or 1.0
    return n / s


def _text_layer(rng, h, w, scale):
    """Text-like glyph pattern at a few sizes, values 0..1 (1 = ink)."""
    img = np.zeros((h, w), np.uint8)
    fonts = [
        cv2.FONT_HERSHEY_SIMPLEX,
        cv2.FONT_HERSHEY_PLAIN,
        cv2.FONT_HERSHEY_DUPLEX,
        cv2.FONT_HERSHEY_COMPLEX_SMALL,
    ]
    for fs in (0.5, 0.9, 1.6):
        fscale = fs * scale
        font = fonts[int(rng.integers(len(fonts)))]
        (tw, th), _ = cv2.getTextSize("Mg", font, fscale, 1)
        line_h = max(4, int(th * 1.9))
        y = int(rng.integers(line_h // 2, 2 * line_h))
        # only draw every other band for each size so the sizes interleave
        band = 0
        while y < h + line_h:
            if band % 3 == int(fs * 10) % 3:
                n_chars = max(4, w // max(3, tw // 2) + 2)
                txt = "".join(rng.choice(list(_GLYPHS), size=n_chars))
                x0 = -int(rng.integers(0, max(1, tw)))
                cv2.putText(img, txt, (x0, y), font, fscale, 255, 1 if fs < 1 else 2, cv2.LINE_AA)
            y += line_h
            band += 1
    return img.astype(np.float32) / 255.0


def _texture(rng, h, w, scale, kind=None):
    """h x w x 3 float32 texture in about 0.05..0.95 with detail at several scales."""
    kinds = ("noise", "stripes", "text", "tiles")
    if kind is None:
        kind = kinds[int(rng.integers(len(kinds)))]
    fine = _smooth_noise(rng, h, w, 0.7)
    mid = _smooth_noise(rng, h, w, 2.0 * scale)
    coarse = _smooth_noise(rng, h, w, 8.0 * scale)
    if kind == "noise":
        t = 0.5 + 0.16 * fine + 0.12 * mid + 0.10 * coarse
    elif kind == "stripes":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        th = rng.uniform(0, np.pi)
        period = rng.uniform(3.0, 9.0) * max(1.0, scale * 0.7)
        # wavy stripes: the phase wanders, so the pattern is not exactly periodic
        ph = (xx * math.cos(th) + yy * math.sin(th)) * (2 * np.pi / period) + 1.5 * coarse
        t = 0.5 + 0.3 * np.sin(ph) + 0.06 * fine + 0.08 * coarse
    elif kind == "tiles":
        # random (not periodic) binary blocks: sharp edges without the period ambiguity of a
        # checkerboard, which would be an unfair trap for the aligners being compared
        c = max(2, int(round(rng.uniform(2, 6) * max(1.0, scale * 0.6))))
        cells = (rng.random((h // c + 2, w // c + 2)) < 0.5).astype(np.float32)
        oy, ox = int(rng.integers(c)), int(rng.integers(c))
        t = np.repeat(np.repeat(cells, c, axis=0), c, axis=1)[oy : oy + h, ox : ox + w]
        t = 0.25 + 0.5 * t + 0.06 * fine + 0.08 * coarse
    else:  # text
        ink = _text_layer(rng, h, w, scale)
        t = 0.75 - 0.6 * ink + 0.05 * fine + 0.08 * coarse
    t = np.clip(t, 0.0, 1.0).astype(np.float32)
    c0 = rng.uniform(0.05, 0.5, 3).astype(np.float32)
    c1 = rng.uniform(0.5, 0.95, 3).astype(np.float32)
    if rng.random() < 0.5:
        c0, c1 = c1, c0
    tex = c0[None, None, :] * (1.0 - t[..., None]) + c1[None, None, :] * t[..., None]
    # a little independent per-channel detail so colour edges are not all luminance edges
    tex += (
        0.03 * _smooth_noise(rng, h, w, 1.0)[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
    )
    return np.clip(tex, 0.02, 0.98).astype(np.float32)


# --------------------------------------------------------------------------------------
# scene


@dataclass
class _Layer:
    y0: int
    x0: int
    premult: np.ndarray  # h x w x 3, colour * alpha
    alpha: np.ndarray  # h x w
    depth: float


def _object_mask(rng, h, w, kind, scale):
    """Antialiased mask (float32 0..1) of an object filling roughly an h x w box."""
    sub = 4  # sub-pixel bits for cv2 drawing
    m = np.zeros((h, w), np.uint8)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    if kind == "disc":
        r = min(h, w) / 2.0 - 1.5
        cv2.circle(m, (int(cx * 16), int(cy * 16)), int(r * 16), 255, -1, cv2.LINE_AA, sub)
    elif kind == "rect":
        ang = rng.uniform(0, 180)
        side = min(h, w) - 3.0
        box = cv2.boxPoints(
            ((cx, cy), (side * rng.uniform(0.55, 0.7), side * rng.uniform(0.8, 0.98)), ang)
        )
        # rotated box must fit inside the square: shrink if needed
        ext = np.abs(box - [cx, cy]).max()
        box = (box - [cx, cy]) * min(1.0, (side / 2.0) / ext) + [cx, cy]
        cv2.fillPoly(m, [np.round(box * 16).astype(np.int32)], 255, cv2.LINE_AA, sub)
    else:  # blob
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rr = np.hypot((yy - cy) / (h / 2.0), (xx - cx) / (w / 2.0))
        f = 1.0 - rr + 0.22 * _smooth_noise(rng, h, w, max(3.0, min(h, w) / 10.0))
        f = cv2.GaussianBlur(f, (0, 0), 0.8)
        mask = np.clip((f - 0.3) * max(2.0, min(h, w) / 8.0) + 0.5, 0.0, 1.0)
        mask[rr > 0.98] = 0.0
        return mask.astype(np.float32)
    return m.astype(np.float32) / 255.0


def _bezier(start, angle, length, bend, samples=48) -> np.ndarray:
    """Points (x, y) of a quadratic Bezier curve from `start` in direction `angle`, bowed
    sideways by `bend` * length at its middle."""
    p0 = np.array(start, np.float64)
    d = np.array([math.cos(angle), math.sin(angle)])
    p2 = p0 + d * length
    p1 = (p0 + p2) / 2 + np.array([-d[1], d[0]]) * bend * length
    t = np.linspace(0.0, 1.0, samples)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


class _Scene:
    def __init__(self, rng, n, H, W, margin, max_blur, slant, scene="default"):
        self.n = n
        self.H, self.W, self.margin = H, W, margin
        self.CH, self.CW = H + 2 * margin, W + 2 * margin
        self.max_blur = float(max_blur)
        scale = max(1.0, min(H, W) / 480.0)
        self.pad = int(math.ceil(max_blur + 0.5)) + 2
        if scene == "halo":
            self._init_halo(rng, n, H, W, margin, scale, slant)
        else:
            self._init_default(rng, n, H, W, margin, scale, slant)
        self._bg_cache: dict[float, np.ndarray] = {}
        self._bg_cache_bytes = 0
        self._bg_cache_limit = 768 << 20

    def _init_default(self, rng, n, H, W, margin, scale, slant):
        """The default scene: textured slanted plane and textured occluding objects."""
        # background plane
        # (background: non-periodic kinds only; a large periodic area makes alignment ambiguous)
        bg_kinds = ("noise", "text", "tiles")
        self.bg = _texture(rng, self.CH, self.CW, scale, kind=bg_kinds[int(rng.integers(3))])
        # add a second texture in a random half-plane so the background is varied
        bg2 = _texture(rng, self.CH, self.CW, scale, kind=bg_kinds[int(rng.integers(3))])
        yy, xx = np.mgrid[0 : self.CH, 0 : self.CW].astype(np.float32)
        th = rng.uniform(0, 2 * np.pi)
        u = (xx - self.CW / 2) * math.cos(th) + (yy - self.CH / 2) * math.sin(th)
        w2 = np.clip(u / 1.5 + 0.5, 0, 1)[..., None]
        self.bg = (self.bg * (1 - w2) + bg2 * w2).astype(np.float32)
        # slanted depth: n-1 on one side, n-1 - slant*(n-1) on the other
        th = rng.uniform(0, 2 * np.pi)
        u = (xx - self.CW / 2) * math.cos(th) + (yy - self.CH / 2) * math.sin(th)
        vis = u[margin : margin + H, margin : margin + W]
        u = (u - vis.min()) / max(1e-6, float(vis.max() - vis.min()))
        self.bg_depth = ((n - 1) * (1.0 - slant * u)).astype(np.float32)
        # objects: integer depths spread over 0 .. n-2
        n_obj = int(min(max(n - 1, 5), 12))
        depths = np.round(np.linspace(0, max(0, n - 2), n_obj)).astype(int)
        base = min(H, W)
        self.layers: list[_Layer] = []
        kinds = ("disc", "rect", "blob")
        for d in sorted(depths.tolist(), reverse=True):  # far to near
            size = int(base * rng.uniform(0.2, 0.42))
            size = max(size, 12)
            cy = margin + rng.uniform(0.05, 0.95) * H
            cx = margin + rng.uniform(0.05, 0.95) * W
            kind = kinds[int(rng.integers(3))]
            if kind == "disc":
                hh = ww = size
            else:
                hh = size
                ww = int(size * rng.uniform(0.8, 1.4))
            mask = _object_mask(rng, hh, ww, kind, scale)
            tex = _texture(rng, hh, ww, scale)
            p = self.pad
            y0 = int(round(cy - hh / 2)) - p
            x0 = int(round(cx - ww / 2)) - p
            alpha = np.zeros((hh + 2 * p, ww + 2 * p), np.float32)
            alpha[p : p + hh, p : p + ww] = mask
            premult = np.zeros((hh + 2 * p, ww + 2 * p, 3), np.float32)
            premult[p : p + hh, p : p + ww] = tex * mask[..., None]
            # clip to canvas
            ya, xa = max(0, -y0), max(0, -x0)
            yb = min(alpha.shape[0], self.CH - y0)
            xb = min(alpha.shape[1], self.CW - x0)
            self.layers.append(
                _Layer(
                    y0 + ya,
                    x0 + xa,
                    np.ascontiguousarray(premult[ya:yb, xa:xb]),
                    np.ascontiguousarray(alpha[ya:yb, xa:xb]),
                    float(d),
                )
            )

    def _init_halo(self, rng, n, H, W, margin, scale, slant):
        """The halo scene (``scene="halo"``): hairs and bristles, thin dark lines 1-3 px wide,
        at the near depths ``0 .. n // 2``, in front of a bright backlit background (near white,
        smooth, with small specular glints that reach 1.0) at the far end of the bracket."""
        CH, CW = self.CH, self.CW
        # background: near white with a slow light fall-off, so it reads as a defocused,
        # backlit backdrop; its only fine structure is the glints
        tint = rng.uniform(0.88, 0.95, 3).astype(np.float32)
        glow = 0.035 * _smooth_noise(rng, CH, CW, 40.0 * scale)
        glow += 0.015 * _smooth_noise(rng, CH, CW, 10.0 * scale)
        bg = tint[None, None, :] * (1.0 + glow[..., None])
        glints = np.zeros((CH, CW), np.uint8)
        for _ in range(int(CH * CW / 2500)):
            cx, cy = rng.uniform(0, CW), rng.uniform(0, CH)
            r = rng.uniform(0.7, 2.5) * scale
            cv2.circle(glints, (int(cx * 16), int(cy * 16)), int(r * 16), 255, -1, cv2.LINE_AA, 4)
        g = glints.astype(np.float32)[..., None] / 255.0
        self.bg = np.clip(bg + (1.0 - bg) * g, 0.0, 1.0).astype(np.float32)
        # slanted depth, as in the default scene: n-1 on one side
        yy, xx = np.mgrid[0:CH, 0:CW].astype(np.float32)
        th = rng.uniform(0, 2 * np.pi)
        u = (xx - CW / 2) * math.cos(th) + (yy - CH / 2) * math.sin(th)
        vis = u[margin : margin + H, margin : margin + W]
        u = (u - vis.min()) / max(1e-6, float(vis.max() - vis.min()))
        self.bg_depth = ((n - 1) * (1.0 - slant * u)).astype(np.float32)
        # one layer per near depth, each holding a few long curved hairs and bristle tufts
        base = min(H, W)
        per_layer = (H * W) / (600.0 * 900.0)
        self.layers = []
        for d in range(n // 2, -1, -1):  # far to near
            alpha = np.zeros((CH, CW), np.float32)
            premult = np.zeros((CH, CW, 3), np.float32)
            for _ in range(max(2, int(round(rng.uniform(5, 9) * per_layer)))):
                strokes = []
                x0 = margin + rng.uniform(0.0, 1.0) * W
                y0 = margin + rng.uniform(0.0, 1.0) * H
                a = rng.uniform(0, 2 * np.pi)
                if rng.random() < 0.3:  # bristle tuft: a fan of short, nearly straight strokes
                    for _ in range(int(rng.integers(6, 15))):
                        b = a + rng.uniform(-0.7, 0.7)
                        length = base * rng.uniform(0.06, 0.18)
                        strokes.append(
                            (
                                _bezier((x0, y0), b, length, rng.uniform(-0.08, 0.08)),
                                1 + (rng.random() < 0.3),
                            )
                        )
                else:  # a long curved hair
                    length = base * rng.uniform(0.25, 0.7)
                    width = int(rng.choice([1, 1, 2, 2, 3]))
                    strokes.append((_bezier((x0, y0), a, length, rng.uniform(-0.3, 0.3)), width))
                colour = rng.uniform(0.02, 0.14) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
                for pts, width in strokes:
                    lo = np.floor(pts.min(axis=0)).astype(int) - 4
                    hi = np.ceil(pts.max(axis=0)).astype(int) + 5
                    lo = np.maximum(lo, 0)
                    hi = np.minimum(hi, [CW, CH])
                    if (hi <= lo).any():
                        continue
                    m8 = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.uint8)
                    p16 = np.round((pts - lo) * 16).astype(np.int32)
                    cv2.polylines(m8, [p16], False, 255, int(width), cv2.LINE_AA, 4)
                    m = m8.astype(np.float32) / 255.0
                    sl = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
                    # "over" within the layer: this stroke in front of the layer so far
                    premult[sl] = premult[sl] * (1.0 - m[..., None]) + colour * m[..., None]
                    alpha[sl] = alpha[sl] * (1.0 - m) + m
            ys, xs = np.nonzero(alpha > 0)
            if ys.size == 0:
                continue
            p = self.pad
            ya, yb = max(0, ys.min() - p), min(CH, ys.max() + p + 1)
            xa, xb = max(0, xs.min() - p), min(CW, xs.max() + p + 1)
            self.layers.append(
                _Layer(
                    int(ya),
                    int(xa),
                    np.ascontiguousarray(premult[ya:yb, xa:xb]),
                    np.ascontiguousarray(alpha[ya:yb, xa:xb]),
                    float(d),
                )
            )

    def radius(self, depth_diff):
        return self.max_blur * np.abs(depth_diff) / max(1, self.n - 1)

    def _bg_level(self, r):
        key = round(float(r), 4)
        hit = self._bg_cache.get(key)
        if hit is not None:
            return hit
        out = _blur(self.bg, r)
        if self._bg_cache_bytes + out.nbytes <= self._bg_cache_limit:
            self._bg_cache[key] = out
            self._bg_cache_bytes += out.nbytes
        return out

    def _background(self, k):
        rmap = self.radius(self.bg_depth - k).astype(np.float32)
        rmax = float(rmap.max())
        if rmax <= 0.5:
            return self.bg.copy()
        ladder = _radius_ladder(rmax)
        # position of each pixel on the ladder (fractional index)
        rm = np.clip(rmap, ladder[0], ladder[-1])
        idx = (
            np.interp(rm.ravel(), ladder, np.arange(len(ladder)))
            .reshape(rm.shape)
            .astype(np.float32)
        )
        lo_needed = int(np.floor(idx.min()))
        hi_needed = int(np.ceil(idx.max()))
        out = np.zeros_like(self.bg)
        for j in range(lo_needed, hi_needed + 1):
            w = np.clip(1.0 - np.abs(idx - j), 0.0, 1.0)
            if not w.any():
                continue
            lvl = self._bg_level(ladder[j])
            out += lvl * w[..., None]
        return out

    def render(self, k, blur=True):
        """Canvas render of frame k (blur=False: the all-in-focus pinhole composite)."""
        out = self._background(k) if blur else self.bg.copy()
        for L in self.layers:
            r = float(self.radius(L.depth - k)) if blur else 0.0
            if r > 0.5:
                kern = disk_kernel(r)
                pm = cv2.filter2D(L.premult, -1, kern, borderType=cv2.BORDER_CONSTANT)
                al = cv2.filter2D(L.alpha, -1, kern, borderType=cv2.BORDER_CONSTANT)
            else:
                pm, al = L.premult, L.alpha
            h, w = al.shape
            reg = out[L.y0 : L.y0 + h, L.x0 : L.x0 + w]
            reg *= (1.0 - al)[..., None]
            reg += pm
        return out

    def depth_map(self):
        d = self.bg_depth.copy()
        for L in self.layers:
            h, w = L.alpha.shape
            reg = d[L.y0 : L.y0 + h, L.x0 : L.x0 + w]
            reg[L.alpha > 0.5] = L.depth
        return d


# --------------------------------------------------------------------------------------
# public API


def _affine(scale, angle_deg, tx, ty, cx, cy):
    """3x3: p' = scale * R(angle) (p - c) + c + t."""
    a = math.radians(angle_deg)
    ca, sa = math.cos(a) * scale, math.sin(a) * scale
    return np.array(
        [
            [ca, -sa, cx - ca * cx + sa * cy + tx],
            [sa, ca, cy - sa * cx - ca * cy + ty],
            [0.0, 0.0, 1.0],
        ],
        dtype=np.float64,
    )


def make_bracket(
    n_frames: int = 9,
    size: tuple[int, int] = (480, 640),
    *,
    breathing: float = 0.01,
    shift: float = 3.0,
    rotation: float = 0.1,
    flicker: float = 0.03,
    noise: float = 0.005,
    seed: int = 0,
    max_blur: float = 8.0,
    bit_depth: int | None = None,
    slant: float = 0.3,
    scene: str = "default",
    keep_unwarped: bool = False,
    sink: Callable[[int, np.ndarray], None] | None = None,
) -> Bracket:
    """Render a synthetic focus bracket (see the module docstring).

    size is (height, width).  bit_depth (8 or 16) quantises the frames like a file would.
    slant: depth range of the background plane as a fraction of the bracket.
    scene: "default" (textured plane and objects) or "halo" (thin dark hairs and bristles at
    the near depths in front of a bright backlit background; see the module docstring).
    The default scene is unaffected by this option: same seed, same pixels.
    sink: if given, each frame is passed to ``sink(k, frame)`` as soon as it is rendered and
    not kept (``Bracket.frames`` stays empty): for long, large brackets written to disk.
    """
    if n_frames < 2:
        raise ValueError("n_frames must be >= 2")
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {', '.join(SCENES)}, not {scene!r}")
    H, W = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    n = int(n_frames)
    ref = n // 2
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0

    # geometry first (so the scene draw does not change it for a given seed)
    forwards = []  # reference -> frame k
    for k in range(n):
        s = 1.0 + breathing * (k - ref)
        ang = rng.uniform(-rotation, rotation)
        tx, ty = rng.uniform(-shift, shift, 2)
        if k == ref:
            s, ang, tx, ty = 1.0, 0.0, 0.0, 0.0
        forwards.append(_affine(s, ang, tx, ty, cx, cy))
    gains = []
    for k in range(n):
        g = 1.0 + rng.uniform(-flicker, flicker, 3) if k != ref else np.ones(3)
        gains.append(g.astype(np.float32))

    # canvas margin: enough for the largest zoom-out, shift, rotation and blur spill
    s_min = min(1.0 + breathing * (k - ref) for k in range(n))
    s_min = max(s_min, 0.2)
    half_diag = 0.5 * math.hypot(H, W)
    need = (
        0.5 * max(H, W) * (1.0 / s_min - 1.0)
        + shift / s_min
        + half_diag * math.sin(math.radians(rotation)) / s_min
    )
    margin = int(math.ceil(max(0.0, need) + max_blur + 8))

    world = _Scene(rng, n, H, W, margin, max_blur, slant, scene)
    noise_rng = np.random.default_rng([seed, 1])

    T = np.array([[1, 0, margin], [0, 1, margin], [0, 0, 1]], np.float64)
    frames, transforms, unwarped = [], [], []
    crop = (slice(margin, margin + H), slice(margin, margin + W))
    for k in range(n):
        canvas = world.render(k)
        inv = np.linalg.inv(forwards[k])  # frame k -> reference
        transforms.append(inv)
        if keep_unwarped:
            unwarped.append(np.ascontiguousarray(canvas[crop]))
        M = (T @ inv)[:2]  # frame pixel -> canvas pixel
        if k == ref:
            img = np.ascontiguousarray(canvas[crop])
        else:
            img = cv2.warpAffine(
                canvas,
                M,
                (W, H),
                flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REFLECT,
            )
        img *= gains[k][None, None, :]
        if noise > 0:
            img += noise_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
        np.clip(img, 0.0, 1.0, out=img)
        if bit_depth:
            q = float((1 << int(bit_depth)) - 1)
            img = np.round(img * q) / q
        img = img.astype(np.float32, copy=False)
        if sink is not None:
            sink(k, img)
        else:
            frames.append(img)

    truth = np.ascontiguousarray(world.render(0, blur=False)[crop])
    depth = np.ascontiguousarray(world.depth_map()[crop]).astype(np.float32)
    # depth discontinuities (the slanted plane changes by far less than 0.5 per pixel)
    k3 = np.ones((3, 3), np.uint8)
    jump = (cv2.dilate(depth, k3) - cv2.erode(depth, k3)) > 0.5
    rad = int(max(8, round(max_blur)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rad + 1, 2 * rad + 1))
    edge_band = cv2.dilate(jump.astype(np.uint8), disk) > 0
    return Bracket(
        frames=frames,
        truth=truth,
        depth=depth,
        transforms=transforms,
        gains=gains,
        edge_band=edge_band,
        reference=ref,
        unwarped=unwarped if keep_unwarped else None,
    )


def save_image(path, img: np.ndarray, bit_depth: int = 16) -> Path:
    """Write one float RGB 0..1 image: .tif/.tiff (tifffile), .png/.jpg/.jpeg (cv2.imencode)."""
    path = Path(path)
    ext = path.suffix.lower()
    img = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
    if ext in (".jpg", ".jpeg"):
        bit_depth = 8
    if bit_depth == 16:
        data = np.round(img * 65535.0).astype(np.uint16)
    elif bit_depth == 8:
        data = np.round(img * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"bit_depth must be 8 or 16, not {bit_depth}")
    if ext in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(str(path), data, photometric="rgb" if data.ndim == 3 else "minisblack")
    elif ext in (".png", ".jpg", ".jpeg"):
        bgr = data[..., ::-1] if data.ndim == 3 else data
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext != ".png" else []
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), params)
        if not ok:
            raise OSError(f"{path}: could not encode")
        path.write_bytes(buf.tobytes())
    else:
        raise ValueError(f"unsupported extension {ext!r}")
    return path


def save_bracket(
    bracket: Bracket, folder, ext: str = ".tif", bit_depth: int = 16, prefix: str = "frame_"
) -> list[Path]:
    """Write the frames as ``folder/frame_000<ext>`` ...; returns the paths in order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not ext.startswith("."):
        ext = "." + ext
    paths = []
    for i, f in enumerate(bracket.frames):
        paths.append(save_image(folder / f"{prefix}{i:03d}{ext}", f, bit_depth))
    return paths


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB for images in 0..1; mask (HxW bool) restricts the pixels compared."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    d2 = (a - b) ** 2
    if mask is not None:
        mask = np.asarray(mask, bool)
        if not mask.any():
            return float("nan")
        d2 = d2[mask]
    mse = float(d2.mean())
    if mse <= 0.0:
        return float("inf")
    return 10.0 * math.log10(1.0 / mse)
