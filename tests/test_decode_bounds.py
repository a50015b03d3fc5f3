"""What refusing a file may cost: a stat for a file over IMGQ_MAX_FILE_BYTES, a bounded number of reads for
junk, nothing allocated for a bomb, and at most one full-size image of memory for any decode."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, WebPImagePlugin

from imgq.results.known import file_digest, stream_digest
from imgq.storage.local import LocalFiles
from tests import imagegen
from worker.images import preprocess, reads
from worker.images.memory import decode_budget
from worker.images.preprocess import ImageError, load_pixels

MiB = 1024**2


def error(path: Path, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as caught:
        load_pixels(str(path), **kwargs)
    return caught.value


@pytest.fixture
def budgets(monkeypatch) -> list[reads.BudgetedFile]:
    """Every BudgetedFile the decoder makes, to count what it read."""
    made = []

    def spy(file, *args):
        made.append(reads.BudgetedFile(file, *args))
        return made[-1]

    monkeypatch.setattr(preprocess, "BudgetedFile", spy)
    return made


def test_a_file_over_the_limit_is_too_large_before_any_decoder(tmp_path, monkeypatch):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as file:  # sparse: 4 GiB that cost no disk
        file.write(b"\xff\xd8\xff\xe0")
        file.truncate(4 * 1024**3)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("a decoder ran"))
    refused = error(path, max_file_bytes=256 * MiB)
    assert refused.code == "too_large" and "4294967296 bytes" in refused.message


# The headers that make a Pillow plugin scan what follows in Python, and the filling it scans.
JUNK = {
    "jpeg-then-ff": (b"\xff\xd8", b"\xff"),
    "jpeg-then-zeros": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(9), b"\0"),
    "gif-then-zeros": (b"GIF89a\x10\x00\x10\x00\x00\x00\x00", b"\0"),
    "tiff-then-zeros": (b"II*\0\x08\0\0\0", b"\0"),
    "png-then-zeros": (b"\x89PNG\r\n\x1a\n", b"\0"),
    "random": (b"", None),
}


@pytest.mark.parametrize("name", list(JUNK))
def test_junk_under_the_limit_costs_a_bounded_number_of_reads(tmp_path, budgets, name):
    head, fill = JUNK[name]
    size = 8 * MiB  # a byte-by-byte scan of it would take reads.MAX_READS many times over
    body = np.random.default_rng(0).bytes(size) if fill is None else fill * size
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(head + body)
    assert error(path).code in ("not_an_image", "corrupt")
    assert all(b.reads <= reads.MAX_READS + 1 for b in budgets)  # the one refused, at most
    assert sum(b.bytes_read for b in budgets) <= 2 * MiB


def test_the_read_budget_is_far_from_real_images(tmp_path, budgets):
    for path in imagegen.write_formats(tmp_path, seed=3):
        load_pixels(str(path))
    big = imagegen.save(tmp_path / "big.png", size=(4000, 3000))
    load_pixels(str(big))
    assert max(b.reads for b in budgets) < reads.MAX_READS // 100


def _webp_declaring(width: int, height: int) -> bytes:
    """A real 16x16 animated WebP (VP8X) whose header then declares a ``width`` x ``height`` canvas."""
    frames = [Image.new("RGB", (16, 16), (50 * i, 0, 0)) for i in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def test_a_webp_bomb_is_refused_before_its_decoder_exists(tmp_path, monkeypatch):
    path = tmp_path / "bomb.webp"
    path.write_bytes(_webp_declaring(16383, 16383))
    assert path.stat().st_size < 200
    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", lambda *a: pytest.fail("the canvas was allocated"))
    assert error(path).code == "too_large"


def test_pillows_own_guard_holds_at_max_pixels(tmp_path, monkeypatch):
    # Pillow's check in WebP's opener (before the canvas) and in Image.open raises exactly above max_pixels.
    path = tmp_path / "declared.webp"
    path.write_bytes(_webp_declaring(300, 200))
    monkeypatch.setattr(preprocess, "_check_webp", lambda *a: None)  # leave it to Pillow alone
    assert error(path, max_pixels=300 * 200 - 1).code == "too_large"
    assert load_pixels(str(path), max_pixels=300 * 200).shape == (224, 224, 3)  # the frames on a 300x200 canvas
    png = imagegen.save(tmp_path / "300x200.png")
    monkeypatch.setattr(preprocess, "_check_size", lambda *a: None)  # and without imgq's own check
    assert error(png, max_pixels=300 * 200 - 1).code == "too_large"


def test_a_webp_is_refused_when_decoding_it_would_exceed_the_budget(tmp_path):
    path = imagegen.save(tmp_path / "wide.webp", size=(2000, 1000), lossless=True)
    assert load_pixels(str(path), max_pixels=2000 * 1000 * 5).shape == (224, 224, 3)
    refused = error(path, max_pixels=2000 * 1000)  # fits max_pixels, but 16 bytes a pixel do not fit 4
    assert refused.code == "too_large" and "WebP" in refused.message


def test_hashing_reads_in_chunks_and_stops_at_the_limit(tmp_path):
    data = np.random.default_rng(1).bytes(5 * MiB + 17)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with open(path, "rb") as file:
        assert stream_digest(file, limit=len(data)) == file_digest(data)
    with open(path, "rb") as file:
        assert stream_digest(file, limit=len(data) - 1) is None
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as file:
        file.truncate(4 * 1024**3)
    with pytest.raises(ImageError) as caught, LocalFiles().open(str(huge), (), max_bytes=256 * MiB):
        pass
    assert caught.value.code == "too_large"


PEAK = """
import json, sys
from worker.images.preprocess import ImageError, load_pixels

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM): it survives fork and exec
    f.write("5")
before = status("VmRSS")
try:
    load_pixels(sys.argv[1]); code = "ok"
except ImageError as exc:
    code = exc.code
print(json.dumps({"code": code, "peak_mib": (status("VmHWM") - before) / 1024}))
"""


def _decode_peak(path: Path) -> dict:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, cwd=root,
                          check=True, timeout=120)
    return json.loads(done.stdout)


BIG = 9400  # 88.4 million pixels: just under the default max_pixels


@pytest.mark.parametrize("name, make", [
    ("sixteen.png", lambda p: Image.fromarray(np.full((BIG, BIG), 40000, dtype=np.uint16)).save(p)),
    ("cmyk.jpg", lambda p: Image.new("CMYK", (BIG, BIG), (10, 20, 30, 40)).save(p)),
    ("rgba.png", lambda p: Image.new("RGBA", (BIG, BIG), (10, 20, 30, 40)).save(p)),
    ("palette.png", lambda p: Image.new("P", (BIG, BIG), 3).save(p)),
    ("webp-bomb.webp", lambda p: p.write_bytes(_webp_declaring(16383, 16383))),
    ("lossless.webp", lambda p: Image.new("RGB", (BIG, BIG), (1, 2, 3)).save(p, lossless=True)),
])
def test_peak_memory_of_one_decode_is_at_most_one_full_size_image(tmp_path, name, make):
    path = tmp_path / name
    make(path)
    peak = _decode_peak(path)
    budget_mib = decode_budget(89_478_485) / MiB  # 341 MiB
    print(name, peak)
    assert peak["peak_mib"] <= budget_mib * 1.1, peak
    assert peak["code"] == ("too_large" if "webp" in name else "ok")
