"""HEIF/HEIC and camera RAW (worker/images/formats.py): recognised by content, under the bounds of every format, turned
upright once; and a HEIC labelled as its JPEG twin by a real worker with image-dependent weights."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgq.contract import ERROR_CODES, IMAGE_EXTENSIONS, IMAGE_FORMATS
from imgq.storage import image_kinds
from tests import photogen
from tests.imagegen import pattern
from worker.images import formats
from worker.images.preprocess import ImageError, load_pixels

needs_heif_enc = pytest.mark.skipif(photogen.HEIF_ENC is None, reason=photogen.NO_HEIF_ENC)


def error(path: Path, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as caught:
        load_pixels(str(path), **kwargs)
    return caught.value


def banded(size=(300, 200)) -> Image.Image:
    """Black with a red band along the top: where the band ends up tells how the picture was turned."""
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 4, :, 0] = 255
    return Image.fromarray(pixels)


def red_side(pixels: np.ndarray) -> str:
    """Which side of a decoded (224, 224, 3) picture the red band is on."""
    red = pixels[..., 0].astype(float)
    sides = {"top": red[:20].mean(), "bottom": red[-20:].mean(), "left": red[:, :20].mean(),
             "right": red[:, -20:].mean()}
    return max(sides, key=lambda side: sides[side])


@pytest.fixture
def jpeg(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.fromarray(pattern(400, 300, seed=3)).save(path, quality=92)
    return path


def test_the_contract_names_the_new_formats():
    assert {"HEIF", "RAW"} <= set(IMAGE_FORMATS)
    assert {"heic", "heif", "hif", "dng", "cr2", "cr3", "nef", "arw", "orf", "rw2", "raf", "pef", "srw"} <= set(
        IMAGE_EXTENSIONS)
    assert "no_preview" in ERROR_CODES


@pytest.mark.parametrize(("head", "name", "kind"), [
    (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "a.bin", "HEIF"),
    (b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic", "a.bin", "HEIF"),
    (b"\0\0\0\x18ftypheix\0\0\0\0mif1heix", "a.jpg", "HEIF"),
    (b"\0\0\0\x18ftypavif\0\0\0\0mif1avif", "a.heic", ""),  # AVIF: pillow-heif does not decode it
    (b"\0\0\0\x18ftypisom\0\0\0\0isomavc1", "a.heic", ""),  # an MP4 video named .heic
    (b"\0\0\0\x18ftypcrx \0\0\0\x01crx isom", "a.bin", "RAW"),  # Canon CR3
    (b"IIRO\x08\0\0\0", "a.bin", "RAW"),  # Olympus ORF
    (b"IIU\0\x08\0\0\0", "a.bin", "RAW"),  # Panasonic RW2
    (b"FUJIFILMCCD-RAW 0201", "a.bin", "RAW"),
    (b"II*\0\x10\0\0\0CR\x02\0", "a.bin", "RAW"),  # Canon CR2's marker
    (b"II*\0\x08\0\0\0\0\0", "a.NEF", "RAW"),  # TIFF inside, named as a RAW
    (b"II*\0\x08\0\0\0\0\0", "a.tif", ""),  # a TIFF: Pillow's
    (b"\xff\xd8\xff\xe0", "a.dng", ""),  # a JPEG named .dng is a JPEG
])
def test_formats_are_recognised_by_content(head, name, kind):
    assert image_kinds.sniff(io.BytesIO(head + bytes(32)), name) == kind


def test_a_dng_says_so_whatever_its_name():
    data = photogen.dng(banded())
    assert image_kinds.sniff(io.BytesIO(data), "scan.tif") == "RAW"
    assert image_kinds.sniff(io.BytesIO(data), "") == "RAW"


# --- HEIC --------------------------------------------------------------------------------------------------

@needs_heif_enc
def test_a_heic_decodes_like_its_jpeg_twin(tmp_path, jpeg):
    heic = photogen.heic_from(jpeg, tmp_path / "photo.HEIC")
    assert image_kinds.sniff(heic.open("rb"), str(heic)) == "HEIF"
    twin, pixels = load_pixels(str(jpeg)), load_pixels(str(heic))
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert np.abs(twin.astype(int) - pixels.astype(int)).mean() < 6  # HEVC against JPEG: the same picture


def test_a_heic_is_turned_upright_once(tmp_path):
    """iPhones store the sensor's picture with a rotation in the container (irot) AND an EXIF orientation:
    libheif applies the first; the second must not turn it again."""
    path = tmp_path / "iphone.heic"
    exif = Image.Exif()
    exif[0x0112] = 6  # 90 degrees clockwise to show it upright
    banded().save(path, format="HEIF", exif=exif.tobytes(), quality=90)  # pillow-heif writes irot and the EXIF
    assert b"irot" in path.read_bytes()
    assert red_side(load_pixels(str(path))) == "right"  # turned 90 degrees once (twice would put it at the bottom)


@needs_heif_enc
def test_a_heic_declaring_huge_dimensions_is_too_large_before_any_decode(tmp_path, jpeg, monkeypatch):
    import pillow_heif

    heic = photogen.heic_from(jpeg, tmp_path / "photo.heic")
    bomb = photogen.heic_declaring(heic, tmp_path / "bomb.heic", 60000, 60000)
    monkeypatch.setattr(pillow_heif.HeifImageFile, "load", lambda self: pytest.fail("decoded"))
    refused = error(bomb)
    assert refused.code == "too_large" and "3600000000 pixels" in refused.message
    assert error(photogen.heic_declaring(heic, tmp_path / "max.heic", 2**31 - 1, 2**31 - 1)).code == "too_large"


@needs_heif_enc
def test_a_heic_over_libheifs_own_limit_is_a_too_large_record_in_imgqs_words(tmp_path, jpeg):
    """With IMGQ_MAX_PIXELS raised past libheif's own image size limit (32768 x 32768 pixels), libheif refuses
    the decode with its "Security limit exceeded": the record is too_large and names the limit as imgq's other
    too_large messages do, without libheif's wording (issue 25 item 17b)."""
    from imgq.settings import Settings
    from worker.batches.batch import decode

    heic = photogen.heic_from(jpeg, tmp_path / "photo.heic")
    big = photogen.heic_declaring(heic, tmp_path / "big.heic", 40000, 30000)  # 1.2e9 pixels, none decoded
    wide_open = 4_000_000_000  # IMGQ_MAX_PIXELS: its memory budget too takes a 1.2e9-pixel HEIF
    refused = error(big, max_pixels=wide_open)
    assert (refused.code, refused.message) == (
        "too_large", "a 40000x30000 HEIF is more than 1073741824 pixels, libheif's own limit (whatever "
                     "IMGQ_MAX_PIXELS allows)")
    record = decode(0, str(big), Settings(max_pixels=wide_open, jpeg_draft=False)).error  # what the worker stores
    assert record is not None and (record.code, record.message) == (refused.code, refused.message)
    # libheif's other limits (tiles, items, memory blocks) say what was over; other failures are not theirs.
    tiles = formats.over_libheif_limit(RuntimeError("Memory allocation error: Security limit exceeded: Number of "
                                                    "tiles exceeds security limit"))
    assert tiles is not None and (tiles.code, tiles.message) == (
        "too_large", "a HEIF over one of libheif's own limits (Number of tiles exceeds security limit), whatever "
                     "imgq's allow")
    assert formats.over_libheif_limit(RuntimeError("Decoder plugin generated an error: Unknown error")) is None


@needs_heif_enc
def test_a_heic_that_would_take_more_memory_than_the_budget_is_too_large(tmp_path, jpeg):
    heic = photogen.heic_from(jpeg, tmp_path / "photo.heic")
    pixels = 400 * 300
    assert load_pixels(str(heic), max_pixels=pixels * formats.HEIF_BYTES_PER_PIXEL // 4 + 100_000).shape
    refused = error(heic, max_pixels=pixels)  # fits max_pixels, but not 4 bytes a pixel of it
    assert refused.code == "too_large" and "HEIF takes" in refused.message


def test_a_heic_is_classified_from_its_thumbnail_when_that_is_large_enough(tmp_path, monkeypatch):
    """Draft decoding of a HEIC (IMGQ_JPEG_DRAFT, on by default): its embedded thumbnail when both its sides are at
    least the model's input (an iPhone's 320x240 for 224x224), never one smaller; the full image without draft.
    Made as phones write them, a grid of tiles, against one of which the thumbnail is checked."""
    from worker.images import preprocess

    decoded = []
    real_resized = preprocess._resized
    monkeypatch.setattr(preprocess, "_resized", lambda image, *args: decoded.append(image.size) or
                        real_resized(image, *args))
    big = Image.fromarray(pattern(1280, 960, seed=5))
    phone = photogen.heic_grid(big, tmp_path / "phone.heic", thumbnail=320)
    small = photogen.heic_grid(big, tmp_path / "small.heic", thumbnail=160)
    from_thumbnail = load_pixels(str(phone), jpeg_draft=True)
    full = load_pixels(str(phone), jpeg_draft=False)
    load_pixels(str(small), jpeg_draft=True)
    assert decoded == [(320, 240), (1280, 960), (1280, 960)]
    # The same picture: a nearest resize of a 4x smaller copy picks other pixels, not another image.
    assert np.abs(from_thumbnail.astype(int) - full.astype(int)).mean() < 40
    assert np.corrcoef(from_thumbnail.ravel(), full.ravel())[0, 1] > 0.6


def test_a_heic_over_the_memory_budget_whole_is_classified_from_a_thumbnail_within_it(tmp_path):
    """A 48 MP "HEIF Max" photo at the default limits, scaled down: the whole picture fits IMGQ_MAX_PIXELS but
    not the decode's memory budget (13 bytes a pixel against 4). With draft decoding its 320 px thumbnail is
    what is decoded, within the budget; without, or with only a thumbnail too large for the budget itself
    (drafting decodes the thumbnail it picks), it is too_large as before. A grid, as phones write them, scaled
    down too (256 px tiles): the tile the thumbnail is checked against fits the budget with it."""
    big = Image.fromarray(pattern(1280, 960, seed=6))
    small_thumb = photogen.heic_grid(big, tmp_path / "t320.heic", tile=256, thumbnail=320)
    large_thumb = photogen.heic_grid(big, tmp_path / "t1024.heic", tile=256, thumbnail=1024)
    limit = 1280 * 960  # the picture's pixels: within max_pixels, over its memory budget whole
    assert load_pixels(str(small_thumb), max_pixels=limit, jpeg_draft=True).shape == (224, 224, 3)
    for path, draft in ((small_thumb, False), (large_thumb, True)):
        refused = error(path, max_pixels=limit, jpeg_draft=draft)
        assert refused.code == "too_large" and "HEIF takes" in refused.message, (path.name, draft)


@pytest.fixture
def decoded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every picture the worker decodes, as it reaches the resize: which one was decoded."""
    from worker.images import preprocess

    sizes: list[tuple[int, int]] = []
    real_resized = preprocess._resized
    monkeypatch.setattr(preprocess, "_resized", lambda image, *args: sizes.append(image.size) or
                        real_resized(image, *args))
    return sizes


def test_a_heic_whose_thumbnail_is_another_picture_is_classified_from_its_picture(tmp_path, decoded_sizes):
    """Issue 25 H2. A phone-like HEIC (a grid of 512 px tiles) whose 320x240 thumbnail shows another picture (as a
    tool that edits a photo and keeps its old thumbnail leaves it), with draft decoding on: what is classified is
    the primary image every viewer shows, decoded whole (the same pixels as without draft), never the thumbnail;
    over the decode's memory budget, too_large. Its twin with its own thumbnail still takes the thumbnail."""
    picture = Image.fromarray(pattern(1280, 960, seed=5))
    other = Image.fromarray(np.ascontiguousarray(pattern(1280, 960, seed=9)[::-1]))  # upside down: another picture
    wrong = photogen.heic_with_thumbnail_of(picture, other, tmp_path / "edited.heic")
    true = photogen.heic_grid(picture, tmp_path / "phone.heic")
    with Image.open(wrong) as image:  # the thumbnail is a scaled copy by its boxes: only its pixels tell
        assert image.info["thumbnails"] == [320] and image.draft("RGB", (224, 224)) is not None
    classified = load_pixels(str(wrong), jpeg_draft=True)
    assert decoded_sizes == [(1280, 960)]
    assert np.array_equal(classified, load_pixels(str(wrong), jpeg_draft=False))
    thumbnail_picture = np.asarray(other.resize((224, 224), Image.Resampling.NEAREST))
    assert np.abs(classified.astype(int) - thumbnail_picture.astype(int)).mean() > 40
    decoded_sizes.clear()
    load_pixels(str(true), jpeg_draft=True)
    assert decoded_sizes == [(320, 240)]
    # Just over the memory budget whole (13 bytes a pixel, the file), within max_pixels: a true thumbnail is classified.
    limit = (true.stat().st_size + formats.HEIF_BYTES_PER_PIXEL * 1280 * 960) // 4 - 1
    assert load_pixels(str(true), max_pixels=limit, jpeg_draft=True).shape == (224, 224, 3)
    refused = error(wrong, max_pixels=limit, jpeg_draft=True)
    assert refused.code == "too_large" and "HEIF takes" in refused.message


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_turned_phone_heic_is_classified_from_its_thumbnail_turned_alike(tmp_path, decoded_sizes, orientation):
    """iPhones turn a photo by the HEIF's irot/imir, its thumbnail's too: both are compared as shown, whichever side
    the grid's padding turned to (libheif reports that offset wrongly: imgq/storage/heif_tiles.py _grid); the
    true thumbnail is taken, upright as the picture."""
    path = photogen.heic_grid(Image.fromarray(pattern(640, 480, seed=5)), tmp_path / "turned.heic", tile=256,
                              orientation=orientation)
    with Image.open(path) as image:
        width, height = image.size
    from_thumbnail = load_pixels(str(path), jpeg_draft=True)
    assert decoded_sizes == [(width // 2, height // 2)]
    assert np.abs(from_thumbnail.astype(int) - load_pixels(str(path), jpeg_draft=False).astype(int)).mean() < 20


@needs_heif_enc
def test_a_heic_coded_whole_is_decoded_whole_whatever_its_thumbnail(tmp_path, decoded_sizes):
    """A HEIC whose primary image is one coded picture (heif-enc writes them so) cannot be compared with its
    thumbnail for less than its full decode: its thumbnail is never taken."""
    big = tmp_path / "big.jpg"
    Image.fromarray(pattern(1280, 960, seed=5)).save(big, quality=92)
    heic = photogen.heic_from(big, tmp_path / "whole.heic", 90, "preset=ultrafast", thumbnail=320)
    with Image.open(heic) as image:
        assert image.info["thumbnails"] == [320] and "tiling" not in image.info
    load_pixels(str(heic), jpeg_draft=True)
    assert decoded_sizes == [(1280, 960)]


def test_a_turned_heic_whose_thumbnail_is_not_turned_alike_is_decoded_whole(tmp_path):
    """pillow-heif writes the EXIF orientation as the primary image's rotation (irot) but its thumbnails
    unturned: not a scaled copy of the picture, so draft leaves it, and the photo is upright once."""
    path = tmp_path / "turned.heic"
    exif = Image.Exif()
    exif[0x0112] = 6
    banded((1200, 800)).save(path, format="HEIF", exif=exif.tobytes(), quality=90, thumbnails=[320])
    with Image.open(path) as image:
        assert image.info["thumbnails"] == [320] and image.draft("RGB", (224, 224)) is None
    assert red_side(load_pixels(str(path), jpeg_draft=True)) == "right"


@needs_heif_enc
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_a_truncated_heic_is_corrupt(tmp_path, jpeg, keep):
    data = photogen.heic_from(jpeg, tmp_path / "photo.heic").read_bytes()
    cut = tmp_path / "cut.heic"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert error(cut).code == "corrupt"


def test_an_avif_or_a_video_named_heic_is_not_an_image(tmp_path):
    path = tmp_path / "clip.heic"
    path.write_bytes(b"\0\0\0\x18ftypisom\0\0\0\0isomavc1" + bytes(1000))
    assert error(path).code == "not_an_image"


# --- RAW ---------------------------------------------------------------------------------------------------

def test_a_dng_is_classified_through_its_preview_turned_as_the_camera_was(tmp_path):
    upright = tmp_path / "upright.dng"
    upright.write_bytes(photogen.dng(banded()))
    assert red_side(load_pixels(str(upright))) == "top"
    turned = tmp_path / "turned.dng"
    turned.write_bytes(photogen.dng(banded(), orientation=6))
    assert red_side(load_pixels(str(turned))) == "right"


def test_a_raw_preview_with_its_own_orientation_is_turned_once(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    banded().save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    path = tmp_path / "both.dng"
    path.write_bytes(photogen.dng(buffer.getvalue(), orientation=6))
    assert red_side(load_pixels(str(path))) == "right"


def test_a_dng_preview_is_its_jpeg_exactly(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(pattern(400, 300, seed=5)).save(buffer, "JPEG", quality=90)
    (tmp_path / "p.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "p.dng").write_bytes(photogen.dng(buffer.getvalue()))
    for draft in (False, True):
        assert np.array_equal(load_pixels(str(tmp_path / "p.dng"), jpeg_draft=draft),
                              load_pixels(str(tmp_path / "p.jpg"), jpeg_draft=draft))


def test_a_raw_without_a_preview_says_so(tmp_path):
    path = tmp_path / "bare.dng"
    path.write_bytes(photogen.dng(None))
    refused = error(path)
    assert refused.code == "no_preview" and "without an embedded preview" in refused.message


def test_a_raw_preview_declaring_huge_dimensions_is_too_large(tmp_path):
    buffer = io.BytesIO()
    banded().save(buffer, "JPEG")
    jpeg = bytearray(buffer.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # the frame header's height and width
    path = tmp_path / "bomb.dng"
    path.write_bytes(photogen.dng(bytes(jpeg)))
    assert error(path).code == "too_large"


def test_files_named_as_raws_that_are_not(tmp_path):
    tiff = tmp_path / "scan.nef"
    Image.fromarray(pattern()).save(tiff, "TIFF")  # TIFF inside, named as a Nikon RAW: LibRaw does not read it
    assert error(tiff).code == "not_an_image"
    cut = tmp_path / "cut.dng"
    cut.write_bytes(photogen.dng(banded())[:200])
    refused = error(cut)
    assert (refused.code, refused.message) == ("corrupt", "LibRaw cannot read it: Input/output error")
    jpeg = tmp_path / "photo.cr2"
    banded().save(jpeg, "JPEG")  # a JPEG named .cr2 is a JPEG
    assert load_pixels(str(jpeg)).shape == (224, 224, 3)


@pytest.mark.slow
def test_the_memory_of_a_heif_decode_is_within_its_bound(tmp_path):
    """The worst case measured for HEIF_BYTES_PER_PIXEL: RGBA at 4:4:4 (no chroma subsampling)."""
    from tests.test_decode_bounds import _decode_peak

    path = tmp_path / "rgba444.heic"
    Image.fromarray(pattern(2000, 1500, seed=2)).convert("RGBA").save(path, format="HEIF", quality=50, chroma=444)
    peak = _decode_peak(path)
    bound = (path.stat().st_size + formats.HEIF_BYTES_PER_PIXEL * 2000 * 1500) / 1024**2
    assert peak["code"] == "ok" and peak["peak_mib"] <= bound * 1.1, (peak, bound)


# --- A real worker, with weights whose labels depend on the picture -----------------------------------------

TWINS = 8


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """JPEG pictures with their HEIC (without and with a thumbnail) and DNG twins, and weights (tests/weights.py)
    whose top-1 for picture i, decoded from its JPEG, is class i."""
    if photogen.HEIF_ENC is None:
        pytest.skip(photogen.NO_HEIF_ENC)
    from tests import weights as test_weights

    folder = tmp_path_factory.mktemp("twins")
    jpegs = []
    for i in range(TWINS):
        jpeg = folder / f"picture-{i}.jpg"
        Image.fromarray(test_weights.picture(i, size=(320, 240))).save(jpeg, quality=92)
        jpegs.append(jpeg)
        photogen.heic_from(jpeg, folder / f"picture-{i}.heic")
        (folder / f"picture-{i}.dng").write_bytes(photogen.dng(jpeg.read_bytes()))
        # As a phone leaves it: 4x larger, a grid of tiles with a 320x240 thumbnail, which draft decoding classifies.
        large = Image.open(jpeg).resize((1280, 960), Image.Resampling.BICUBIC)
        photogen.heic_grid(large, folder / f"picture-{i}-phone.heic", thumbnail=320)
    weights = test_weights.image_dependent_weights(jpegs, tmp_path_factory.mktemp("w") / "twins.weights.h5")
    return folder, str(weights)


@pytest.mark.slow
def test_a_worker_labels_heic_and_raw_as_their_jpeg_twins(twins, redis_url, tmp_path):
    from imgq.results.store import ResultStore, delete_namespace
    from producer.local.workers import LocalWorker
    from tests.conftest import make_settings
    from tests.processes import imgq_cli
    from worker.batches.labels import class_index

    folder, weights = twins
    settings = make_settings(redis_url, tmp_path, weights=weights)
    worker = LocalWorker(settings)
    worker.start()
    try:
        store = ResultStore.from_settings(settings)
        worker.wait_ready(store, timeout=180)
        job = imgq_cli(settings, "submit", str(folder), "--wait").stdout.strip()
        records = {Path(r["path"]).name: r for r in store.iter_results(job)}
    finally:
        worker.stop()
        delete_namespace(redis_url, settings.namespace)
    assert len(records) == 4 * TWINS and {r["status"] for r in records.values()} == {"ok"}
    for i in range(TWINS):
        top1 = {ext: records[f"picture-{i}{ext}"]["top_k"][0]["wnid"] for ext in (".jpg", ".heic", ".dng",
                                                                                  "-phone.heic")}
        assert top1 == dict.fromkeys(top1, class_index()[i][0]), (i, top1)


def test_a_dng_opens_where_proc_is_missing(tmp_path, monkeypatch):
    """Without /proc (another kernel), LibRaw reads the checked file from its file object."""
    path = tmp_path / "upright.dng"
    path.write_bytes(photogen.dng(banded()))
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if str(p).startswith("/proc/") else real_exists(p))
    assert red_side(load_pixels(str(path))) == "top"
