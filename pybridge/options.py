"""The one definition of every stacking option: name, type, default, allowed values, help.

The command line (`add_arguments` / `from_args`), the job manifest (`from_json`), the Python
API (`StackOptions(**kw)`) and the manifest's JSON Schema (`manifest_schema`) are all made from
the dataclasses below, the way rawpy's `Params` serves `postprocess(params=None, **kw)`.

`StackOptions` is what the engine needs; `OutputOptions` is what the application layer adds
around it (side maps, output format, metadata).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError

METHODS = ("pyramid", "depthmap")
ALIGN_MODELS = ("similarity", "affine", "homography", "translation")
INTERPOLATIONS = ("cubic", "lanczos", "linear")
REFERENCES = ("middle", "first", "last")
FORMATS = {"tiff": (".tif", ".tiff"), "jpeg": (".jpg", ".jpeg"), "png": (".png",)}
# Largest frame read unless the caller says otherwise (max_pixels; CLI --max-pixels). Stacking
# keeps several float32 copies of a frame (~60-80 bytes a pixel in all), so 250 MP already
# needs most of a 24 GB machine. It covers every single-shot sensor (Phase One IQ4: 151 MP)
# and the 240 MP pixel-shift composites of Sony; larger ones (Fujifilm GFX 400 MP) need the
# option, and decompression bombs (30000 x 30000 PNG = 900 MP) are refused.
DEFAULT_MAX_PIXELS = 250_000_000


def option(
    default,
    help: str,
    *,
    choices: tuple = (),
    flag: str | None = None,
    minimum: int | None = None,
    cli: bool = True,
    metavar: str | None = None,
    describe: str | None = None,
):
    """A dataclass field that knows how it is spelled everywhere.

    `choices` constrain values of their own type (reference: a name from the list, or any
    frame number); `flag`: the command-line spelling when it is not `--name-with-dashes`
    ("--no-x" turns a default-true switch off); `cli`: False for options the command line
    spells differently or not at all; `metavar`: the placeholder in --help (DIR, FILE);
    `describe`: the schema's description when `help` says what a --no-x flag does (the
    manifest says true or false, not the flag)."""
    return field(
        default=default,
        metadata={
            "help": help,
            "describe": describe,
            "choices": tuple(choices),
            "flag": flag,
            "minimum": minimum,
            "cli": cli,
            "metavar": metavar,
        },
    )


_PY_TYPES = {
    "bool": bool,
    "int": int,
    "str": str,
    "float": (int, float),
    "list": list,
    "None": type(None),
}
_JSON_TYPES = {
    "bool": "boolean",
    "int": "integer",
    "str": "string",
    "float": "number",
    "list": "array",
    "None": "null",
}


def _types(f: dataclasses.Field) -> list[str]:
    return [t.strip() for t in str(f.type).split("|")]  # "str | int" -> ["str", "int"]


def _is(value, type_name: str) -> bool:
    if type_name != "bool" and isinstance(value, bool):  # JSON true is no number
        return False
    return isinstance(value, _PY_TYPES[type_name])


def _check(f: dataclasses.Field, value) -> str | None:
    """None when `value` is allowed for option `f`, else what was expected."""
    m, types = f.metadata, _types(f)
    choices = m["choices"]
    ok = any(_is(value, t) for t in types)
    if ok and choices and isinstance(value, type(choices[0])) and not isinstance(value, bool):
        ok = value in choices
    if ok and m["minimum"] is not None and value is not None:
        ok = value >= m["minimum"]
    if ok:
        return None
    words = {
        "bool": "true or false",
        "None": "null",
        "str": "a string",
        "list": "a list",
        "int": "a whole number" + (f" >= {m['minimum']}" if m["minimum"] is not None else ""),
        "float": "a number" + (f" >= {m['minimum']}" if m["minimum"] is not None else ""),
    }
    if choices:
        named = "one of " + ", ".join(map(repr, choices))
        rest = [words[t] for t in types if t != type(choices[0]).__name__]
        return " or ".join([named, *rest])
    return " or ".join(words[t] for t in types)


class Options:
    """Validation, command line, manifest and schema for the option dataclasses below."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            expected = _check(f, getattr(self, f.name))
            if expected:
                raise OptionError(f.name, f"must be {expected}, not {getattr(self, f.name)!r}")

    @classmethod
    def merged(cls, options=None, values: dict | None = None):
        """`options` (default: all defaults) with `values` (keyword arguments) on top."""
        base = options if options is not None else cls()
        return dataclasses.replace(base, **values) if values else base

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_json(cls, data: dict | None, where: str = "options"):
        """Strict: every key known, every value of its JSON type ("false" is not false)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise OptionError(where, "must be a JSON object")
        unknown = sorted(set(data) - cls.names())
        if unknown:
            raise OptionError(
                where,
                f"has unknown entr{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}",
            )
        return cls(**data)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            m = f.metadata
            if not m["cli"]:
                continue
            flag = m["flag"] or "--" + f.name.replace("_", "-")
            if f.type == "bool":
                parser.add_argument(
                    flag,
                    dest=f.name,
                    help=m["help"],
                    action="store_false" if f.default else "store_true",
                )
                continue
            kw = {"choices": m["choices"]} if m["choices"] and len(_types(f)) == 1 else {}
            parser.add_argument(
                flag,
                dest=f.name,
                default=f.default,
                help=m["help"],
                type=_PY_TYPES[_types(f)[0]] if kw else str,
                metavar=None if kw else m["metavar"] or f.name.split("_")[0].upper()[:4],
                **kw,
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        values = {}
        for f in dataclasses.fields(cls):
            if f.metadata["cli"] and hasattr(args, f.name):
                value = getattr(args, f.name)
                if "int" in _types(f) and isinstance(value, str) and value.lstrip("-").isdigit():
                    value = int(value)  # --reference 3: a frame number
                values[f.name] = value
        return cls(**values)

    @classmethod
    def schema(cls) -> dict:
        """JSON Schema of these options (as a manifest's `options` entries)."""
        props = {}
        for f in dataclasses.fields(cls):
            m, types = f.metadata, _types(f)
            prop: dict[str, Any] = {
                "description": (m["describe"] or m["help"]).replace("%%", "%"),
                "default": f.default,
            }
            choices = m["choices"]
            if choices:
                others = [_JSON_TYPES[t] for t in types if t != type(choices[0]).__name__]
                alts = [{"enum": list(choices)}] + [{"type": t} for t in others]
                prop.update(alts[0] if len(alts) == 1 else {"anyOf": alts})
            else:
                prop["type"] = (
                    [_JSON_TYPES[t] for t in types] if len(types) > 1 else _JSON_TYPES[types[0]]
                )
            if m["minimum"] is not None:
                prop["minimum"] = m["minimum"]
            props[f.name] = prop
        return {"type": "object", "properties": props, "additionalProperties": False}


def nonnegative(text: str, what: str) -> float:
    """A command-line number >= 0 (finite), or argparse's error naming `what`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected {what} >= 0, not {text!r}")
    return value


def _megapixels(text: str) -> int:
    """--max-pixels MP in pixels. Checked here, not by argparse, whose refusal prints the
    whole usage: one line naming the option instead."""
    try:
        return int(nonnegative(text, "megapixels") * 10**6)
    except argparse.ArgumentTypeError:
        raise OptionError(
            "--max-pixels", f"must be a number of megapixels >= 0 (0: no limit), not {text!r}"
        ) from None


@dataclass
class StackOptions(Options):
    """How a bracket is aligned and fused (the engine's options)."""

    method: str = option(
        "pyramid",
        "fusion method. pyramid (default): Laplacian-pyramid maximum-contrast fusion, "
        "best for fine detail (hair, bristles, crossing structures). depthmap: pick the sharpest "
        "frame per region with feathered seams, best for smooth surfaces and colour fidelity, "
        "and faster",
        choices=METHODS,
    )
    align: bool = option(
        True,
        "skip alignment, for stacks that are already registered (microscope focus knob, "
        "previously aligned exports)",
        flag="--no-align",
        describe="true (default): align the frames onto the reference frame; false: they are "
        "registered already (microscope focus knob, previously aligned exports)",
    )
    align_model: str = option(
        "similarity",
        "alignment model. similarity (default): shift, rotation and scale, which "
        "covers focus breathing; affine/homography: also shear/perspective, for tilted rails; "
        "translation: shift only",
        choices=ALIGN_MODELS,
    )
    interpolation: str = option(
        "cubic",
        "how frames are resampled onto the reference: cubic (default), lanczos (keeps "
        "more of the finest texture, about 30 %% slower), linear (fastest, softest)",
        choices=INTERPOLATIONS,
    )
    reference: str | int = option(
        "middle",
        "frame the others are aligned to: middle (default), first, last, or a frame "
        "number counted from 0 (negative counts from the end)",
        choices=REFERENCES,
    )
    match_gain: bool = option(
        True,
        "don't match brightness and colour between frames (on by default: it removes "
        "flicker from flash or LED light)",
        flag="--no-gain",
        describe="true (default): match brightness and colour between frames, which removes "
        "flicker from flash or LED light; false: take each frame's as it is",
    )
    halo_suppression: bool = option(
        True,
        "pyramid method only: let coarse pyramid levels choose by contrast too (classic "
        "PMax). Default is on, which avoids bright/dark halos around foreground edges",
        flag="--no-halo-suppression",
        describe="true (default): pyramid method only: coarse pyramid levels follow the "
        "full-resolution focus decision, which avoids bright/dark halos around foreground "
        "edges; false: they choose by contrast too (classic PMax)",
    )
    noise_averaging: bool = option(
        True,
        "always take the sharpest frame's detail, even where several frames are equally "
        "sharp within the noise (on by default, those are averaged: flat areas come out "
        "less noisy than any single frame)",
        flag="--no-noise-averaging",
        describe="true (default): where several frames are equally sharp within the noise, "
        "average them (flat areas come out less noisy than any single frame); false: always "
        "take the sharpest frame's detail",
    )
    crop: bool = option(
        False,
        "crop to the area every frame covers; default keeps the reference frame's size, "
        "filling the borders from the frames that reach them",
    )
    bit_depth: int = option(
        16, "bits per sample of TIFF/PNG output (default 16; JPEG is always 8)", choices=(8, 16)
    )
    overwrite: bool = option(False, "replace existing output files")
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "refuse frames larger than this many pixels, checked from the file "
        "header before decoding (0: no limit; on the command line in megapixels)",
        minimum=0,
        cli=False,
    )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--max-pixels",
            dest="max_pixels",
            default=DEFAULT_MAX_PIXELS,
            metavar="MP",
            help="refuse frames larger than MP megapixels, checked from the file "
            f"header before decoding (default {DEFAULT_MAX_PIXELS // 10**6}; 0: no limit)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StackOptions:
        opts = super().from_args(args)
        pixels = args.max_pixels
        return dataclasses.replace(
            opts, max_pixels=_megapixels(pixels) if isinstance(pixels, str) else pixels
        )

    @property
    def model(self) -> str:
        """The alignment model the aligner runs ('none' when alignment is off)."""
        return self.align_model if self.align else "none"


@dataclass
class OutputOptions(Options):
    """What the application writes around the engine's result (manifest `options` only; the
    command line spells these as paths: --depth-map [PATH], --no-metadata, --sources)."""

    depth_map: bool = option(False, "also write OUT_depth.tif: which frame was sharpest", cli=False)
    confidence_map: bool = option(
        False, "also write OUT_confidence.tif: how clearly it won", cli=False
    )
    format: str | None = option(
        None, "output format; the output's extension follows it", choices=tuple(FORMATS), cli=False
    )
    metadata: bool | None = option(
        None, "copy the sources' EXIF/XMP onto the result (null: when they carry any)", cli=False
    )


@dataclass
class StackOutputOptions(OutputOptions):
    """OutputOptions plus the retouching material of one stack (docs/retouch.md): paths, so
    they belong to a single stack (the command line's `stack`, run-job, the Python API), not to
    a batch of brackets, which keeps to OutputOptions."""

    aligned_frames: str | None = option(
        None,
        "also write every frame registered onto the result (same size, cropped alike, "
        "brightness matched as fused) as DIR/<frame>_aligned.tif, 16-bit with the frame's "
        "metadata, for retouching; DIR is created if missing",
        metavar="DIR",
    )
    layers: str | None = option(
        None,
        "also write an OpenRaster file (.ora, opens in GIMP and Krita) with the result, the "
        "other fusion method's result, the depth map and the aligned frames as layers",
        metavar="ORA",
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("aligned_frames", "layers"):
            if getattr(self, name) == "":
                raise OptionError(name, "must be a path or null, not an empty string")

    @classmethod
    def schema(cls) -> dict:
        schema = super().schema()
        for name in ("aligned_frames", "layers"):
            schema["properties"][name]["minLength"] = 1
        return schema


def split_manifest_options(data: dict | None) -> tuple[StackOptions, StackOutputOptions]:
    """A manifest's `options` object -> (engine options, output options), strictly typed."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OptionError("options", "must be a JSON object")
    unknown = sorted(set(data) - StackOptions.names() - StackOutputOptions.names())
    if unknown:
        raise OptionError(
            "options",
            f"has unknown entr{'y' if len(unknown) == 1 else 'ies'}: {', '.join(unknown)}",
        )
    return (
        StackOptions.from_json({k: v for k, v in data.items() if k in StackOptions.names()}),
        StackOutputOptions.from_json(
            {k: v for k, v in data.items() if k in StackOutputOptions.names()}
        ),
    )


def options_schema() -> dict:
    """The manifest's `options` object: engine and output options together."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **StackOptions.schema()["properties"],
            **StackOutputOptions.schema()["properties"],
        },
    }
