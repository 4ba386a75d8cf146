"""`focusbridge plan`: the optics against published figures, the plan's arithmetic, the command.

Published figures (Zerene Stacker, by Rik Littlefield):
* DOF calculator, zerenesystems.com/cms/stacker/docs/dofcalculator: "Magnification = 1,
  nominal lens aperture f/16 giving effective f/32, calculates diffraction limited wave optics
  DOF = 2.253 mm"; "adding CoC width = 0.030 mm ... calculates also classic DOF = 1.92 mm".
* DOF tables, zerenesystems.com/cms/stacker/docs/tables/macromicrodof, Table 2-A: wave-optics
  DOF by magnification (rows) and lens f-number f/2, 2.8, 4, 5.6, 8, 11, 16, 22 (columns),
  printed to two significant figures.
* Microscope objective NA 0.28 (10x): DOF = lambda / NA^2 = 0.55 / 0.0784 = 7.0 um.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from pybridge.errors import OptionError
from pybridge.plan import (
    IN_CAMERA_NOTE,
    PITCH_RANGE,
    RANGES,
    PlanOptions,
    make_plan,
    rail_csv,
)

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def plan(**kw):
    return make_plan(PlanOptions(**kw))


def two_figures(x: float) -> float:
    """Round to two significant figures, as the published table prints its values."""
    return round(x, 1 - math.floor(math.log10(abs(x))))


# -- the published figures ------------------------------------------------------------------


def test_zerene_calculator_example_1x_f16():
    p = plan(magnification=1, aperture=16, coc=0.030)
    assert p.effective_aperture == pytest.approx(32)
    assert round(p.dof_wave_um / 1000, 3) == 2.253
    assert round(p.dof_classic_um / 1000, 2) == 1.92


LENS_F_NUMBERS = (2, 2.8, 4, 5.6, 8, 11, 16, 22)
# Table 2-A rows: magnification -> DOF in mm for the lens f-numbers above
TABLE_2A = {
    2.0: (0.020, 0.039, 0.079, 0.16, 0.32, 0.60, 1.3, 2.4),
    2.5: (0.017, 0.034, 0.069, 0.14, 0.28, 0.52, 1.1, 2.1),
    5.0: (0.013, 0.025, 0.051, 0.099),
    14: (0.010, 0.020, 0.040, 0.079, 0.16, 0.31, 0.65, 1.2),
    20: (0.0097, 0.019, 0.039, 0.076, 0.16, 0.29, 0.62, 1.2),
}


@pytest.mark.parametrize(
    "magnification, f_number, published_mm",
    [(m, n, mm) for m, row in TABLE_2A.items() for n, mm in zip(LENS_F_NUMBERS, row, strict=False)],
)
def test_zerene_table_2a(magnification, f_number, published_mm):
    p = plan(magnification=magnification, aperture=f_number)
    assert two_figures(p.dof_wave_um / 1000) == pytest.approx(published_mm)


def test_zerene_5x_at_f2_8_is_0_025_mm():
    # the entry the issue quotes: 5x at f/2.8 on the lens, effective f/16.8
    p = plan(magnification=5, aperture=2.8)
    assert p.effective_aperture == pytest.approx(16.8)
    assert p.dof_wave_um == pytest.approx(24.84, abs=0.01)


def test_microscope_objective_na_0_28():
    p = plan(magnification=10, na=0.28)
    assert p.dof_wave_um == pytest.approx(7.0, abs=0.05)
    assert p.dof_wave_um == pytest.approx(0.55 / 0.28**2)
    # the working f-number at the sensor: m / (2 NA)
    assert p.effective_aperture == pytest.approx(10 / 0.56)
    assert p.lens_aperture is None


def test_objective_without_magnification_gives_the_dof_alone():
    p = plan(na=0.28)
    assert p.dof_wave_um == pytest.approx(7.015, abs=0.001)
    assert p.effective_aperture is None and p.airy_um is None and p.dof_classic_um is None


# -- the arithmetic -------------------------------------------------------------------------


def test_effective_aperture_flag_and_pupil_ratio():
    # a body that reports the effective f-number: f/32 effective at 1x is f/16 on the lens
    p = plan(magnification=1, aperture=32, effective_aperture=True)
    assert p.effective_aperture == 32 and p.lens_aperture == pytest.approx(16)
    assert p.dof_wave_um == pytest.approx(plan(magnification=1, aperture=16).dof_wave_um)
    # N_eff = N (1 + m / P): a retrofocus-like pupil ratio of 0.5 at 1x triples the f-number
    assert plan(magnification=1, aperture=16, pupil_ratio=0.5).effective_aperture == 48


def test_step_frames_and_rail_positions():
    p = plan(magnification=1, aperture=16, depth_mm=10)
    assert p.step_um == pytest.approx(0.7 * 2252.8)
    assert p.frames == math.ceil(10_000 / p.step_um) + 1 == 8
    lines = rail_csv(p).splitlines()
    assert float(lines[0]) == 0 and float(lines[1]) == pytest.approx(p.step_um, abs=0.01)
    assert len(lines) == 8 and float(lines[-1]) == pytest.approx(7 * p.step_um, abs=0.01)
    # a depth of exactly three steps takes four frames, not five
    exact = plan(magnification=1, aperture=16, overlap=0.5, depth_mm=3 * 0.5 * 2.2528)
    assert exact.frames == 4
    # more overlap, smaller steps, more frames
    assert plan(magnification=1, aperture=16, overlap=0.5, depth_mm=10).frames > p.frames


def test_diffraction_warning_names_the_aperture_where_it_starts():
    p = plan(magnification=1, aperture=16)
    assert p.airy_um == pytest.approx(2.44 * 0.55 * 32)
    assert p.airy_pixels == pytest.approx(p.airy_um / 5.9)
    # two pixels of 5.9 um: effective f/8.79, so f/4.4 on the lens at 1x
    assert p.diffraction_limit_aperture == pytest.approx(2 * 5.9 / (2.44 * 0.55))
    assert len(p.warnings) == 1 and "f/4.4 on the lens" in p.warnings[0]
    # 0.5x at f/4: effective f/6, the Airy disk 8.1 um = 1.4 px of full frame: no warning
    assert plan(magnification=0.5, aperture=4).warnings == []
    # the same aperture on finer pixels does warn
    assert plan(magnification=0.5, aperture=4, sensor="m43").warnings


def test_sensor_presets_and_default_coc():
    assert plan(magnification=1, aperture=8).coc_mm == pytest.approx(36 / 1200)
    aps = plan(magnification=1, aperture=8, sensor="aps-c")
    assert aps.coc_mm == pytest.approx(23.5 / 1200) and aps.pixel_pitch_um == 3.9
    assert plan(magnification=1, aperture=8, sensor="m43").pixel_pitch_um == 3.3
    pitch = plan(magnification=1, aperture=8, sensor="4.35")
    assert pitch.pixel_pitch_um == 4.35 and pitch.coc_mm == pytest.approx(0.030)
    both = plan(magnification=1, aperture=8, sensor="aps-c:3.76")
    assert both.pixel_pitch_um == 3.76 and both.sensor_width_mm == 23.5
    assert plan(magnification=1, aperture=8, coc=0.02).dof_classic_um == pytest.approx(
        2 * 20 * 16 / 1
    )


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"magnification": 1}, "--aperture"),
        ({"magnification": 1, "aperture": 8, "na": 0.2}, "--aperture"),
        ({"aperture": 8}, "--magnification"),
        ({"magnification": 0, "aperture": 8}, "--magnification"),
        ({"magnification": 1, "aperture": 8, "overlap": 1.0}, "--overlap"),
        ({"magnification": 1, "aperture": 8, "sensor": "huge"}, "--sensor"),
        ({"magnification": 1, "na": 2.0}, "--na"),
        ({"magnification": 1, "aperture": 8, "depth_mm": -1}, "--depth-mm"),
    ],
)
def test_bad_options_are_refused(kw, name):
    with pytest.raises(OptionError) as err:
        PlanOptions(**kw)
    assert f"'{name}'" in str(err.value) and "\n" not in str(err.value)


# -- the command ----------------------------------------------------------------------------


def run(*args):
    return subprocess.run(
        [*FOCUSBRIDGE, "plan", *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_plan_json_has_the_documented_keys():
    done = run("--magnification", 1, "--aperture", 16, "--coc", 0.03, "--depth-mm", 10, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    for key in (
        "effective_aperture",
        "dof_wave_um",
        "dof_classic_um",
        "step_um",
        "frames",
        "airy_um",
        "pixel_pitch_um",
        "warnings",
    ):
        assert key in data, key
    assert data["dof_wave_um"] == pytest.approx(2252.8)
    assert data["dof_classic_um"] == pytest.approx(1920)
    assert data["frames"] == 8 and data["effective_aperture"] == 32
    assert data["in_camera_step"] is None and data["in_camera_note"] == IN_CAMERA_NOTE


def test_plan_text_and_csv():
    done = run("--magnification", 10, "--na", 0.28, "--depth-mm", 0.02)
    assert done.returncode == 0, done.stderr
    assert "7.02 µm (wave optics" in done.stdout
    assert "in-camera step widths are not documented in µm" in done.stdout
    assert "frames: 6" in done.stdout
    done = run("--magnification", 10, "--na", 0.28, "--depth-mm", 0.02, "--csv")
    assert done.returncode == 0, done.stderr
    assert [float(x) for x in done.stdout.split()] == pytest.approx(
        [i * 0.7 * 0.55 / 0.28**2 for i in range(6)], abs=0.01
    )


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["--magnification", 1, "--aperture", 16, "--csv"], 1, "--depth-mm"),
        (["--magnification", 1], 1, "aperture"),
        (["--magnification", 1, "--aperture", 16, "--sensor", "6x7"], 1, "sensor"),
        (["--magnification", "one", "--aperture", 16], 2, "--magnification"),
        (["--magnification", 1, "--aperture", 16, "--json", "--csv"], 2, "--csv"),
    ],
)
def test_plan_errors_are_one_line(args, code, text):
    done = run(*args)
    assert done.returncode == code, done.stderr
    assert text in done.stderr and done.stdout == ""
    if code == 1:
        assert done.stderr.startswith("focusbridge: error: ") and done.stderr.count("\n") == 1


# -- values outside what the optics allow --------------------------------------------------


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--magnification", "1e308", "--aperture", 8], "--magnification"),
        (["--magnification", "1e-300", "--aperture", 8], "--magnification"),
        (["--magnification", 1, "--aperture", "1e300"], "--aperture"),
        (["--magnification", 10, "--na", "1e-300"], "--na"),
        (["--magnification", 1, "--aperture", 8, "--wavelength", "1e-320"], "--wavelength"),
        (
            ["--magnification", 1, "--aperture", 8, "--pupil-ratio", "1e-320", "--json"],
            "--pupil-ratio",
        ),
        (["--magnification", 1, "--aperture", 8, "--coc", "1e9"], "--coc"),
        (["--magnification", 1, "--aperture", 8, "--sensor", "1e-320"], "--sensor"),
        (["--magnification", 100, "--aperture", 1, "--depth-mm", "1e6"], "--depth-mm"),
        (["--magnification", 1, "--aperture", 8, "--overlap", "nan"], "--overlap"),
    ],
)
def test_values_out_of_range_name_the_option_and_its_range(args, flag):
    done = run(*args)
    assert done.returncode == 1 and done.stdout == "", done.stdout[:200]
    assert done.stderr.startswith(f"focusbridge: error: option '{flag}' must be ")
    assert done.stderr.count("\n") == 1 and "internal error" not in done.stderr


def test_too_many_frames_are_refused_at_once_and_none_listed_unasked():
    # 636 557 frames of 1.57 um: refused before a rail position is worked out
    done = run("--magnification", 100, "--aperture", 1, "--depth-mm", 1000, "--csv")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "focusbridge: error: option '--depth-mm' gives 636,557 frames (1000 mm in steps of "
        "1.57 µm), more than the 100,000 a plan allows: plan a smaller depth, a larger step "
        "(less magnification, a higher f-number) or several stacks\n"
    )
    # just under the limit: the JSON holds the count, not 99 999 positions; --csv lists them
    depth = 99_999 * 0.7 * 4 * 0.55 * 101**2 / 100**2 / 1000
    done = run("--magnification", 100, "--aperture", 1, "--depth-mm", depth, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["frames"] == 100_000 and len(done.stdout) < 3000
    done = run("--magnification", 100, "--aperture", 1, "--depth-mm", depth, "--csv")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 100_000


# the ends of every range that a lens plan takes (the objective's NA: below)
CORNERS = {k: v for k, v in RANGES.items() if k not in ("na", "depth_mm")}
CORNERS["sensor"] = tuple(map(str, PITCH_RANGE))


@pytest.mark.parametrize("end", [0, 1])
@pytest.mark.parametrize("effective", [False, True])
def test_any_plan_within_the_ranges_is_valid_json(end, effective):
    """Every option at the end of its range, and each in turn at the other end: finite
    numbers, so the JSON is JSON (no Infinity), and a frame count or a clear refusal."""
    for other in [None, *CORNERS]:
        kw = {k: v[end if k != other else 1 - end] for k, v in CORNERS.items()}
        for extra in ({}, {"depth_mm": 10}, {"depth_mm": 0}):
            try:
                p = plan(**kw, **extra, effective_aperture=effective)
            except OptionError as exc:
                assert "more than the 100,000 a plan allows" in str(exc)
                continue
            json.dumps(p.to_json(), allow_nan=False)
            assert all(math.isfinite(v) for v in p.to_json().values() if isinstance(v, float))
    for na in (0.01, 1.6):
        for m in (None, 0.01, 1000):
            json.dumps(plan(na=na, magnification=m).to_json(), allow_nan=False)


def test_advice_stays_within_what_the_options_allow():
    # at 40x no objective (NA up to 1.6) brings the Airy disk down to 2 pixels: not "NA 2.27"
    p = plan(magnification=40, na=1.2)
    assert len(p.warnings) == 1 and "2.27" not in p.warnings[0]
    assert "even NA 1.6" in p.warnings[0]
    assert "NA 0.569" in plan(magnification=10, na=0.28).warnings[0]  # reachable: named
    # at 100x effective f/8.79 would be f/0.087 on the lens: no lens is that fast
    p = plan(magnification=100, aperture=8)
    assert "f/0.087" not in p.warnings[0] and "f/0.5" in p.warnings[0]
    assert "f/4.4 on the lens at 1x" in plan(magnification=1, aperture=16).warnings[0]
