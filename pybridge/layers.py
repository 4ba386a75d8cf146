"""OpenRaster (.ora) output: the result and its retouching material as layers for GIMP and Krita.

An OpenRaster file is a zip archive (https://www.openraster.org/baseline/file-layout-spec.html):

* `mimetype` first, stored uncompressed, holding `image/openraster` (how readers sniff it);
* `stack.xml`: the layer stack, topmost layer first;
* `data/*.png`: one PNG per layer;
* `mergedimage.png`: the full-size composite of the visible layers;
* `Thumbnails/thumbnail.png`: the composite at most 256 px on its long side, 8-bit.

Layers are 16-bit RGB PNGs (the thumbnail is 8-bit): GIMP and Krita keep 16 bits, and
readers built on Pillow, which reads 16-bit greyscale PNGs as clipped, still read RGB ones
(at 8 bits). Grey brackets are written as RGB with equal channels for the same reason. The
ICC profile of the result travels in each colour layer's iCCP chunk. PNG data is stored in the
archive as is (it is compressed already); stack.xml is deflated.

`OraWriter` adds layers one at a time, each written into the archive as soon as it is encoded,
so memory holds one layer's PNG at a time however many frames a bracket has.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import OutputError, one_line
from .headers import png_with_chunks

ORA_EXTENSIONS = frozenset({".ora"})
MIMETYPE = b"image/openraster"
THUMBNAIL_SIDE = 256


@dataclass
class _Entry:
    name: str
    src: str
    visible: bool


def to_rgb16(pixels: np.ndarray) -> np.ndarray:
    """float 0..1 (or uint16) H x W [x 1|3] -> uint16 H x W x 3, round to nearest."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype != np.uint16:
        q = np.clip(pixels, 0.0, 1.0).astype(np.float32)
        np.nan_to_num(q, copy=False, nan=0.0)
        q *= 65535.0
        q += 0.5
        pixels = q.astype(np.uint16)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def encode_png16(rgb16: np.ndarray, icc: bytes | None = None, level: int = 1) -> bytes:
    """uint16 RGB -> PNG bytes (OpenCV's encoder, which writes 16-bit RGB), with the profile."""
    ok, buf = cv2.imencode(
        ".png", np.ascontiguousarray(rgb16[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, level]
    )
    if not ok:
        raise OutputError("<layer>", "the PNG encoder failed")
    return png_with_chunks(buf.tobytes(), icc, None)


def _layer_name(name: str) -> str:
    """A name XML can hold: undecodable bytes of a file name escaped, control characters out."""
    name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c >= " " else "?" for c in name)


class OraWriter:
    """Write an OpenRaster file layer by layer, topmost first.

    with OraWriter(path, width, height) as ora:
        ora.add_layer("stacked", result, icc=icc)
        ora.add_layer("frame 1", frame, visible=False)
        ora.finish(merged=result)
    """

    def __init__(self, path: str | Path, width: int, height: int):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.entries: list[_Entry] = []
        self.finished = False
        try:
            self.zip = zipfile.ZipFile(self.path, "w", allowZip64=True)
            # first and stored: readers recognise the format from the archive's first bytes
            self.zip.writestr(
                zipfile.ZipInfo("mimetype", date_time=(1980, 1, 1, 0, 0, 0)),
                MIMETYPE,
                compress_type=zipfile.ZIP_STORED,
            )
        except OSError as exc:
            raise OutputError(
                self.path, f"cannot write ({one_line(exc.strerror or exc)})"
            ) from None

    def __enter__(self) -> OraWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.zip.close()
        except OSError as exc:
            raise OutputError(
                self.path, f"cannot write ({one_line(exc.strerror or exc)})"
            ) from None

    def _write(self, name: str, data: bytes, compress: int = zipfile.ZIP_STORED) -> None:
        try:
            self.zip.writestr(name, data, compress_type=compress)
        except OSError as exc:
            raise OutputError(
                self.path, f"cannot write ({one_line(exc.strerror or exc)})"
            ) from None

    def add_layer(
        self, name: str, pixels: np.ndarray, *, visible: bool = True, icc: bytes | None = None
    ) -> None:
        """Append a layer below those added so far. `pixels`: float 0..1 or uint16, grey or
        RGB, the canvas's size."""
        if pixels.shape[:2] != (self.height, self.width):
            raise OutputError(
                self.path,
                f"layer {name!r} is {pixels.shape[1]}x{pixels.shape[0]}, "
                f"not the canvas's {self.width}x{self.height}",
            )
        src = f"data/layer{len(self.entries):03d}.png"
        self._write(src, encode_png16(to_rgb16(pixels), icc))
        self.entries.append(_Entry(_layer_name(name), src, visible))

    def finish(self, merged: np.ndarray, icc: bytes | None = None) -> None:
        """The composite (`merged`, what the visible layers show), its thumbnail and the
        stack; the archive is complete after this."""
        rgb16 = to_rgb16(merged)
        self._write("mergedimage.png", encode_png16(rgb16, icc))
        scale = THUMBNAIL_SIDE / max(self.width, self.height)
        if scale < 1:
            size = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
            small = cv2.resize(rgb16, size, interpolation=cv2.INTER_AREA)
        else:
            small = rgb16
        thumb = ((small.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(thumb[:, :, ::-1]))
        if not ok:
            raise OutputError(self.path, "the PNG encoder failed (thumbnail)")
        self._write("Thumbnails/thumbnail.png", buf.tobytes())
        self._write("stack.xml", self.stack_xml(), zipfile.ZIP_DEFLATED)
        self.finished = True

    def stack_xml(self) -> bytes:
        image = ET.Element(
            "image",
            version="0.0.5",
            w=str(self.width),
            h=str(self.height),
            xres="72",
            yres="72",
        )
        root = ET.SubElement(
            image,
            "stack",
            {
                "composite-op": "svg:src-over",
                "opacity": "1",
                "name": "root",
                "visibility": "visible",
                "isolation": "isolate",
            },
        )
        for e in self.entries:
            ET.SubElement(
                root,
                "layer",
                {
                    "name": e.name,
                    "src": e.src,
                    "x": "0",
                    "y": "0",
                    "opacity": "1",
                    "visibility": "visible" if e.visible else "hidden",
                    "composite-op": "svg:src-over",
                },
            )
        return ET.tostring(image, encoding="utf-8", xml_declaration=True)
