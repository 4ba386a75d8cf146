"""Image metrics for the benchmark: loading outputs, registration onto a reference grid,
PSNR / SSIM / depth-edge PSNR, and a no-reference sharpness figure.

Runs in the peers venv (numpy, opencv-python, scikit-image, tifffile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

BORDER_FRACTION = 0.03


# --------------------------------------------------------------------------------------
# loading


def load_image(path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """-> (float32 HxWx3 RGB 0..1, alpha HxW bool or None, description like '900x600 uint16 RGB')."""
    path = Path(path)
    ext = path.suffix.lower()
    data = None
    if ext in (".tif", ".tiff"):
        try:
            import tifffile

            data = tifffile.imread(str(path))
            order = "RGB"
        except Exception:  # noqa: BLE001  (e.g. LZW without imagecodecs): let OpenCV try
            data = None
    if data is None:
        data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if data is None:
            raise OSError(f"{path}: cannot read")
        order = "BGR"
    if data.ndim == 3 and data.shape[0] in (3, 4) and data.shape[2] not in (3, 4):
        data = np.moveaxis(data, 0, -1)  # planar TIFF
    dtype = data.dtype
    if dtype.kind == "u":
        scale = float(np.iinfo(dtype).max)
        img = data.astype(np.float32) / scale
    else:
        img = data.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    ch = img.shape[2]
    alpha = None
    if ch == 4:
        alpha = img[..., 3] > 0.5
        img = img[..., :3]
    elif ch == 2:
        alpha = img[..., 1] > 0.5
        img = np.repeat(img[..., :1], 3, axis=2)
    if order == "BGR":
        img = img[..., ::-1]
    desc = f"{img.shape[1]}x{img.shape[0]} {dtype.name} {'RGBA' if ch == 4 else 'RGB' if ch == 3 else ch}"
    if dtype.kind == "f":
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        desc += f" [{lo:.3g}..{hi:.3g}]"
    img = np.nan_to_num(img, nan=0.0)
    return np.ascontiguousarray(img, dtype=np.float32), alpha, desc


def gray(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img @ np.array([0.299, 0.587, 0.114], np.float32))


# --------------------------------------------------------------------------------------
# registration


@dataclass
class Registration:
    warped: np.ndarray  # output resampled onto the reference grid
    valid: np.ndarray  # bool, where warped is meaningful (and away from the border)
    matrix: np.ndarray  # 2x3, reference pixel -> output pixel
    method: str
    ecc: float | None  # ECC correlation coefficient (1 = perfect)
    scale: float  # linear scale of output relative to reference


def _feature_init(ref_g, out_g) -> np.ndarray | None:
    """2x3 affine mapping reference coords -> output coords from SIFT matches, or None."""

    def prep(g):
        s = min(1.0, 1600.0 / max(g.shape))
        small = cv2.resize(g, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else g
        return np.clip(small * 255, 0, 255).astype(np.uint8), s

    a8, sa = prep(ref_g)
    b8, sb = prep(out_g)
    sift = cv2.SIFT_create(nfeatures=4000)
    ka, da = sift.detectAndCompute(a8, None)
    kb, db = sift.detectAndCompute(b8, None)
    if da is None or db is None or len(ka) < 10 or len(kb) < 10:
        return None
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    good = []
    for m in matcher.knnMatch(da, db, k=2):
        if len(m) == 2 and m[0].distance < 0.75 * m[1].distance:
            good.append(m[0])
    if len(good) < 10:
        return None
    pa = np.float32([ka[m.queryIdx].pt for m in good]) / sa
    pb = np.float32([kb[m.trainIdx].pt for m in good]) / sb
    M, inl = cv2.estimateAffine2D(
        pa, pb, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=5000, confidence=0.999
    )
    if M is None or inl is None or int(inl.sum()) < 8:
        return None
    return M.astype(np.float32)


def register(
    out: np.ndarray,
    ref: np.ndarray,
    out_alpha: np.ndarray | None = None,
    border: float = BORDER_FRACTION,
) -> Registration:
    """Register `out` onto `ref`'s grid (affine: SIFT+RANSAC start, ECC MOTION_AFFINE refine)."""
    H, W = ref.shape[:2]
    ref_g, out_g = gray(ref), gray(out)
    init = _feature_init(ref_g, out_g)
    method = "sift+ecc"
    if init is None:
        method = "ecc"
        init = np.array([[out.shape[1] / W, 0, 0], [0, out.shape[0] / H, 0]], np.float32)
    M = init.copy()
    ecc = None
    try:
        # ECC warp maps template (ref) coords to input (out) coords, as wanted
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-7)
        ecc, M = cv2.findTransformECC(ref_g, out_g, M, cv2.MOTION_AFFINE, crit, None, 3)
    except cv2.error:
        method += "(ecc failed)"
        M = init
    warped = cv2.warpAffine(
        out,
        M,
        (W, H),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    src_valid = (
        np.ones(out.shape[:2], np.uint8) if out_alpha is None else out_alpha.astype(np.uint8)
    )
    valid = cv2.warpAffine(
        src_valid,
        M,
        (W, H),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    valid = cv2.erode(valid, np.ones((7, 7), np.uint8)) > 0
    b = int(round(border * min(H, W)))
    if b > 0:
        valid[:b] = valid[-b:] = False
        valid[:, :b] = valid[:, -b:] = False
    scale = math.sqrt(abs(np.linalg.det(M[:, :2].astype(np.float64))))
    return Registration(
        np.clip(warped, 0, 1),
        valid,
        M,
        method,
        None if ecc is None else float(ecc),
        1.0 / scale if scale else float("nan"),
    )


# --------------------------------------------------------------------------------------
# metrics


def psnr(a, b, mask=None) -> float:
    d2 = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    if mask is not None:
        if not mask.any():
            return float("nan")
        d2 = d2[mask]
    mse = float(d2.mean())
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def ssim(a, b, mask=None) -> float:
    from skimage.metrics import structural_similarity

    _, smap = structural_similarity(
        a,
        b,
        channel_axis=2,
        data_range=1.0,
        full=True,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    smap = smap.mean(axis=2)
    if mask is not None:
        if not mask.any():
            return float("nan")
        return float(smap[mask].mean())
    return float(smap.mean())


def sharpness(img: np.ndarray, border: float = BORDER_FRACTION) -> float:
    """Mean gradient energy (Sobel gx^2 + gy^2 of luma, x1000) away from a 3% border."""
    g = gray(img)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    e = gx * gx + gy * gy
    b = int(round(border * min(g.shape)))
    if b > 0:
        e = e[b:-b, b:-b]
    return float(e.mean()) * 1000.0


def quality(out_path, ref: np.ndarray, edge_band: np.ndarray | None = None) -> dict:
    """Register an output file onto `ref` and compute PSNR, SSIM and (with a band) edge PSNR."""
    out, alpha, desc = load_image(out_path)
    reg = register(out, ref, alpha)
    res = {
        "output": desc,
        "reg_method": reg.method,
        "reg_ecc": reg.ecc,
        "reg_scale": reg.scale,
        "valid_fraction": float(reg.valid.mean()),
        "psnr": psnr(reg.warped, ref, reg.valid),
        "ssim": ssim(reg.warped, ref, reg.valid),
        "sharpness": sharpness(out),
    }
    # what a perfect output in this output geometry would score: the reference resampled
    # onto the output grid and back (two cubic resamplings); near-identity geometry -> inf
    if np.allclose(reg.matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-3):
        res["reg_ceiling_psnr"] = float("inf")
    else:
        there = cv2.warpAffine(
            ref,
            reg.matrix,
            (out.shape[1], out.shape[0]),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_REFLECT,
        )
        back = cv2.warpAffine(
            there,
            reg.matrix,
            (ref.shape[1], ref.shape[0]),
            flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        res["reg_ceiling_psnr"] = psnr(np.clip(back, 0, 1), ref, reg.valid)
    if edge_band is not None:
        m = reg.valid & edge_band
        res["edge_psnr"] = psnr(reg.warped, ref, m)
        res["edge_fraction"] = float(m.mean())
    return res


# --------------------------------------------------------------------------------------
# flat-area noise (real brackets: no truth, so noise is measured where there is no detail)

HIGHPASS_SIGMA = 2.0


def highpass(luma: np.ndarray, sigma: float = HIGHPASS_SIGMA) -> np.ndarray:
    """luma - GaussianBlur(luma, sigma): what is left in a flat area is noise (and JPEG grain)."""
    luma = np.asarray(luma, np.float32)
    return luma - cv2.GaussianBlur(luma, (0, 0), sigma)


def box_std(hp: np.ndarray, box) -> float:
    x, y, w, h = (int(v) for v in box)
    return float(hp[y : y + h, x : x + w].std())


SAME_GEOMETRY_PX = 2.0


def same_geometry(
    reg: Registration, out_shape, ref_shape, tol_px: float = SAME_GEOMETRY_PX
) -> bool:
    """True when the output already lies on the reference grid: same size, and the registration
    moves no corner of the image by more than tol_px.  Such an output is scored as it is: in a
    flat box a pixel or two of offset changes nothing, while a resampling would itself smooth
    the noise (registering a fused result onto one partly defocused frame finds a few tenths
    of a pixel of shift or shear even for tools that keep the reference frame's geometry)."""
    if tuple(out_shape[:2]) != tuple(ref_shape[:2]):
        return False
    H, W = ref_shape[:2]
    corners = np.array([[0, 0, 1], [W - 1, 0, 1], [0, H - 1, 1], [W - 1, H - 1, 1]], np.float64)
    moved = corners @ reg.matrix.astype(np.float64).T - corners[:, :2]
    return float(np.abs(moved).max()) <= tol_px


def on_reference(out: np.ndarray, alpha, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """An output on the reference frame's grid: as it is when its geometry already matches
    (see same_geometry), else registered and resampled (register()).
    -> (image, valid mask, info: registered / reg_method / reg_ecc / reg_scale)."""
    reg = register(out, ref, alpha, border=0.0)
    info = {"reg_method": reg.method, "reg_ecc": reg.ecc, "reg_scale": reg.scale}
    if same_geometry(reg, out.shape, ref.shape):
        valid = np.ones(ref.shape[:2], bool) if alpha is None else alpha.astype(bool)
        return out, valid, dict(info, registered=False)
    return reg.warped, reg.valid, dict(info, registered=True)


def flat_noise_ratio(img: np.ndarray, valid: np.ndarray, ref: np.ndarray, boxes) -> dict:
    """Median over the flat boxes of std(high-pass of img's luma) / std(high-pass of ref's
    luma), both on the reference grid; boxes not fully inside `valid` are left out."""
    hp_img, hp_ref = highpass(gray(img)), highpass(gray(ref))
    ratios = []
    for box in boxes:
        x, y, w, h = (int(v) for v in box)
        if not valid[y : y + h, x : x + w].all():
            continue
        r = box_std(hp_ref, box)
        if r > 0:
            ratios.append(box_std(hp_img, box) / r)
    return {
        "flat_ratio": float(np.median(ratios)) if ratios else None,
        "flat_boxes_used": len(ratios),
        "flat_boxes": len(boxes),
        "flat_ratios": [round(v, 4) for v in ratios],
    }
