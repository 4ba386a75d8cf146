"""The engine on real brackets and real RAW files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from conftest import RING6, TEST_DATA
from dng import write_dng
from synthetic import make_bracket, psnr

from pybridge import stack
from pybridge.frames import read_frame


def _frames(test_data, name, pattern):
    folder = RING6 if name == "ring6" else test_data / "brackets" / name
    files = sorted(folder.glob(pattern))
    assert files, f"no frames in {name}"
    return files


def _sharpness(img: np.ndarray) -> float:
    grey = cv2.cvtColor(np.ascontiguousarray(img, np.float32), cv2.COLOR_RGB2GRAY)
    return float(np.mean(cv2.Laplacian(grey, cv2.CV_32F) ** 2))


def _register_onto(img: np.ndarray, target: np.ndarray) -> np.ndarray:
    g1 = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)
    g2 = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    warp = np.eye(2, 3, dtype=np.float32)
    _, warp = cv2.findTransformECC(
        g1,
        g2,
        warp,
        cv2.MOTION_AFFINE,
        (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6),
        None,
        5,
    )
    return cv2.warpAffine(
        img, warp, (target.shape[1], target.shape[0]), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    )


def test_ring6_is_sharper_than_any_frame_and_recovers_breathing(test_data):
    files = _frames(test_data, "ring6", "step*.jpg")
    result = stack(files)
    assert result.image.shape == (1141, 1521, 3)
    frames = [read_frame(f).pixels for f in files]
    assert _sharpness(result.image) > 1.3 * max(_sharpness(f) for f in frames)
    # 4.4 % breathing over the bracket, monotonic, no fallbacks
    scales = [t.scale for t in result.transforms]
    assert all(b < a for a, b in zip(scales, scales[1:], strict=False))
    assert 0.035 < scales[0] / scales[-1] - 1 < 0.055
    assert not any(t.fallback for t in result.transforms)


def test_pcb7_matches_the_cpp_focus_stack_reference(test_data):
    files = _frames(test_data, "pcb7", "pcb_*.jpg")
    expected = read_frame(test_data / "brackets" / "pcb7" / "expected.jpg").pixels
    result = stack(files)
    assert result.image.shape == expected.shape
    ours = _register_onto(np.clip(result.image, 0, 1), expected)
    b = 100  # the two tools fill the breathing border differently
    inner = np.zeros(expected.shape[:2], bool)
    inner[b:-b, b:-b] = True
    # same scene, same focus decisions: close to the C++ tool's output...
    assert psnr(ours, expected, inner) > 25
    # ...and much closer to it than any single frame is
    frames = [read_frame(f).pixels for f in files]
    assert (
        psnr(ours, expected, inner)
        > max(psnr(_register_onto(f, expected), expected, inner) for f in frames) + 3
    )


def test_depthmap10_scale_grows_about_1_6_percent_per_frame(test_data):
    files = _frames(test_data, "depthmap10", "pcb_*.JPG")
    result = stack(files, method="depthmap")
    scales = np.array([t.scale for t in result.transforms])
    steps = scales[1:] / scales[:-1] - 1
    assert np.all(steps > 0.005), steps  # monotonic, frame after frame
    mean_step = (scales[-1] / scales[0]) ** (1 / (len(scales) - 1)) - 1
    assert 0.013 < mean_step < 0.020, mean_step
    assert 0.13 < scales[-1] / scales[0] - 1 < 0.19  # ~16 % over the bracket
    assert not any(t.fallback for t in result.transforms)


def test_stack_of_generated_dng_raw_bracket(tmp_path):
    """A real RAW bracket: CFA DNGs that rawpy demosaics, stacked to a 16-bit TIFF."""
    b = make_bracket(5, (200, 300), breathing=0.01, flicker=0.0, noise=0.002, seed=11, max_blur=6)
    paths = []
    for k, frame in enumerate(b.frames):
        linear = np.round(np.clip(frame, 0, 1) * 65535).astype(np.uint16)
        paths.append(write_dng(tmp_path / f"IMG_{k:04d}.dng", linear, black=256, white=16383))
    # the truth goes through the same CFA sampling and demosaicing as the frames
    truth_dng = write_dng(
        tmp_path / "truth.dng", np.round(b.truth * 65535).astype(np.uint16), black=256, white=16383
    )
    truth = read_frame(truth_dng).pixels
    out = tmp_path / "stacked.tif"
    result = stack(paths, out, metadata=False)
    data = tifffile.imread(out)
    assert data.dtype == np.uint16 and data.shape == (200, 300, 3)
    inner = np.zeros((200, 300), bool)
    inner[12:-12, 12:-12] = True
    # demosaicing a fine texture aliases differently in each shifted frame, which caps the
    # PSNR (about 30 dB here, against 35 dB for the same bracket without a CFA)
    single = max(psnr(read_frame(p).pixels, truth, inner) for p in paths)
    assert psnr(result.image, truth, inner) > single + 2
    assert np.allclose(
        [t.scale for t in result.transforms], [0.98, 0.99, 1.0, 1.01, 1.02], atol=0.0015
    )


def test_stack_real_canon_dng(tmp_path, test_data):
    """The real Canon 550D DNG (14-bit, Magic Lantern) as a 3-frame bracket: two copies
    shifted and scaled like breathing frames. Alignment must undo it."""
    src = read_frame(test_data / "raw" / "canon_550d_magiclantern_colorchart.dng")
    assert src.kind == "raw" and src.bit_depth == 16
    h, w = src.pixels.shape[:2]
    frames = [src.pixels]
    for s, dx in ((1.01, 4.0), (1.02, -3.0)):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.2, s)
        m[0, 2] += dx
        frames.append(
            cv2.warpAffine(
                src.pixels, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
            )
        )
    result = stack(frames, reference="first")
    assert [round(t.scale, 3) for t in result.transforms] == [1.0, 1.01, 1.02]
    inner = np.zeros((h, w), bool)
    inner[80:-80, 80:-80] = True
    assert psnr(result.image, src.pixels, inner) > 35


@pytest.mark.parametrize("bad", sorted(p.name for p in (TEST_DATA / "raw" / "broken").glob("*")))
def test_broken_raw_in_a_bracket_is_a_one_line_error(tmp_path, test_data, bad):
    from pybridge.errors import InputError

    good = _frames(test_data, "ring6", "step*.jpg")[:2]
    broken = test_data / "raw" / "broken" / bad
    with pytest.raises(InputError) as err:
        stack([*good, broken], tmp_path / "out.tif", metadata=False)
    assert str(broken) in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def other_shot(test_data, tmp_path_factory):
    """A frame of another subject (pcb7's, at depthmap10's size) for depthmap10."""
    size = cv2.imread(str(_frames(test_data, "depthmap10", "*.JPG")[0])).shape[1::-1]
    path = tmp_path_factory.mktemp("other") / "other.jpg"
    cv2.imwrite(path, cv2.resize(cv2.imread(str(_frames(test_data, "pcb7", "pcb_*")[3])), size))
    return path


# 0, 10: at an end (a test shot before or after the bracket); 3, 8: on either side of the
# reference (frame 5 of 11)
@pytest.mark.parametrize("at", [0, 3, 8, 10])
def test_a_shot_of_something_else_among_the_frames_is_left_out(test_data, other_shot, at):
    """Fused, its detail stood in the result wherever it was the sharpest frame (16-20 dB from
    the bracket's own stack); left out, the result is the bracket's, and a warning says so."""
    frames = _frames(test_data, "depthmap10", "*.JPG")
    result = stack([*frames[:at], other_shot, *frames[at:]])
    reference = result.reference - (result.reference > at)  # the same frame, without it
    alone = stack(frames, reference=reference)
    assert result.image.shape == alone.image.shape
    assert psnr(result.image, alone.image) > 50
    assert len(result.warnings) == 1 and result.warnings[0].startswith(f"{other_shot}: left out")
    assert result.left_out == [at] and result.report()["left_out"] == [at]
    assert alone.warnings == [] and alone.left_out == []


def test_frames_of_the_bracket_are_not_left_out_and_progress_only_grows(test_data):
    """Every other frame of depthmap10: steps between frames far apart in focus fail, so
    frames are held back until the next step says what they are; all are of the bracket."""
    events = []
    result = stack(
        _frames(test_data, "depthmap10", "*.JPG")[::2],
        progress=lambda phase, **at: events.append(at["fraction"]),
    )
    assert any(t.fallback for t in result.transforms)
    assert result.left_out == [] and all(": could not be aligned to " in w for w in result.warnings)
    assert events == sorted(events) and len(events) == 2 * 5


def test_beside_the_reference_nothing_tells_which_frame_is_the_other_shot(test_data, other_shot):
    """A short bracket whose end frame beside the reference fails to line up: either could be
    the shot of something else, so both are stacked, and the warning names the failed step."""
    frames = _frames(test_data, "depthmap10", "*.JPG")
    for bracket in ([frames[3], other_shot], [other_shot, frames[3], frames[4]]):
        warnings = stack(bracket).warnings
        assert len(warnings) == 1 and ": could not be aligned to " in warnings[0], warnings


def test_a_frame_from_another_shot_is_named_in_a_warning(tmp_path, test_data):
    """A stray frame (here pcb7's, in the middle of depthmap10, where it is the reference)
    cannot be aligned with its neighbours. The stack still runs, but says which frames did not
    line up and with what, instead of fusing them silently where their motion was guessed."""
    frames = _frames(test_data, "depthmap10", "*.JPG")
    size = cv2.imread(str(frames[0])).shape[1::-1]
    stray = tmp_path / "stray.jpg"
    cv2.imwrite(
        str(stray), cv2.resize(cv2.imread(str(_frames(test_data, "pcb7", "pcb_*")[3])), size)
    )
    bracket = [*frames[:5], stray, *frames[5:]]
    warnings = stack(bracket).warnings
    assert len(warnings) == 2, warnings
    for neighbour in (frames[4], frames[5]):
        assert f"{neighbour}: could not be aligned to {stray}" in warnings[0] + warnings[1]
    assert stack(frames).warnings == []
