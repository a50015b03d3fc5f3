"""worker.images.preprocess against Keras' own recipe, pixel for pixel; its documented differences; every failure
named."""

from __future__ import annotations

import functools
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageOps, PngImagePlugin

from imgq.storage import local
from tests import imagegen
from worker.images.preprocess import ImageError, load_pixels, to_model_input

SHAPE = (224, 224, 3)


def keras_input(path: Path) -> np.ndarray:
    """ResNet50's input the way Keras' documentation makes it."""
    image = keras.utils.load_img(path, target_size=(224, 224))
    return keras.applications.resnet50.preprocess_input(keras.utils.img_to_array(image))


def imgq_input(path: Path, **kwargs) -> np.ndarray:
    return to_model_input(load_pixels(str(path), **kwargs))


def error_code(path: Path, **kwargs) -> str:
    with pytest.raises(ImageError) as caught:
        load_pixels(str(path), **kwargs)
    return caught.value.code


def flat(bgr: tuple[float, float, float]) -> np.ndarray:
    """A whole model input of one BGR value, in float32 as Keras computes it."""
    return np.broadcast_to(np.array(bgr, dtype=np.float32), SHAPE)


# --- Same as Keras, exactly ----------------------------------------------------------------------------------------


def _format_names() -> list[str]:
    # Parametrise by name at collection time; the files themselves are written per size by a fixture.
    with tempfile.TemporaryDirectory() as folder:
        return [path.name for path in imagegen.write_formats(Path(folder))]


FORMAT_NAMES = _format_names()
# (width, height): smaller than 224, exactly 224, larger, non-square both ways, a single pixel, a long strip.
SIZES = [(100, 80), (224, 224), (640, 480), (300, 97), (97, 300), (1, 1), (10000, 10)]


@pytest.fixture(scope="module", params=SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def formats(request, tmp_path_factory) -> dict[str, Path]:
    """Every file of imagegen.write_formats, at one size."""
    width, height = request.param
    folder = tmp_path_factory.mktemp(f"formats-{width}x{height}")
    # write_formats has no size parameter: give its save() one, so every size gets the very same formats and modes.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imagegen, "save", functools.partial(imagegen.save, size=request.param))
        return {path.name: path for path in imagegen.write_formats(folder)}


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_matches_keras_recipe_exactly(formats, name):
    ours, theirs = imgq_input(formats[name]), keras_input(formats[name])
    assert ours.shape == theirs.shape == SHAPE
    assert ours.dtype == theirs.dtype == np.float32
    assert np.array_equal(ours, theirs)


def test_png_named_jpg_is_read_by_content(tmp_path):
    path = imagegen.save(tmp_path / "really-a-png.jpg", fmt="PNG")
    assert np.array_equal(imgq_input(path), keras_input(path))


# --- Pinned numbers: a change of library default must not silently change our labels -----------------------------


# Caffe mode: RGB -> BGR, minus [103.939, 116.779, 123.68], no scaling. The values are float32 arithmetic, which is
# not always the float32 nearest the decimal: 255 - 116.779 is 138.22101, not float32(138.221).
@pytest.mark.parametrize(
    "rgb, bgr",
    [
        ((0, 0, 0), (-103.939, -116.779, -123.68)),
        ((255, 0, 0), (-103.939, -116.779, 131.32)),
        ((0, 255, 0), (-103.939, 138.22101, -123.68)),
        ((0, 0, 255), (151.061, -116.779, -123.68)),
    ],
    ids=["black", "red", "green", "blue"],
)
def test_pinned_rgb_values(tmp_path, rgb, bgr):
    path = tmp_path / "flat.png"
    Image.new("RGB", (50, 30), rgb).save(path)
    assert np.array_equal(imgq_input(path), flat(bgr))
    assert np.array_equal(keras_input(path), flat(bgr))  # the pin is Keras' own output too


def test_pinned_rgba_drops_alpha(tmp_path):
    # Fully transparent, so a conversion that composited over black or white would show.
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (50, 30), (10, 20, 30, 0)).save(path)
    assert np.array_equal(imgq_input(path), flat((-73.939, -96.779, -113.68)))
    assert np.array_equal(keras_input(path), flat((-73.939, -96.779, -113.68)))


def test_pinned_gray_goes_to_every_channel(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (50, 30), 77).save(path)
    assert np.array_equal(load_pixels(str(path)), np.full(SHAPE, 77, np.uint8))
    assert np.array_equal(imgq_input(path), flat((-26.939003, -39.779, -46.68)))
    assert np.array_equal(keras_input(path), flat((-26.939003, -39.779, -46.68)))


def test_to_model_input_writes_into_out():
    batch = np.zeros((3, *SHAPE), np.float32)
    red = np.zeros(SHAPE, np.uint8)
    red[..., 0] = 255
    result = to_model_input(red, out=batch[1])
    assert np.shares_memory(result, batch)
    assert np.array_equal(batch[1], flat((-103.939, -116.779, 131.32)))
    assert not batch[0].any() and not batch[2].any()  # its neighbours in the batch are untouched


def test_to_model_input_leaves_float_pixels_alone():
    # Keras' preprocess_input subtracts in place from float input; ours must not touch the caller's array.
    pixels = np.full(SHAPE, 200.0, np.float32)
    assert np.array_equal(to_model_input(pixels), flat((96.061, 83.221, 76.32)))
    assert (pixels == 200.0).all()


# --- EXIF orientation: imgq's documented difference from Keras -----------------------------------------------------

# How a camera stores the upright picture for each EXIF orientation, from the tag's definition (where the stored
# row 0 and column 0 belong in the upright picture), written independently of worker.images.preprocess' table.
STORED = {
    2: np.fliplr,  # row 0 top, column 0 right
    3: lambda a: np.rot90(a, 2),  # row 0 bottom, column 0 right
    4: np.flipud,  # row 0 bottom, column 0 left
    5: lambda a: a.transpose(1, 0, 2),  # row 0 left, column 0 top
    6: lambda a: np.rot90(a, 1),  # row 0 right, column 0 top
    7: lambda a: np.rot90(np.flipud(a), 1),  # row 0 right, column 0 bottom
    8: lambda a: np.rot90(a, -1),  # row 0 left, column 0 bottom
}


def blocks(width: int, height: int, block: int = 2, seed: int = 0) -> np.ndarray:
    """Random colours in constant block x block squares: nearest-neighbour sampling at 1/2 or 1/1 scale picks
    the same colour whichever pixel of a block it lands on, so rotating before or after resizing is exact."""
    cells = np.random.default_rng(seed).integers(0, 256, size=(height // block, width // block, 3), dtype=np.uint8)
    return cells.repeat(block, axis=0).repeat(block, axis=1)


def save_oriented(path: Path, upright: np.ndarray, orientation: int, **params) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(STORED[orientation](upright))).save(path, exif=exif, **params)
    return path


@pytest.mark.parametrize("orientation", sorted(STORED))
@pytest.mark.parametrize("size", [(448, 224), (224, 448), (448, 448)], ids=["wide", "tall", "square"])
def test_exif_orientation_png_exact(tmp_path, orientation, size):
    upright = blocks(*size)
    upright_path = tmp_path / "upright.png"
    Image.fromarray(upright).save(upright_path)
    stored_path = save_oriented(tmp_path / "stored.png", upright, orientation)
    with Image.open(stored_path) as image:  # the test's own table agrees with Pillow's reading of the tag
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(image)), upright)
    assert np.array_equal(load_pixels(str(stored_path)), load_pixels(str(upright_path)))
    # Keras ignores the tag: this is why imgq documents the difference.
    assert not np.array_equal(keras_input(stored_path), keras_input(upright_path))


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_jpeg(tmp_path, orientation):
    # JPEG is lossy and its blocks fall differently once rotated: large flat blocks and a tolerance, far below
    # the difference Keras shows for the same files.
    upright = blocks(448, 224, block=32)
    upright_path = tmp_path / "upright.jpg"
    Image.fromarray(upright).save(upright_path, quality=95)
    stored_path = save_oriented(tmp_path / "stored.jpg", upright, orientation, quality=95)
    ours = np.abs(imgq_input(stored_path) - imgq_input(upright_path))
    theirs = np.abs(keras_input(stored_path) - keras_input(upright_path))
    assert ours.mean() < 3 and theirs.mean() > 30


def test_no_orientation_tag_and_orientation_1_are_upright(tmp_path):
    upright = blocks(448, 224)
    plain, tagged = tmp_path / "plain.png", tmp_path / "tagged.png"
    Image.fromarray(upright).save(plain)
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(upright).save(tagged, exif=exif)
    assert np.array_equal(imgq_input(plain), keras_input(plain))
    assert np.array_equal(imgq_input(tagged), keras_input(tagged))


# --- 16-bit greyscale: scaled, not clamped -------------------------------------------------------------------------

SIXTEEN_BIT = {"I;16": "<u2", "I;16B": ">u2"}  # Pillow mode -> numpy dtype of its bytes


@pytest.mark.parametrize("value, expected", [(0, 0), (255, 0), (256, 1), (32768, 128), (65280, 255), (65535, 255)])
@pytest.mark.parametrize("suffix, mode", [(".png", "I;16"), (".tif", "I;16"), (".tif", "I;16B")])
def test_sixteen_bit_gray_is_shifted(tmp_path, value, expected, suffix, mode):
    path = tmp_path / f"gray16{suffix}"
    Image.frombytes(mode, (40, 30), np.full((30, 40), value, SIXTEEN_BIT[mode]).tobytes()).save(path)
    with Image.open(path) as image:
        assert image.mode == mode  # the case under test, not a file Pillow reads as 8 bits
    assert np.array_equal(load_pixels(str(path)), np.full(SHAPE, expected, np.uint8))


def test_keras_clamps_sixteen_bit(tmp_path):
    # The documented difference: Pillow's RGB conversion clamps, so Keras sees mid-grey 32768 as white.
    path = tmp_path / "gray16.png"
    Image.fromarray(np.full((30, 40), 32768, np.uint16)).save(path)
    assert np.array_equal(
        keras.utils.img_to_array(keras.utils.load_img(path, target_size=(224, 224))), np.full(SHAPE, 255, np.float32)
    )


# --- Every failure named -------------------------------------------------------------------------------------------


def test_broken_files(tmp_path):
    cases = imagegen.write_broken(tmp_path / "broken")
    assert {path.name: error_code(path) for path in cases} == {path.name: code for path, code in cases.items()}


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_truncated_is_corrupt(tmp_path, name):
    whole = {path.name: path for path in imagegen.write_formats(tmp_path / "whole")}[name]
    path = tmp_path / name
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert error_code(path) == "corrupt"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_exif_still_decodes(tmp_path):
    # The pixels are fine and Keras reads them: a broken EXIF block (and so no orientation) is not "corrupt".
    path = imagegen.save(tmp_path / "photo.jpg")
    data = path.read_bytes()
    segment = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 40  # an IFD that claims 65535 entries
    path.write_bytes(data[:2] + b"\xff\xe1" + (len(segment) + 2).to_bytes(2, "big") + segment + data[2:])
    assert np.array_equal(imgq_input(path), keras_input(path))


def test_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    path = imagegen.bomb_png(tmp_path / "bomb.png")
    decoded = []
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda image: decoded.append(image))
    assert error_code(path) == "too_large"
    # No pixel was decoded, so nothing of 30000x30000 was allocated: what the test is about. How long the refusal
    # took (0.2 ms here) is a figure, not this fact, and a bound on it (0.5 s) one a stalled process could break.
    assert decoded == []


def test_max_pixels_boundary(tmp_path):
    path = imagegen.save(tmp_path / "300x200.png")
    assert load_pixels(str(path), max_pixels=300 * 200).shape == SHAPE
    assert error_code(path, max_pixels=300 * 200 - 1) == "too_large"


def test_directory_is_unreadable(tmp_path):
    assert error_code(tmp_path) == "unreadable"


def test_file_without_read_permission_is_unreadable(tmp_path):
    path = imagegen.save(tmp_path / "secret.png")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: file permissions do not stop this process from reading the file")
    assert error_code(path) == "unreadable"


def test_permission_error_is_unreadable(tmp_path, monkeypatch):
    # The same mapping, even where the test runs as root: the OS refusing the open is what matters.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(local, "open", refuse, raising=False)  # the byte source opens it
    assert error_code(imagegen.save(tmp_path / "secret.png")) == "unreadable"


def test_fifo_is_unreadable_at_once(tmp_path):
    # Opening a named pipe waits for a writer: a worker must not hang on a path that happens to be one.
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(error_code, fifo)
        try:
            assert future.result(timeout=5) == "unreadable"
        finally:
            if not future.done():  # unblock the reader, or leaving the pool would wait for it for ever
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("allowed", [False, True], ids=["no-roots", "inside-root"])
@pytest.mark.parametrize("links", [1, 2])
def test_symlink_loop_is_unreadable(tmp_path, allowed, links):
    names = [tmp_path / f"loop{i}.jpg" for i in range(links)]
    for i, name in enumerate(names):
        name.symlink_to(names[(i + 1) % links])
    roots = (str(tmp_path),) if allowed else ()
    assert error_code(names[0], allowed_roots=roots) == "unreadable"


@pytest.fixture
def roots(tmp_path) -> tuple[Path, Path]:
    """An allowed folder with a picture, and a folder outside it with another."""
    allowed, outside = tmp_path / "photos", tmp_path / "photos-private"  # a shared prefix, but not a parent
    allowed.mkdir()
    outside.mkdir()
    imagegen.save(allowed / "ok.png")
    imagegen.save(outside / "secret.png")
    return allowed, outside


def test_inside_allowed_root_loads(roots):
    allowed, _ = roots
    (allowed / "link.png").symlink_to(allowed / "ok.png")
    for name in ("ok.png", "link.png"):
        assert load_pixels(str(allowed / name), allowed_roots=(str(allowed),)).shape == SHAPE


def test_root_given_through_a_symlink_allows_its_files(roots, tmp_path):
    # Paths are compared after resolving symlinks, so the roots must be resolved too.
    allowed, _ = roots
    (tmp_path / "alias").symlink_to(allowed)
    for path in (allowed / "ok.png", tmp_path / "alias" / "ok.png"):
        assert load_pixels(str(path), allowed_roots=(str(tmp_path / "alias"),)).shape == SHAPE


def test_outside_allowed_roots_is_forbidden(roots):
    allowed, outside = roots
    (allowed / "escape.png").symlink_to(outside / "secret.png")
    (allowed / "escape-dir").symlink_to(outside)
    paths = [
        outside / "secret.png",
        allowed / "escape.png",
        allowed / "escape-dir" / "secret.png",
        allowed / ".." / "photos-private" / "secret.png",
        outside / "missing.png",  # forbidden, not missing: nothing is told about files outside the roots
    ]
    assert [error_code(path, allowed_roots=(str(allowed),)) for path in paths] == ["forbidden"] * len(paths)


@pytest.mark.parametrize("name", ["drawing.eps", "drawing.jpg"])
def test_eps_is_not_an_image_and_never_opened(tmp_path, monkeypatch, name):
    path = tmp_path / name
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with Image.open(path) as image:  # Pillow left to itself would take it (and run Ghostscript to decode it)
        assert image.format == "EPS"
    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda image: opened.append(image))
    assert error_code(path) == "not_an_image"
    assert opened == []


COLOURS = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_animation_or_pages_take_the_first(tmp_path, suffix):
    path = tmp_path / f"several{suffix}"
    frames = [Image.new("RGB", (40, 30), colour) for colour in COLOURS]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with Image.open(path) as image:
        assert image.n_frames == len(COLOURS)
    assert np.array_equal(load_pixels(str(path)), np.full(SHAPE, COLOURS[0], np.uint8))
    assert np.array_equal(imgq_input(path), keras_input(path))


def test_jpeg_draft_decodes_large_jpegs_at_reduced_scale_to_nearly_the_same_picture(tmp_path):
    """Draft mode (the worker's default) trades exactness for speed on large JPEGs only."""
    large = imagegen.save(tmp_path / "large.jpg", size=(1200, 900), quality=92)
    small = imagegen.save(tmp_path / "small.jpg", size=(400, 300), quality=92)
    exact, drafted = load_pixels(str(large)), load_pixels(str(large), jpeg_draft=True)
    assert not np.array_equal(exact, drafted)  # decoded at 1/4 scale: other pixels...
    assert np.abs(exact.astype(int) - drafted.astype(int)).mean() < 12  # ...of the same picture
    # Below 448 px a side there is no smaller scale to take: identical to Keras.
    assert np.array_equal(load_pixels(str(small), jpeg_draft=True), load_pixels(str(small)))


# --- Every model's recipe, exactly ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "resnet50v2", "efficientnetv2b0", "efficientnetv2s", "convnexttiny",
                                  "mobilenetv3large"])
def test_each_builtin_matches_its_familys_preprocess_input(tmp_path, name):
    """load_img(target_size) -> img_to_array -> keras.applications.<family>.preprocess_input, to the bit."""
    import importlib

    from imgq.models.spec import builtin_spec
    from worker.images.preprocess import Target

    spec = builtin_spec(name)
    family = importlib.import_module(f"keras.applications.{spec.builtin.family}")
    path = imagegen.save(tmp_path / "p.png", fmt="PNG", size=(301, 157))
    theirs = family.preprocess_input(keras.utils.img_to_array(keras.utils.load_img(path, target_size=spec.input_size)))
    ours = to_model_input(load_pixels(str(path), target=Target.of(spec)), preprocessing=spec.preprocessing)
    assert ours.dtype == np.float32 and ours.shape == (*spec.input_size, 3)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_each_mode_is_imagenet_utils_own(mode):
    from keras.applications import imagenet_utils

    pixels = np.random.default_rng(3).integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    theirs = imagenet_utils.preprocess_input(pixels.astype(np.float32), mode=mode)
    assert np.array_equal(to_model_input(pixels, preprocessing=mode), theirs)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
@pytest.mark.parametrize("resize", ["squash", "crop"])
@pytest.mark.parametrize(("grey", "size"), [(False, (96, 64)), (True, (28, 28)), (True, (20, 36))])
def test_targets_match_load_img(tmp_path, grey, size, resize, interpolation):
    """Any size, greyscale or RGB, load_img's crop (keep_aspect_ratio) and interpolations."""
    from worker.images.preprocess import Target

    for fmt, name in (("PNG", "rgb.png"), ("PNG", "p-mode.png")):
        path = imagegen.save(tmp_path / name, fmt=fmt, size=(203, 121))
        if name == "p-mode.png":
            Image.open(path).convert("P").save(path)
        image = keras.utils.load_img(path, color_mode="grayscale" if grey else "rgb", target_size=size,
                                     interpolation=interpolation, keep_aspect_ratio=resize == "crop")
        theirs = keras.utils.img_to_array(image)
        target = Target(size, 1 if grey else 3, resize, interpolation)
        ours = load_pixels(str(path), target=target)
        assert ours.shape == theirs.shape == (*size, 1 if grey else 3)
        assert np.array_equal(ours.astype(np.float32), theirs), (name, resize, interpolation)


def test_a_rotated_photo_fills_a_non_square_target_upright(tmp_path):
    from worker.images.preprocess import Target

    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (80, 40), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # stored lying down: width and height swap when turned upright
    image.save(path, exif=exif.tobytes())
    assert load_pixels(str(path), target=Target((30, 20), 3)).shape == (30, 20, 3)
