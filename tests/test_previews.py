"""The report's thumbnails (producer/report/previews.py): every file opened as the worker opens it (roots, no blocking
open, regular files, size and pixel caps from the header), HEIC and RAW shown, each picture upright once."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from producer.report.previews import THUMB_SIZE, PreviewLimits, thumbnail
from tests import photogen
from tests.imagegen import bomb_png

needs_heif_enc = pytest.mark.skipif(photogen.HEIF_ENC is None, reason=photogen.NO_HEIF_ENC)


def banded(size=(300, 200)) -> Image.Image:
    """Black with a red band along the top: where the band ends up tells how the picture was turned."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 4, :, 0] = 255
    return Image.fromarray(pixels)


def red_side(picture: Image.Image) -> str:
    red = np.asarray(picture)[..., 0].astype(float)
    h, w = red.shape
    sides = {"top": red[: h // 8].mean(), "bottom": red[-h // 8:].mean(), "left": red[:, : w // 8].mean(),
             "right": red[:, -w // 8:].mean()}
    return max(sides, key=lambda side: sides[side])


def jpeg(path: Path, picture: Image.Image, orientation: int = 1) -> Path:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    picture.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


def test_a_jpeg_thumbnail_is_small_and_upright(tmp_path):
    upright = thumbnail(str(jpeg(tmp_path / "a.jpg", banded())), PreviewLimits())
    assert upright.size == (THUMB_SIZE, 107) and red_side(upright) == "top"  # 300x200, its longest side 160
    turned = thumbnail(str(jpeg(tmp_path / "b.jpg", banded(), orientation=6)), PreviewLimits())
    assert turned.size == (107, THUMB_SIZE) and red_side(turned) == "right"


def test_a_fifo_or_a_device_is_no_preview_at_once(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    answers = []
    reader = threading.Thread(target=lambda: answers.append(thumbnail(str(fifo), PreviewLimits())), daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "the open of a FIFO blocked"
    assert answers == [None]
    assert thumbnail("/dev/zero", PreviewLimits()) is None


def test_the_roots_decide_where_a_link_may_lead(tmp_path):
    inside, outside = tmp_path / "photos", tmp_path / "private"
    inside.mkdir()
    outside.mkdir()
    jpeg(outside / "secret.jpg", banded())
    (inside / "link.jpg").symlink_to(outside / "secret.jpg")
    jpeg(inside / "own.jpg", banded())
    limits = PreviewLimits(allowed_roots=(str(inside),))
    assert thumbnail(str(inside / "link.jpg"), limits) is None
    assert thumbnail(str(inside / "own.jpg"), limits) is not None
    assert thumbnail(str(inside / "link.jpg"), PreviewLimits()) is not None  # no roots: no restriction


def test_over_the_file_or_pixel_cap_is_no_preview_before_decoding(tmp_path):
    photo = jpeg(tmp_path / "a.jpg", banded())
    assert thumbnail(str(photo), PreviewLimits(max_file_bytes=photo.stat().st_size - 1)) is None
    # A 30000x30000 PNG of a few hundred KB: refused from its header (a decode would take 900 MB).
    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 5 * 1024**2
    assert thumbnail(str(bomb), PreviewLimits()) is None
    assert thumbnail(str(photo), PreviewLimits(max_pixels=300 * 200 - 1)) is None


def test_missing_damaged_and_not_images_are_no_preview(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    data = jpeg(tmp_path / "whole.jpg", banded()).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:100])
    for name in ("gone.jpg", "notes.jpg", "cut.jpg"):
        assert thumbnail(str(tmp_path / name), PreviewLimits()) is None, name


def test_a_raw_shows_its_preview_turned_as_the_camera_was(tmp_path):
    pytest.importorskip("rawpy", reason="rawpy (the worker extra) shows RAW previews")
    upright = tmp_path / "upright.dng"
    upright.write_bytes(photogen.dng(banded()))
    turned = tmp_path / "turned.dng"
    turned.write_bytes(photogen.dng(banded(), orientation=6))
    assert red_side(thumbnail(str(upright), PreviewLimits())) == "top"
    assert red_side(thumbnail(str(turned), PreviewLimits())) == "right"
    bare = tmp_path / "bare.dng"
    bare.write_bytes(photogen.dng(None))
    assert thumbnail(str(bare), PreviewLimits()) is None


@needs_heif_enc
def test_a_heic_shows_like_its_jpeg_twin(tmp_path):
    pytest.importorskip("pillow_heif", reason="pillow-heif (the worker extra) shows HEIC previews")
    source = jpeg(tmp_path / "twin.jpg", banded())
    heic = photogen.heic_from(source, tmp_path / "twin.heic")
    shown = thumbnail(str(heic), PreviewLimits())
    assert shown.size == thumbnail(str(source), PreviewLimits()).size and red_side(shown) == "top"
    huge = photogen.heic_declaring(heic, tmp_path / "huge.heic", 40000, 40000)
    assert thumbnail(str(huge), PreviewLimits()) is None


def test_a_heic_whose_thumbnail_is_another_picture_shows_its_picture(tmp_path, monkeypatch):
    """Issue 25 H2, in the report: a phone-like HEIC (a grid of tiles) whose embedded thumbnail, large enough for
    a preview, shows another picture is shown from its primary image, as every viewer shows it; its twin with
    its own thumbnail is still shown from the thumbnail."""
    pytest.importorskip("pillow_heif", reason="pillow-heif (the worker extra) shows HEIC previews")
    from producer.report import previews
    from tests.imagegen import pattern

    decoded = []  # the size of what each preview was made from: the thumbnail's, or the picture's
    real_decoded = previews._decoded
    monkeypatch.setattr(previews, "_decoded", lambda *args: decoded.append((shown := real_decoded(*args)).size)
                        or shown)
    picture = banded((1536, 1024))  # red along the top, black below
    other = Image.fromarray(pattern(1536, 1024, seed=4))  # red from left to right, structure everywhere
    wrong = photogen.heic_with_thumbnail_of(picture, other, tmp_path / "edited.heic", thumbnail=480)
    true = photogen.heic_grid(picture, tmp_path / "phone.heic", thumbnail=480)
    assert red_side(thumbnail(str(wrong), PreviewLimits())) == "top"
    assert red_side(thumbnail(str(true), PreviewLimits())) == "top"
    assert decoded == [(1536, 1024), (480, 320)]
