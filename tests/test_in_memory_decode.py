"""An s3:// object reaches the decoders as an io.BytesIO (imgq/storage/s3.py): no descriptor, no /proc path. Every
format decodes from memory to the very pixels it decodes to from its file (the WebP and HEIF memory checks size
the file without fstat, LibRaw reads the buffer)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests import imagegen, photogen
from worker.images.preprocess import decode_pixels, file_size, load_pixels


def test_file_size_of_a_file_and_of_memory_keeps_the_position(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as file:
        file.seek(3)
        assert file_size(file) == 10 and file.tell() == 3
    memory = io.BytesIO(b"0123456789")
    memory.seek(4)
    assert file_size(memory) == 10 and memory.tell() == 4


def _pictures(folder):
    paths = imagegen.write_formats(folder)
    dng = folder / "camera.dng"
    dng.write_bytes(photogen.dng(Image.fromarray(imagegen.pattern(320, 240, seed=5))))
    paths.append(dng)
    if photogen.HEIF_ENC:
        paths.append(photogen.heic_from(imagegen.save(folder / "for-heic.jpg", seed=6), folder / "phone.heic"))
    return paths


def test_every_format_decodes_from_memory_as_from_its_file(tmp_path):
    paths = _pictures(tmp_path)
    kinds = {path.suffix for path in paths}
    assert {".webp", ".dng", ".jpg", ".png"} <= kinds
    for path in paths:
        from_file = load_pixels(str(path), jpeg_draft=True)
        from_memory = decode_pixels(io.BytesIO(path.read_bytes()), jpeg_draft=True, name=path.name)
        assert np.array_equal(from_file, from_memory), path.name


@pytest.mark.skipif(not photogen.HEIF_ENC, reason=photogen.NO_HEIF_ENC)
def test_a_heic_decodes_from_memory(tmp_path):
    heic = photogen.heic_from(imagegen.save(tmp_path / "a.jpg", seed=7), tmp_path / "a.heic")
    assert decode_pixels(io.BytesIO(heic.read_bytes()), name="a.heic").shape == (224, 224, 3)
