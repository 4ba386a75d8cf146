"""PLAN: depth of field, focus step and frame count for a macro or microscope bracket.

The optics are those of Zerene Stacker's macro/micro DOF tables and calculator
(zerenesystems.com/cms/stacker/docs/tables/macromicrodof and .../docs/dofcalculator), whose
published figures tests/test_plan.py reproduces:

* effective (working) aperture at the sensor: ``N_eff = N * (1 + m / P)`` for a lens set to
  f/N at magnification m with pupil ratio P (exit / entrance pupil); ``N_eff = m / (2 NA)``
  for a microscope objective of numerical aperture NA;
* wave-optics depth of field (quarter-wave defocus): ``DOF = lambda / NA_obj^2`` with the
  object-side ``NA_obj = m / (2 N_eff)``, i.e. ``DOF = 4 lambda N_eff^2 / m^2``;
* classic depth of field: ``DOF = 2 c N_eff / m^2`` for a circle of confusion c;
* step = (1 - overlap) * wave-optics DOF; frames = ceil(depth / step) + 1;
* Airy disk diameter (to the first dark ring) ``2.44 lambda N_eff``, compared with the pixel
  pitch: past about two pixels diffraction costs resolution.

Everything here is arithmetic on the options; nothing is read or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from .errors import OptionError
from .options import Options, option

# (sensor width mm, pixel pitch µm, what the pitch stands for): typical bodies of each format
SENSORS = {
    "full-frame": (36.0, 5.9, "24 MP full frame"),
    "aps-c": (23.5, 3.9, "24 MP APS-C"),
    "m43": (17.3, 3.3, "20 MP Micro Four Thirds"),
}
# an Airy disk wider than this many pixels costs resolution (diffraction-limited beyond)
AIRY_PIXELS = 2.0
IN_CAMERA_NOTE = "in-camera step widths are not documented in µm; use the rail positions"
# What each number may be (docs/capture.md): past these ends the optics mean nothing, and the
# arithmetic would overflow or divide by zero.
RANGES = {
    "magnification": (0.01, 1000),
    "aperture": (0.5, 1000),
    "pupil_ratio": (0.1, 10),
    "coc": (0.001, 1),
    "wavelength": (200, 2000),
    "na": (0.01, 1.6),
    "depth_mm": (0, 10000),
}
PITCH_RANGE = (0.5, 100)  # µm, --sensor
MAX_FRAMES = 100_000  # a plan of more frames is a mistake in the options, not a bracket


@dataclass
class PlanOptions(Options):
    """What `focusbridge plan` is asked: the optics and the subject."""

    magnification: float | None = option(
        None,
        "magnification on the sensor (1 = life size); needed for everything but the "
        "wave-optics DOF of an objective given by --na",
    )
    aperture: float | None = option(
        None,
        "f-number set on the lens (the nominal one, not corrected for magnification)",
    )
    effective_aperture: bool = option(
        False,
        "--aperture is already the effective f-number (what modern Nikon bodies show and record)",
    )
    pupil_ratio: float = option(
        1.0, "pupil magnification P = exit / entrance pupil diameter (default 1)"
    )
    sensor: str = option(
        "full-frame",
        "sensor format: full-frame (36 mm wide, 5.9 µm pixels as on a 24 MP body), aps-c "
        "(23.5 mm, 3.9 µm: 24 MP), m43 (17.3 mm, 3.3 µm: 20 MP), a pixel pitch in µm "
        "(full-frame width assumed for the default CoC), or FORMAT:PITCH, e.g. aps-c:3.76",
    )
    coc: float | None = option(
        None, "circle of confusion in mm for the classic DOF (default: sensor width / 1200)"
    )
    wavelength: float = option(550.0, "wavelength in nm (default 550: green)")
    na: float | None = option(
        None,
        "numerical aperture of a microscope objective, as printed on it (instead of "
        "--aperture): DOF = wavelength / NA^2",
    )
    depth_mm: float | None = option(
        None, "subject depth to cover, in mm: gives the frame count and the rail positions"
    )
    overlap: float = option(
        0.3,
        "overlap of neighbouring frames' depth of field (default 0.3: step = 0.7 x DOF)",
    )

    def __post_init__(self):
        super().__post_init__()
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise OptionError(
                    flag(name), f"must be a number from {low:g} to {high:g}, not {float(value)!r}"
                )
        if not 0 <= self.overlap < 1:
            raise OptionError(
                "--overlap", f"must be at least 0 and below 1, not {float(self.overlap)!r}"
            )
        if self.aperture is None and self.na is None:
            raise OptionError("--aperture", "is needed (or '--na' for a microscope objective)")
        if self.aperture is not None and self.na is not None:
            raise OptionError("--aperture", "and '--na' exclude each other: give one of them")
        if self.na is None and self.magnification is None:
            raise OptionError("--magnification", "is needed with an aperture")
        sensor_geometry(self.sensor)  # refuse a bad --sensor before anything is computed

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        numbers = {f.name for f in dataclasses.fields(cls) if "float" in str(f.type)}
        metavars = {"magnification": "M", "aperture": "N", "pupil_ratio": "P", "coc": "MM"}
        metavars |= {"wavelength": "NM", "na": "NA", "depth_mm": "MM", "overlap": "F"}
        for action in parser._actions:
            if action.dest in numbers:
                action.type = float
            if action.dest in metavars:
                action.metavar = metavars[action.dest]
            if action.dest in RANGES:
                low, high = RANGES[action.dest]
                action.help += f" [{low:g} to {high:g}]"
            if action.dest == "sensor":
                action.metavar = "FORMAT"


def flag(name: str) -> str:
    """An option as the command line spells it: depth_mm -> --depth-mm."""
    return "--" + name.replace("_", "-")


def sensor_geometry(sensor: str) -> tuple[float, float, str]:
    """--sensor -> (width mm, pixel pitch µm, description)."""
    text = str(sensor).strip().lower()
    name, _, pitch_text = text.partition(":")
    if name in SENSORS and not pitch_text:
        return SENSORS[name]
    if not pitch_text:  # a bare number: the pitch
        name, pitch_text = "full-frame", text
    try:
        pitch = float(pitch_text)
    except ValueError:
        pitch = math.nan
    low, high = PITCH_RANGE
    if name not in SENSORS or not low <= pitch <= high:
        raise OptionError(
            "--sensor",
            f"must be full-frame, aps-c, m43, a pixel pitch in µm ({low:g} to {high:g}) or "
            f"FORMAT:PITCH, not {sensor!r}",
        )
    width = SENSORS[name][0]
    return width, pitch, f"{name}, {pitch:g} µm pixels"


@dataclass
class Plan:
    """The numbers `focusbridge plan` reports. Lengths in µm unless the name says mm."""

    magnification: float | None
    lens_aperture: float | None  # the f-number on the lens (None for an objective)
    effective_aperture: float | None  # working f-number at the sensor
    na: float | None  # object-side numerical aperture
    pupil_ratio: float
    wavelength_nm: float
    sensor: str
    sensor_width_mm: float
    pixel_pitch_um: float
    coc_mm: float
    dof_wave_um: float
    dof_classic_um: float | None
    overlap: float
    step_um: float
    depth_mm: float | None
    frames: int | None  # the rail positions are 0, step, 2 step, ... (rail_csv)
    airy_um: float | None
    airy_pixels: float | None
    diffraction_limit_aperture: float | None  # effective f-number where the Airy disk is 2 px
    diffraction_limit_lens_aperture: float | None  # the same on the lens (None: objective)
    warnings: list[str] = field(default_factory=list)
    in_camera_step: None = None  # no camera documents its step widths in µm
    in_camera_note: str = IN_CAMERA_NOTE

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 4)
        return out

    def summary_lines(self) -> list[str]:
        lines = []
        if self.lens_aperture is None:
            optics = f"objective NA {self.na:g}"
            if self.effective_aperture is not None:
                optics += (
                    f" at {self.magnification:g}x: effective f/{self.effective_aperture:.3g} "
                    "at the sensor"
                )
        else:
            optics = (
                f"magnification {self.magnification:g}x, lens f/{self.lens_aperture:.3g} -> "
                f"effective f/{self.effective_aperture:.3g} (pupil ratio {self.pupil_ratio:g})"
            )
        lines.append(optics)
        dof = f"depth of field: {length(self.dof_wave_um)} (wave optics, {self.wavelength_nm:g} nm)"
        if self.dof_classic_um is not None:
            dof += f", {length(self.dof_classic_um)} (classic, CoC {self.coc_mm:.4g} mm)"
        lines.append(dof)
        lines.append(
            f"step: {length(self.step_um)} ({self.overlap:.0%} overlap of the wave-optics DOF)"
        )
        if self.frames is not None:
            lines.append(f"frames: {self.frames} for {self.depth_mm:g} mm of subject depth")
        if self.airy_um is not None:
            lines.append(
                f"Airy disk: {self.airy_um:.1f} µm = {self.airy_pixels:.1f} pixels of "
                f"{self.pixel_pitch_um:g} µm ({self.sensor})"
            )
        lines.append(IN_CAMERA_NOTE)
        return lines


def length(um: float) -> str:
    """A length for people: 2.253 mm, 483 µm, 24.8 µm, 7.02 µm."""
    if um >= 1000:
        return f"{um / 1000:.4g} mm"
    if um < 1:  # a step on a fast objective at high magnification
        return f"{um:.3g} µm"
    return f"{um:.0f} µm" if um >= 100 else f"{um:.1f} µm" if um >= 10 else f"{um:.2f} µm"


def make_plan(opts: PlanOptions) -> Plan:
    """The plan for `opts` (see the module docstring for the formulas)."""
    width_mm, pitch_um, sensor_text = sensor_geometry(opts.sensor)
    lam_um = opts.wavelength / 1000.0
    m, p = opts.magnification, opts.pupil_ratio
    bellows = 1.0 + m / p if m is not None else None
    if opts.na is not None:
        dof_wave = lam_um / opts.na**2
        n_eff = m / (2.0 * opts.na) if m is not None else None
        lens_n = None
    else:
        n_eff = opts.aperture if opts.effective_aperture else opts.aperture * bellows
        lens_n = opts.aperture / bellows if opts.effective_aperture else opts.aperture
        dof_wave = 4.0 * lam_um * n_eff**2 / m**2
    coc_mm = opts.coc if opts.coc is not None else width_mm / 1200.0
    classic = 2.0 * coc_mm * 1000.0 * n_eff / m**2 if n_eff is not None else None
    step = (1.0 - opts.overlap) * dof_wave
    frames = _frames(opts.depth_mm, step) if opts.depth_mm is not None else None
    airy = airy_px = None
    if n_eff is not None:
        airy = 2.44 * lam_um * n_eff
        airy_px = airy / pitch_um
    # the effective f-number whose Airy disk spans AIRY_PIXELS pixels
    limit = AIRY_PIXELS * pitch_um / (2.44 * lam_um)
    limit_lens = limit / bellows if bellows is not None and opts.na is None else None
    plan = Plan(
        magnification=m,
        lens_aperture=lens_n,
        effective_aperture=n_eff,
        na=opts.na if opts.na is not None else (m / (2.0 * n_eff)),
        pupil_ratio=p,
        wavelength_nm=opts.wavelength,
        sensor=sensor_text,
        sensor_width_mm=width_mm,
        pixel_pitch_um=pitch_um,
        coc_mm=coc_mm,
        dof_wave_um=dof_wave,
        dof_classic_um=classic,
        overlap=opts.overlap,
        step_um=step,
        depth_mm=opts.depth_mm,
        frames=frames,
        airy_um=airy,
        airy_pixels=airy_px,
        diffraction_limit_aperture=limit,
        diffraction_limit_lens_aperture=limit_lens,
    )
    if airy_px is not None and airy_px > AIRY_PIXELS:
        disk = f"the Airy disk ({airy:.1f} µm) spans {airy_px:.1f} pixels of {pitch_um:g} µm"
        plan.warnings.append(_diffraction_advice(opts, disk, limit, limit_lens, lam_um, pitch_um))
    return plan


def _frames(depth_mm: float, step_um: float) -> int:
    """ceil(depth / step) + 1, refused past MAX_FRAMES before it is worked out in full."""
    steps = depth_mm * 1000.0 / step_um
    if steps >= MAX_FRAMES:
        raise OptionError(
            "--depth-mm",
            f"gives {math.ceil(steps - 1e-9) + 1:,} frames ({depth_mm:g} mm in steps of "
            f"{length(step_um)}), more than the {MAX_FRAMES:,} a plan allows: plan a smaller "
            "depth, a larger step (less magnification, a higher f-number) or several stacks",
        )
    return math.ceil(steps - 1e-9) + 1


def _diffraction_advice(opts, disk, limit, limit_lens, lam_um, pitch_um) -> str:
    """Where diffraction starts to cost resolution, said in what the options can reach."""
    m = opts.magnification
    if opts.na is None:
        low = RANGES["aperture"][0]
        if limit_lens >= low:
            where = f"f/{limit_lens:.3g} on the lens at {m:g}x"
        else:  # faster than any lens: say what the fastest one gives
            where = f"beyond reach at {m:g}x: even f/{low:g} on the lens is effective "
            where += f"f/{limit / limit_lens * low:.3g}"
        return f"diffraction costs resolution: {disk}; it starts past effective f/{limit:.3g} ({where})"
    needed, high = m / (2.0 * limit), RANGES["na"][1]
    if needed <= high:
        fix = f"it would take NA {needed:.3g} at {m:g}x to bring it down to {AIRY_PIXELS:g} pixels"
    else:  # no objective is that wide: say what the widest one leaves
        best = 2.44 * lam_um * m / (2.0 * high) / pitch_um
        fix = f"even NA {high:g} leaves {best:.1f} pixels at {m:g}x"
    return f"the objective, not the sensor, limits resolution: {disk} ({fix})"


def rail_csv(plan: Plan) -> str:
    """Rail positions in µm, one a line, from 0: what a rail controller reads. Worked out
    only here: a plan holds the step and the count."""
    if plan.frames is None:
        raise OptionError("--depth-mm", "is needed for rail positions (--csv)")
    return "".join(f"{i * plan.step_um:.2f}\n" for i in range(plan.frames))
