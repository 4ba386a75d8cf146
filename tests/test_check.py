"""`focusbridge check`: gaps, wasted frames, order, duplicates, exposure jumps and motion on
synthetic brackets whose truth is known, the real brackets in tests/data, and the command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from synthetic import make_bracket, save_image

from pybridge import check
from pybridge.check import check_bracket, check_long_side
from pybridge.frames import read_frame

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]
N = 12


def _bracket(seed: int):
    # 12 frames; one focus step blurs by 1.45 px (disk radius), the plane spans 90 % of the
    # bracket, objects sit at every depth 0..10; 1 % breathing, shifts, 0.5 % flicker
    return make_bracket(N, (480, 640), max_blur=16.0, seed=seed, flicker=0.005, slant=0.9)


@pytest.fixture(scope="module")
def bracket():
    return _bracket(1)


@pytest.fixture(scope="module")
def bracket2():
    return _bracket(2)


def without(frames, removed):
    return [f for k, f in enumerate(frames) if k not in removed]


def problems(result) -> dict:
    j = result.to_json()
    return {k: j[k] for k in ("gaps", "duplicates", "exposure_jumps", "motion")}


# -- gaps -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["bracket", "bracket2"])
def test_a_complete_bracket_has_no_gap(which, request):
    b = request.getfixturevalue(which)
    result = check_bracket(b.frames)
    assert problems(result) == {"gaps": [], "duplicates": [], "exposure_jumps": [], "motion": []}
    assert result.order == "in focus order" and result.suggested_order is None
    assert all(e is None or e < 1.6 for e in result.step_ratios)


@pytest.mark.parametrize(
    "which, removed, gap",
    [
        ("bracket", (5, 6), [4, 5]),  # frames 0-4 and 7-11 are left: indexes 4 and 5
        ("bracket", (4, 5, 6), [3, 4]),
        ("bracket2", (5, 6), [4, 5]),
        ("bracket2", (3, 4, 5), [2, 3]),
    ],
)
def test_frames_missing_in_the_middle_are_a_gap_between_the_right_neighbours(
    which, removed, gap, request
):
    b = request.getfixturevalue(which)
    result = check_bracket(without(b.frames, removed))
    assert result.to_json()["gaps"] == [gap]
    (detail,) = result.gaps
    assert detail["between"] == gap
    assert 0.02 < detail["area_fraction"] < 0.5
    assert detail["step_ratio"] >= 1.6 and detail["severity"] == round(detail["step_ratio"] - 1, 1)
    # the box holds the scene whose focus was in the missing frames (reference geometry)
    x, y, w, h = detail["bbox"]
    inside = b.depth[y : y + h, x : x + w]
    lo, hi = min(removed) - 0.5, max(removed) + 0.5
    assert ((inside > lo) & (inside < hi)).mean() > ((b.depth > lo) & (b.depth < hi)).mean()
    assert not result.duplicates and not result.motion and result.order == "in focus order"


def test_reversed_order_is_fine_and_the_gap_is_still_found(bracket):
    result = check_bracket(bracket.frames[::-1])
    assert result.order == "in focus order" and result.gaps == []
    result = check_bracket(without(bracket.frames, (5, 6))[::-1])
    assert result.to_json()["gaps"] == [[4, 5]]  # 10 frames reversed: 9-4 -> 5, 9-5 -> 4


def test_what_the_end_pair_shows_is_no_gap_a_frame_missing_there_is():
    """An end pair is judged from its inner frame's blocks alone. Here frame 1's are mostly an
    object lying right at its focus, whose measure (steps of 3.1 px disk radius: a peaked focus
    curve) falls further to both sides than the bracket's mixed content does: the step to
    frame 0 looked 1.64 typical steps, a gap. Against the same blocks' fall towards frame 2
    it is an even step. With frame 1 taken out, the end pair is a gap."""
    b = make_bracket(10, (480, 640), max_blur=28.0, seed=5, flicker=0.005, slant=0.9)
    result = check_bracket(b.frames)
    assert result.gaps == [] and all(e is None or e < 1.6 for e in result.step_ratios)
    result = check_bracket(without(b.frames, (1,)))
    assert result.to_json()["gaps"] == [[0, 1]] and result.step_ratios[0] >= 1.6


def test_one_frame_missing_where_a_step_halves_the_finest_measure():
    """Steps of 2 px disk radius at the frames' own size (8 x 1 MP, thin hairs before a bright
    backdrop): one typical step divides the check-size focus measure by about 2, so a missing
    frame's double step nears that measure's floor and read under 1.6 typical steps, no gap.
    Judged at half size it reads 1.8 (mid) and 1.84 (end). (Seeds 0-4, frames 1, 3 or 4
    taken out: 8 of 15 found, 5 before; no gap in any whole bracket.)"""
    b = make_bracket(
        8, (866, 1155), max_blur=14.0, scene="halo", noise=0.002, flicker=0.005, seed=1
    )
    assert check_bracket(b.frames).gaps == []
    assert check_bracket(without(b.frames, (3,))).to_json()["gaps"] == [[2, 3]]
    assert check_bracket(without(b.frames, (1,))).to_json()["gaps"] == [[0, 1]]


# -- wasted, order, duplicates, exposure, motion --------------------------------------------


def test_frames_focused_before_the_subject_are_wasted(bracket):
    # two frames focused nearer than anything: blurrier than frame 0 everywhere
    before = [cv2.GaussianBlur(bracket.frames[0], (0, 0), s) for s in (3.0, 1.5)]
    result = check_bracket(before + bracket.frames)
    assert result.wasted[:2] == [0, 1] and 2 not in result.wasted
    assert result.gaps == []  # the step from a wasted frame into the bracket is no gap


def test_blurred_frames_padding_both_ends_are_wasted_and_leave_the_order_alone(bracket):
    """A bracket started before the subject and ended past it: both end frames are sharp
    nowhere, so no block is near its sharpest in either. Their distance was taken as 0 (the
    frames looked alike), the chain joining them as shorter: out of order, and neither gaps
    nor wasted frames judged (depthmap10 with frames 4, 5 taken out did the same)."""
    near, far = (cv2.GaussianBlur(bracket.frames[k], (0, 0), 3.0) for k in (0, -1))
    result = check_bracket([near, *bracket.frames, far])
    assert result.order == "in focus order" and result.gaps == []
    assert result.wasted[0] == 0 and result.wasted[-1] == N + 1
    result = check_bracket([near, *without(bracket.frames, (5, 6)), far])
    assert result.order == "in focus order" and result.to_json()["gaps"] == [[5, 6]]


def test_a_frame_focused_past_the_subject_is_wasted_where_its_blur_spreads():
    """Hairs before a bright backdrop with glints (the halo scene) and one frame focused past
    the backdrop: the glints' blur spreads onto the flat backdrop around them, where the
    blurrier the frame the higher its measure, so that frame was the sharpest in a few
    blocks: not wasted, and a gap before it. Such a block's measure rises towards the other
    end of the bracket too; a block counts where its measure falls 4x towards the end of the
    bracket farther from its sharpest frame."""
    b = make_bracket(8, (480, 640), max_blur=10.0, scene="halo", noise=0.002, flicker=0.005, seed=2)
    assert check_bracket(b.frames).wasted == []
    result = check_bracket([*b.frames, cv2.GaussianBlur(b.frames[-1], (0, 0), 2.0)])
    assert result.wasted == [8] and result.gaps == []


def test_two_blurred_frames_at_one_end_leave_the_order_alone(bracket):
    """Two frames focused before the subject share no block near its sharpest, so how far
    apart they are is unknown. Taken as the farthest seen (right for the two ends of a
    padded bracket), it kept these two neighbours apart and called the bracket out of order
    (bench/check_scenes.py --findings: 9 of 44 brackets padded at one end). Order is judged
    on the frames sharp somewhere; frames sharp nowhere go to the end they are nearer."""
    before = [cv2.GaussianBlur(bracket.frames[0], (0, 0), s) for s in (4.0, 2.0)]
    result = check_bracket(before + bracket.frames)
    assert result.order == "in focus order" and result.wasted[:2] == [0, 1]
    # out of order beside them: the suggestion keeps them before frame 0
    given = before + bracket.frames[7:] + bracket.frames[:7]
    result = check_bracket(given)
    assert result.order == "out of order"
    focus = [-2, -1, *range(7, N), *range(7)]  # focus position of each frame given
    restored = [focus[k] for k in result.suggested_order]
    assert restored in (sorted(restored), sorted(restored, reverse=True))


def test_a_file_counter_that_wrapped_is_out_of_order(bracket):
    """IMG_9999 then IMG_0001: sorted by name, the bracket's last frames come first."""
    given = bracket.frames[7:] + bracket.frames[:7]
    result = check_bracket(given)
    assert result.order == "out of order"
    focus = [(k + 7) % N for k in result.suggested_order]
    assert focus in (list(range(N)), list(range(N))[::-1])


def test_frames_out_of_order_and_the_order_they_belong_in(bracket):
    order = list(range(N))
    order[3], order[8] = order[8], order[3]
    result = check_bracket([bracket.frames[k] for k in order])
    assert result.order == "out of order"
    # given position -> frame: putting the given frames in the suggested order restores focus
    assert [order[k] for k in result.suggested_order] == list(range(N))
    assert result.gaps == [] and result.wasted == []  # not judged until the order is right


def test_a_long_shuffled_bracket_gets_an_order_close_to_focus_order():
    """QA: aligned along the order given, most steps between shuffled frames fail (far apart
    in focus), and each failed step continued the last one: frames misregistered by tens of
    pixels, and a suggested order with 20 of 59 links right (4 of 99 for 100 frames). A
    bracket out of order is measured again, each failed step taking its frame as it is."""
    n = 60
    b = make_bracket(
        n, (300, 400), max_blur=n - 1.0, noise=0.01, seed=4, slant=0.9, breathing=0.002
    )
    given = list(np.random.default_rng(1).permutation(n))
    result = check_bracket([b.frames[i] for i in given])
    assert result.order == "out of order"
    found = [given[i] for i in result.suggested_order]
    right = sum(abs(a - c) == 1 for a, c in zip(found, found[1:], strict=False))
    assert right >= 0.7 * (n - 1)


def test_a_repeated_frame_is_a_duplicate(bracket):
    rng = np.random.default_rng(3)
    again = np.clip(bracket.frames[5] + rng.normal(0, 0.005, bracket.frames[5].shape), 0, 1)
    frames = [*bracket.frames[:6], again.astype(np.float32), *bracket.frames[6:]]
    result = check_bracket(frames)
    assert result.duplicates == [[5, 6]]
    assert result.gaps == []


def test_the_last_frame_shot_twice_is_a_duplicate_not_wasted(bracket):
    """QA: the copy wins no block (ties go to the first of two equal frames), so it was
    reported twice over: a duplicate and a wasted frame."""
    frames = make_bracket(3, (480, 640), max_blur=4.0, seed=1, flicker=0.005, slant=0.9).frames
    result = check_bracket(frames + [frames[2]])
    assert result.duplicates == [[2, 3]] and result.wasted == []


def test_shuffled_frames_are_no_duplicates(bracket2):
    """Out of order, neighbours as given are far apart in focus: against the typical
    difference of those, true neighbours looked alike enough to be duplicates. Typical is
    now measured along the suggested order."""
    given = [9, 2, 7, 4, 5, 11, 0, 3, 6, 10, 8, 1]
    result = check_bracket([bracket2.frames[k] for k in given])
    assert result.order == "out of order" and result.duplicates == []
    assert [given[k] for k in result.suggested_order] in (list(range(N)), list(range(N))[::-1])


def test_an_exposure_jump(bracket):
    frames = bracket.frames[:7] + [np.clip(f * 1.1, 0, 1) for f in bracket.frames[7:]]
    result = check_bracket(frames)
    (jump,) = result.exposure_jumps
    assert jump["between"] == [6, 7] and jump["change"] == pytest.approx(0.10, abs=0.02)
    assert any(
        re.fullmatch(r"exposure jump: frame 7 is \d+\.\d% brighter than frame 6", line)
        for line in result.summary_lines()
    )
    darker = check_bracket(bracket.frames[:7] + [f * 0.9 for f in bracket.frames[7:]])
    assert any(
        re.fullmatch(r"exposure jump: frame 7 is \d+\.\d% darker than frame 6", line)
        for line in darker.summary_lines()
    )


def test_a_dark_frame_mid_bracket_is_a_jump_both_ways(bracket):
    """QA: the aligner's gain (held within 0.5-2 for the stack) read a black frame as 50 %
    darker and lost the jump back. The check now compares the frames' levels as measured."""
    frames = list(bracket.frames)
    frames[5] = frames[5] * 0.2  # the flash did not fire
    frames[8] = np.zeros_like(frames[8])  # the lens cap
    result = check_bracket(frames)
    jumps = {tuple(j["between"]): j["change"] for j in result.exposure_jumps}
    assert set(jumps) == {(4, 5), (5, 6), (7, 8), (8, 9)}
    assert jumps[(4, 5)] == pytest.approx(-0.8, abs=0.02)
    assert jumps[(5, 6)] == pytest.approx(4.0, rel=0.1)
    assert jumps[(7, 8)] == pytest.approx(-1.0, abs=0.01) and jumps[(8, 9)] > 50
    lines = result.summary_lines()
    assert any(
        re.fullmatch(r"exposure jump: frame 8 is 99\.\d% darker than frame 7", x) for x in lines
    )
    assert any(
        re.fullmatch(r"exposure jump: frame 9 is \d+\.\d times as bright as frame 8", x)
        for x in lines
    )


def _moved(frame, dx=12):
    """A round patch of the subject moved sideways by dx px (soft-edged)."""
    h, w = frame.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cv2.circle(mask, (w // 3, h // 2), 70, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 4)[..., None]
    shifted = cv2.warpAffine(
        frame, np.float32([[1, 0, dx], [0, 1, 0]]), (w, h), borderMode=cv2.BORDER_REFLECT
    )
    return frame * (1 - mask) + shifted * mask


@pytest.mark.parametrize("which", ["bracket", "bracket2"])
def test_subject_motion_between_two_frames(which, request):
    b = request.getfixturevalue(which)
    frames = b.frames[:7] + [_moved(f) for f in b.frames[7:]]
    result = check_bracket(frames)
    (event,) = result.motion
    assert event["between"] == [6, 7]
    x, y, w, h = event["bbox"]
    assert x <= 640 // 3 <= x + w and y <= 240 <= y + h  # around the moved patch
    assert event["area_fraction"] < 0.1


def test_motion_is_not_mirrored_onto_the_end_pair(bracket2):
    """Six frames, a patch moved from the fifth on: the last pair's only neighbour is the
    pair that moved, and its own flow (none) minus that neighbour's read as a move the other
    way: motion [4, 5] beside the real [3, 4]. A pair's own flow must be the larger."""
    six = bracket2.frames[4:10]
    result = check_bracket(six[:4] + [_moved(f) for f in six[4:]])
    assert [m["between"] for m in result.motion] == [[3, 4]]


def test_focus_distances_give_direction_and_step(bracket):
    near_to_far = [0.100 + 0.0005 * k for k in range(N)]
    result = check_bracket(bracket.frames, distances=near_to_far)
    assert result.order == "near to far" and result.step_mm == pytest.approx(0.5)
    # rounded readings (two frames per value) and unknown ones still give the step
    rounded = [round(d, 3) if k % 3 else None for k, d in enumerate(near_to_far)]
    assert check_bracket(bracket.frames, distances=rounded).step_mm == pytest.approx(0.5, 0.1)
    result = check_bracket(bracket.frames[::-1], distances=near_to_far[::-1])
    assert result.order == "far to near"


# -- the real brackets ----------------------------------------------------------------------


def _real(test_data, name):
    return sorted((test_data / "brackets" / name).glob("pcb_*.[jJ][pP][gG]"))


def test_real_brackets_in_order_without_duplicates_or_motion(test_data):
    for name in ("pcb7", "depthmap10"):
        result = check_bracket(_real(test_data, name))
        assert result.order == "in focus order", name
        assert result.duplicates == [] and result.motion == [], name
    # depthmap10 is evenly stepped where the subject is; its first two frames are focused in
    # front of it (the sharpest nowhere)
    result = check_bracket(_real(test_data, "depthmap10"))
    assert result.gaps == [] and result.wasted == [0, 1]


def test_real_bracket_with_frames_taken_out(test_data):
    files = _real(test_data, "depthmap10")
    result = check_bracket(without(files, (4, 5)))
    assert [3, 4] in result.to_json()["gaps"]
    files = _real(test_data, "pcb7")
    result = check_bracket(without(files, (2, 3)))
    assert [1, 2] in result.to_json()["gaps"]


@pytest.fixture(scope="module")
def stray_shot(test_data, tmp_path_factory):
    """A frame of another subject (pcb7's, at depthmap10's size) for depthmap10."""
    size = cv2.imread(str(_real(test_data, "depthmap10")[0])).shape[1::-1]
    path = tmp_path_factory.mktemp("stray") / "stray.jpg"
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(_real(test_data, "pcb7")[3])), size))
    return path


@pytest.mark.parametrize("at", [0, 3, 5, 10])  # 5: the middle of 11, the reference; 0, 10: ends
def test_a_shot_of_something_else_does_not_belong_and_is_left_out(test_data, stray_shot, at):
    """It lines up with no neighbour and looks like none. As the reference it misregistered
    every frame: frames 8-10 read as wasted, with jumps to and from it; now the rest reads as
    depthmap10 alone, numbered as given (a test shot before the bracket is found too)."""
    files = _real(test_data, "depthmap10")
    alone = check_bracket(files).to_json()
    result = check_bracket([*files[:at], stray_shot, *files[at:]])
    data = result.to_json()

    def given(k):
        return k + (k >= at)

    assert data["stray"] == [at] and not result.ok
    assert data["order"] == "in focus order" and data["gaps"] == [] and data["motion"] == []
    assert data["wasted"] == [given(k) for k in alone["wasted"]] and alone["wasted"] == [0, 1]
    assert [e["between"] for e in data["exposure_jumps"]] == [[given(1), given(2)]]
    ratios = data["step_ratios"]
    assert len(ratios) == 10 and all(ratios[k] is None for k in (at - 1, at) if 0 <= k < 10)
    same = [r for k, r in enumerate(ratios) if k not in (at - 1, at)]
    assert same == [r for k, r in enumerate(alone["step_ratios"]) if k != at - 1]
    assert f"frame {at} does not belong to the bracket" in result.summary_lines()[1]
    assert alone["stray"] == []


@pytest.fixture(scope="module")
def stray_pair(test_data, tmp_path_factory):
    """Two neighbouring frames of another bracket (pcb7's 4th and 5th, at depthmap10's size):
    they line up with each other, and each one's other neighbour is the other one."""
    size = cv2.imread(str(_real(test_data, "depthmap10")[0])).shape[1::-1]
    folder = tmp_path_factory.mktemp("stray-pair")
    pair = []
    for k in (3, 4):
        pair.append(folder / f"other_{k}.jpg")
        cv2.imwrite(str(pair[-1]), cv2.resize(cv2.imread(str(_real(test_data, "pcb7")[k])), size))
    return pair


# 0, 10: at an end; 5: the pair holds the middle of 12 frames, the reference
@pytest.mark.parametrize("at", [0, 3, 5, 10])
def test_two_shots_of_something_else_side_by_side_are_left_out(test_data, stray_pair, at):
    files = _real(test_data, "depthmap10")
    alone = check_bracket(files).to_json()
    result = check_bracket([*files[:at], *stray_pair, *files[at:]])
    data = result.to_json()

    def given(k):
        return k + 2 * (k >= at)

    assert data["stray"] == [at, at + 1] and not result.ok
    assert data["order"] == "in focus order" and data["gaps"] == [] and data["motion"] == []
    assert data["wasted"] == [given(k) for k in alone["wasted"]]
    assert [e["between"] for e in data["exposure_jumps"]] == [
        [given(a), given(b)] for a, b in (e["between"] for e in alone["exposure_jumps"])
    ]
    ratios = data["step_ratios"]
    assert len(ratios) == 11
    assert all(ratios[k] is None for k in (at - 1, at, at + 1) if 0 <= k < 11)
    told = [line.split(":")[0] for line in result.summary_lines()[1:3]]
    assert told == [f"frame {k} does not belong to the bracket" for k in (at, at + 1)]


# -- the check size and the reduced read ---------------------------------------------------


def test_the_check_size_follows_the_frame_size():
    # up to 1250 px as they are (their findings hold at their own size); larger: half their
    # size, rounded up (a JPEG's 1/2 decode), 750..1000 px
    assert [check_long_side(n) for n in (300, 640, 1024, 1250)] == [300, 640, 1024, 1250]
    assert [check_long_side(n) for n in (1251, 1521, 1999, 2048, 6000)] == [
        750,
        761,
        1000,
        1000,
        1000,
    ]
    # a size asked for is taken, unless the frame is at most 25 % larger
    assert [check_long_side(640, s) for s in (400, 512, 600, 2000)] == [400, 640, 640, 640]
    assert check_long_side(6000, 2000) == 2000


@pytest.fixture(scope="module")
def large_gap_jpegs(bracket, tmp_path_factory):
    """The test bracket with frames 5, 6 taken out, 2.5x larger, as JPEG files: checked at
    half size (800 px) through the reduced (DCT-domain) decode."""
    folder = tmp_path_factory.mktemp("large")
    return [
        save_image(
            folder / f"f{i:02d}.jpg", cv2.resize(f, (1600, 1200), interpolation=cv2.INTER_CUBIC)
        )
        for i, f in enumerate(without(bracket.frames, (5, 6)))
    ]


def test_large_jpegs_are_checked_at_half_size_from_a_reduced_decode(large_gap_jpegs, monkeypatch):
    reads = []
    small = check.read_frame_small
    monkeypatch.setattr(
        check, "read_frame_small", lambda *a, **k: reads.append(a[1]) or small(*a, **k)
    )
    result = check_bracket(large_gap_jpegs)
    assert reads == [800] * len(large_gap_jpegs)
    assert result.size == (1600, 1200) and result.check_size == (800, 600)
    assert result.to_json()["gaps"] == [[4, 5]]
    assert not result.duplicates and not result.motion and result.order == "in focus order"
    x, y, w, h = result.gaps[0]["bbox"]  # in the frames' pixels
    assert x + w <= 1600 and y + h <= 1200 and w * h > 0.02 * 1600 * 1200


def test_distances_can_come_later(bracket):
    # a function for the distances is called after the pixel pass (exiftool reads meanwhile)
    near_to_far = [0.100 + 0.0005 * k for k in range(N)]
    calls = []
    result = check_bracket(bracket.frames, distances=lambda: calls.append(1) or near_to_far)
    assert calls == [1] and result.order == "near to far"
    assert result.step_mm == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one entry per frame"):
        check_bracket(bracket.frames, distances=lambda: near_to_far[:3])


# -- the command ----------------------------------------------------------------------------


def run(*args):
    return subprocess.run(
        [*FOCUSBRIDGE, "check", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def gap_files(bracket, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gap")
    frames = without(bracket.frames, (5, 6))
    return [save_image(folder / f"frame_{i:03d}.png", f, 16) for i, f in enumerate(frames)]


def test_check_json_and_coverage_map(gap_files, bracket, tmp_path):
    coverage = tmp_path / "coverage.png"
    done = run(*gap_files, "--json", "--map", coverage)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    for key in ("gaps", "gap_details", "wasted", "order", "duplicates", "exposure_jumps"):
        assert key in data, key
    assert data["gaps"] == [[4, 5]] and data["gap_details"][0]["between"] == [4, 5]
    assert {"area_fraction", "bbox", "severity"} <= set(data["gap_details"][0])
    assert data["motion"] == [] and data["coverage_map"] == str(coverage)
    preview = read_frame(coverage).pixels
    assert preview.shape == (480, 640, 3)

    # tinted red where sharp in no frame: inside the gap's box, hardly anywhere else (against
    # the all-in-focus truth, so the scene's own reds don't count)
    def redness(img):
        return img[..., 0] - 0.5 * (img[..., 1] + img[..., 2])

    red = redness(preview) - redness(bracket.truth) > 0.2
    x, y, w, h = data["gap_details"][0]["bbox"]
    box = np.zeros(red.shape, bool)
    box[y : y + h, x : x + w] = True
    assert red[box].mean() > 0.05 and red[box].mean() > 3 * red[~box].mean()
    assert not list(tmp_path.glob(".*partial*"))


def test_check_text_names_the_gap(gap_files):
    done = run(*gap_files)
    assert done.returncode == 0, done.stderr
    assert "gap between frames 4 and 5" in done.stdout


def test_check_errors_are_one_line_and_touch_nothing(gap_files, tmp_path):
    before = gap_files[0].read_bytes()
    done = run(*gap_files, "--map", gap_files[0], "--overwrite")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert str(gap_files[0]) in done.stderr and "input frame" in done.stderr
    assert gap_files[0].read_bytes() == before
    done = run(*gap_files[:3], tmp_path / "missing.png")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "missing.png" in done.stderr
    done = run(*gap_files, "--map", tmp_path / "map.bmp")
    assert done.returncode == 1 and "map.bmp" in done.stderr and done.stderr.count("\n") == 1
    done = run(gap_files[0])
    assert done.returncode == 1 and "at least two frames" in done.stderr
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep")
    done = run(*gap_files, "--map", existing)
    assert done.returncode == 1 and "exists" in done.stderr
    assert existing.read_bytes() == b"keep"
    (tmp_path / "maps").mkdir()  # a folder: said so, not that its name lacks an extension
    done = run(*gap_files, "--map", tmp_path / "maps")
    assert done.returncode == 1 and done.stderr.strip().endswith("maps: is a folder")


def test_check_reads_focus_distances_for_direction_and_step(bracket, exiftool, tmp_path):
    # far to near: the files say so through EXIF SubjectDistance (set with exiftool)
    files = []
    for i, frame in enumerate(bracket.frames[::-1]):
        path = save_image(tmp_path / f"f{i:02d}.jpg", frame)
        exiftool("-overwrite_original", f"-SubjectDistance={0.1055 - 0.0005 * i:.4f}", path)
        files.append(path)
    done = run(*files, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["order"] == "far to near" and data["step_mm"] == pytest.approx(0.5, abs=0.01)
    assert data["gaps"] == []


def test_no_exiftool_for_frames_without_metadata(gap_files, monkeypatch):
    # generated PNGs carry no EXIF or XMP: no focus distance to read, no exiftool started
    import exif.tool
    from pybridge.capture import focus_distances
    from pybridge.headers import may_carry_metadata

    def refuse(*a, **k):
        raise AssertionError("exiftool started")

    monkeypatch.setattr(exif.tool, "open_exiftool", refuse)
    assert not any(map(may_carry_metadata, gap_files))
    assert focus_distances([str(f) for f in gap_files]) == (None, None)


def test_frames_with_metadata_are_read_with_exiftool(test_data, tmp_path, exiftool):
    from pybridge.headers import may_carry_metadata

    meta = test_data / "camera-metadata"
    for name in ("Canon.jpg", "Nikon.jpg", "CanonRaw.cr3", "DNG.dng"):
        assert may_carry_metadata(meta / name), name
    # Make and Model in IFD0, but no EXIF IFD, maker notes or XMP: no focus distance there
    assert not may_carry_metadata(meta / "ExifTool.tif")
    png = save_image(tmp_path / "f.png", np.zeros((8, 8, 3), np.float32), 8)
    assert not may_carry_metadata(png)
    exiftool("-overwrite_original", "-SubjectDistance=0.25", png)
    assert may_carry_metadata(png)
    tif = save_image(tmp_path / "f.tif", np.zeros((8, 8, 3), np.float32), 16)
    assert not may_carry_metadata(tif)
    exiftool("-overwrite_original", "-SubjectDistance=0.25", tif)
    assert may_carry_metadata(tif)


def test_a_named_pipe_among_the_frames_is_refused_not_waited_for(test_data, tmp_path):
    """The focus-distance thread opened every frame to look for metadata (and exiftool read
    them): a named pipe blocked it, and the check never ended. Now it is left to the frame
    reader, which refuses it in one line."""
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    camera = test_data / "camera-metadata" / "Canon.jpg"  # metadata: exiftool is asked
    done = subprocess.run(
        [*FOCUSBRIDGE, "check", camera, pipe], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "pipe.jpg: is not a regular file (a named pipe)" in done.stderr


def test_focus_distances_from_real_maker_notes(test_data):
    from pybridge.capture import focus_distances

    meta = test_data / "camera-metadata"
    distances, note = focus_distances([meta / "CanonRaw.cr3", meta / "Nikon.nef", meta / "DNG.dng"])
    assert note is None
    # Canon: the middle of FocusDistanceLower/Upper 0.22/0.24 m; Nikon: its FocusDistance
    assert distances[0] == pytest.approx(0.23) and distances[1] == pytest.approx(2.371, abs=0.001)
    assert distances[2] is None


def test_two_frames_are_too_few_to_call_one_wasted(tmp_path):
    """Wasted frames are judged on blocks that at least three frames cover: with two frames
    nothing is judged (frame 0 was reported wasted whatever it showed)."""
    small = make_bracket(4, (300, 400), seed=3)
    files = [save_image(tmp_path / f"small_{i}.png", small.frames[i]) for i in (0, 3)]
    result = check_bracket(files)
    assert result.wasted == []
    assert "too few frames to judge wasted frames" in " ".join(result.notes)
    done = run(*files)
    assert done.returncode == 0, done.stderr
    assert "wasted:" not in done.stdout and "too few frames to judge wasted" in done.stdout
    three = check_bracket([small.frames[i] for i in (0, 1, 3)])
    assert not any("wasted" in n for n in three.notes)  # three frames are judged


# -- what QA found: fine steps, blank frames, thin strips, duplicates beside steps ----------


def test_a_finely_stepped_bracket_has_no_gap():
    """28 frames, a blur step of 0.3 px: the typical fall is next to nothing. Bilinear
    resampling made the reference frame (never resampled) measure up to 0.6 sharper than its
    neighbours, and what a pair's blocks show made others fall 2-3 typical steps: false gaps
    [0, 1], [12, 13] (and elsewhere with other seeds)."""
    b = make_bracket(28, (500, 750), seed=3, noise=0.01, bit_depth=8)
    result = check_bracket(b.frames)
    assert result.gaps == [] and result.order == "in focus order" and result.duplicates == []


@pytest.fixture(scope="module")
def fine_bracket():
    # 30 frames 0.45 px of blur apart, 16-bit: blocks stay as sharp over 2-3 frames (a blur
    # under half a pixel does nothing) and then fall at once, a plateau and a cliff
    return make_bracket(
        30, (600, 800), max_blur=13.05, noise=0.01, seed=2, slant=0.9, bit_depth=16
    ).frames


def test_a_bracket_stepped_within_its_depth_of_field_has_no_gap(fine_bracket):
    """QA: the edge of each plateau read as a gap, 4x the typical step (falls 0.4-0.5 while
    the typical pair falls 0.04): [1, 2], [3, 4], [6, 7], [26, 27]."""
    result = check_bracket(fine_bracket)
    assert result.gaps == [] and result.order == "in focus order"


def test_frames_missing_from_a_finely_stepped_bracket_are_a_gap(fine_bracket):
    """Five frames out of the middle make a step of 2.7 px: a gap at the right pair, and no
    other."""
    result = check_bracket(without(fine_bracket, range(12, 17)))
    assert [g["between"] for g in result.gaps] == [[11, 12]]


@pytest.mark.parametrize("level", [0.0, 0.5])
def test_frames_without_detail_are_a_note_not_a_crash(level):
    frames = [np.full((120, 160, 3), level, np.float32) for _ in range(4)]
    result = check_bracket(frames)
    assert "too little detail to judge focus (blank or out-of-focus frames?)" in result.notes
    assert result.gaps == [] and result.wasted == []
    # QA: the note was followed by "no problems found", as if the frames had been judged
    assert not result.judged_all and result.to_json()["judged_all"] is False
    assert result.summary_lines()[-1] == "no problems found in what could be judged"


def test_a_thin_strip_is_checked_at_least_32_px_across(bracket):
    strip = [f[200:260] for f in bracket.frames]  # 640 x 60: would be checked at 640 x 60
    result = check_bracket([cv2.resize(f, (1500, 60)) for f in strip])  # 1500: at 800 x 32
    assert result.check_size == (800, 32) and result.motion == []
    assert "the frames are too thin to judge motion" in result.notes
    with pytest.raises(check.InputError, match="is 20 px across: a check needs at least 32"):
        check_bracket([f[:20] for f in bracket.frames])


@pytest.mark.parametrize("across", [32, 40])
def test_a_strip_a_few_dozen_pixels_across_is_judged(across):
    """QA: blocks sized by the long side alone left a 1600 x 32 strip one row of them, too
    few to judge focus ("too little detail") or to tell wasted frames (most were called
    so). A strip keeps four rows of blocks; the frames focused nowhere on it are wasted."""
    b = make_bracket(12, (100, 1600), max_blur=16.0, seed=1, flicker=0.005, slant=0.9)
    rows = slice(30, 30 + across)
    result = check_bracket([f[rows] for f in b.frames])
    depth = b.depth[rows]
    nowhere = [k for k in range(12) if (np.abs(depth - k) < 0.5).mean() < 0.005]
    assert result.judged_all is False  # motion is not judged on a strip
    assert not any("too little detail" in n for n in result.notes)
    assert result.wasted == nowhere == [0] and result.gaps == []


def test_a_duplicate_is_no_focus_step(test_data):
    """A frame given twice: its pair's fall (none) made the typical step small, and other
    steps read bigger: depthmap10 with frame 4 twice had a false gap [1, 2] (1.67 typical
    steps), and its other copies pushed pairs to 1.5-1.8."""
    files = _real(test_data, "depthmap10")
    result = check_bracket([*files[:5], files[4], *files[5:]])
    assert result.duplicates == [[4, 5]]
    assert result.gaps == [] and result.wasted == [0, 1]


def test_shuffled_frames_are_not_judged_for_motion(test_data):
    files = _real(test_data, "pcb7")
    result = check_bracket([files[k] for k in (0, 1, 4, 3, 2, 5, 6)])
    assert result.order == "out of order" and result.motion == []
    assert "gaps, wasted frames and motion are not judged until the order is right" in (
        result.notes
    )
