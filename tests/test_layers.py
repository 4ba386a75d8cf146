"""`--layers OUT.ora`: the result and its retouching material as an OpenRaster file.

Read back with a real ORA reader (pyora, as GIMP/Krita-style consumers parse it): layer names,
order, visibility and sizes; pixels against the result and against a separate run of the other
method; the zip layout readers sniff (mimetype first, stored); atomicity with the other
outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from pyora import Project
from pyora.Render import Renderer
from synthetic import make_bracket, psnr, save_bracket

from pybridge import stack
from pybridge.errors import Cancelled
from pybridge.write import depth_map_index

FOCUSBRIDGE = [sys.executable, "-m", "pybridge"]


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FOCUSBRIDGE, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def q16(img: np.ndarray) -> np.ndarray:
    """How the writers quantise float 0..1 to 16 bits."""
    return (np.clip(img, 0, 1) * 65535 + 0.5).astype(np.uint16)


def png16(ora: Path, src: str) -> np.ndarray:
    """A layer's PNG straight from the archive, at full depth, RGB order."""
    with zipfile.ZipFile(ora) as z:
        data = np.frombuffer(z.read(src), np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return img[:, :, ::-1] if img.ndim == 3 else img


@pytest.fixture(scope="module")
def bracket_files(tmp_path_factory):
    b = make_bracket(5, (240, 320), breathing=0.01, shift=3.0, flicker=0.03, noise=0.003, seed=11)
    return save_bracket(b, tmp_path_factory.mktemp("in"), ".tif", bit_depth=16)


@pytest.fixture(scope="module")
def layered(bracket_files, tmp_path_factory):
    """One stack with everything: result, aligned frames and layers, cropped."""
    folder = tmp_path_factory.mktemp("out")
    res = stack(
        bracket_files,
        folder / "stacked.tif",
        aligned_frames=folder / "aligned",
        layers=folder / "stacked.ora",
        crop=True,
    )
    return res, folder


def test_pyora_reads_the_layers_in_order_with_their_visibility_and_size(layered):
    res, folder = layered
    project = Project.load(str(folder / "stacked.ora"))
    h, w = res.image.shape[:2]
    assert (project.dimensions if hasattr(project, "dimensions") else (w, h)) == (w, h)
    layers = project.children  # topmost first, as stack.xml lists them
    names = [layer.name for layer in layers]
    assert names == [
        "stacked (pyramid)",
        "stacked (depthmap)",
        "depth map",
        *(f"frame_{i:03d} (aligned)" for i in range(5)),
    ]
    assert [layer.visible for layer in layers] == [True] + [False] * 7
    for layer in layers:
        assert layer.dimensions == (w, h), layer.name
        assert layer.offsets == (0, 0)
        assert np.asarray(layer.get_image_data()).shape == (h, w, 4)


def test_layer_pixels_are_the_result_the_other_method_the_depth_map_and_the_frames(
    layered, bracket_files
):
    res, folder = layered
    ora = folder / "stacked.ora"
    project = Project.load(str(ora))
    layers = {layer.name: layer for layer in project.children}
    result = tifffile.imread(folder / "stacked.tif")
    # pyora sees the result (8 bits through Pillow)...
    top = np.asarray(layers["stacked (pyramid)"].get_image_data())[:, :, :3]
    assert psnr(top / 255.0, result / 65535.0) > 45
    assert (np.asarray(layers["stacked (pyramid)"].get_image_data())[:, :, 3] == 255).all()
    # ...and the archive holds it at 16 bits, exactly the TIFF's values
    assert np.array_equal(png16(ora, layers["stacked (pyramid)"]["src"]), result)
    # the other method: what a run of that method alone gives
    alone = stack(bracket_files, method="depthmap", crop=True)
    other = png16(ora, layers["stacked (depthmap)"]["src"])
    assert other.dtype == np.uint16
    assert psnr(other / 65535.0, alone.image) > 60
    assert psnr(other / 65535.0, res.image) < 60  # not the result again
    # the depth map: the frame index per pixel, exact, in the spread 16-bit encoding
    depth = png16(ora, layers["depth map"]["src"])
    assert np.array_equal(depth[..., 0], depth[..., 2])
    assert np.array_equal(depth_map_index(depth[..., 0], 5), res.depth)
    # the aligned frames: the TIFFs written beside, bit for bit
    for i in range(5):
        frame = png16(ora, layers[f"frame_{i:03d} (aligned)"]["src"])
        assert np.array_equal(frame, tifffile.imread(res.aligned_frame_paths[i]))


def test_composite_and_thumbnail_show_the_visible_result(layered):
    res, folder = layered
    ora = folder / "stacked.ora"
    project = Project.load(str(ora))
    h, w = res.image.shape[:2]
    rendered = np.asarray(Renderer(project).render())[:, :, :3]  # pyora's own compositing
    assert psnr(rendered / 255.0, res.image) > 40
    merged = png16(ora, "mergedimage.png")
    assert merged.dtype == np.uint16 and np.array_equal(merged, q16(res.image))
    with zipfile.ZipFile(ora) as z:
        thumb = cv2.imdecode(np.frombuffer(z.read("Thumbnails/thumbnail.png"), np.uint8), -1)
    assert thumb.dtype == np.uint8 and max(thumb.shape[:2]) == 256
    assert abs(thumb.shape[1] / thumb.shape[0] - w / h) < 0.02


def test_zip_layout_mimetype_first_and_stored(layered):
    _, folder = layered
    ora = folder / "stacked.ora"
    with zipfile.ZipFile(ora) as z:
        infos = z.infolist()
        assert infos[0].filename == "mimetype"
        assert infos[0].compress_type == zipfile.ZIP_STORED
        assert z.read("mimetype") == b"image/openraster"
        names = {i.filename for i in infos}
        assert {"stack.xml", "mergedimage.png", "Thumbnails/thumbnail.png"} <= names
        assert len([n for n in names if n.startswith("data/") and n.endswith(".png")]) == 8
        assert z.testzip() is None
    head = ora.read_bytes()[:60]
    assert head[30:38] == b"mimetype" and head[38:54] == b"image/openraster"  # sniffable


def test_grey_brackets_give_rgb_layers_pyora_reads(tmp_path):
    b = make_bracket(3, (120, 160), seed=2)
    grey = [f.mean(axis=2) for f in b.frames]
    res = stack(grey, layers=tmp_path / "g.ora")
    layers = Project.load(str(tmp_path / "g.ora")).children
    assert [layer.name for layer in layers][-3:] == [f"frame_{i:03d} (aligned)" for i in range(3)]
    top = np.asarray(layers[0].get_image_data())
    assert np.array_equal(top[..., 0], top[..., 2])
    assert psnr(top[..., 0] / 255.0, res.image.reshape(120, 160)) > 45
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.ora"]  # no frame files left


def test_layers_are_part_of_the_atomic_set(tmp_path, bracket_files):
    seen = []
    with pytest.raises(Cancelled):
        stack(
            bracket_files,
            tmp_path / "out.tif",
            layers=tmp_path / "out.ora",
            progress=lambda phase, **kw: seen.append(phase),
            cancel=lambda: seen.count("fuse") >= 4,
        )
    assert list(tmp_path.iterdir()) == []
    # a bad name fails before any pixel is read
    done = run("stack", *bracket_files, "-o", tmp_path / "o.tif", "--layers", tmp_path / "o.psd")
    assert done.returncode == 1 and "unsupported layers format '.psd'" in done.stderr
    assert done.stderr.count("\n") == 1
    link = tmp_path.parent / f"{tmp_path.name}-link.ora"  # an input under another name
    link.symlink_to(bracket_files[0])
    done = run("stack", *bracket_files, "-o", tmp_path / "o.tif", "--layers", link, "--overwrite")
    assert done.returncode == 1 and "the layers would replace the input frame" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_command_line_layers_only(tmp_path, bracket_files):
    done = run(
        "stack",
        *bracket_files[:3],
        "-o",
        tmp_path / "out.tif",
        "--layers",
        tmp_path / "out.ora",
        "--method",
        "depthmap",
        "--progress",
        "json",
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ora", "out.tif"]
    names = [layer.name for layer in Project.load(str(tmp_path / "out.ora")).children]
    assert names[:2] == ["stacked (depthmap)", "stacked (pyramid)"]
    fractions = [json.loads(line)["fraction"] for line in done.stdout.splitlines()]
    assert fractions == sorted(fractions)


def test_frames_of_one_name_give_layers_of_distinct_names(tmp_path, bracket_files):
    """a/f.tif and b/f.tif were two layers both named "f (aligned)"."""
    frames = [tmp_path / "a" / "f.tif", tmp_path / "a" / "g.tif", tmp_path / "b" / "f.tif"]
    for frame, source in zip(frames, bracket_files, strict=False):
        frame.parent.mkdir(exist_ok=True)
        frame.write_bytes(source.read_bytes())
    stack(frames, layers=tmp_path / "out.ora")
    names = [layer.name for layer in Project.load(str(tmp_path / "out.ora")).children]
    assert names[3:] == ["f (aligned, frame 0)", "g (aligned)", "f (aligned, frame 2)"]
