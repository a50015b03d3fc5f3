"""What kind of image a file holds, by its first bytes: HEIF, camera RAW, or one of Pillow's own formats.

One place for the worker (worker/images/formats.py decodes them) and the producer (the report's previews), so that
both take a file for the same kind. Pure byte checks: no decoder is imported here.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from imgq.contract import RAW_EXTENSIONS

HEIF = "HEIF"
RAW = "RAW"

HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
# ISO-BMFF major brands of HEVC-coded HEIF images and sequences (ISO/IEC 23008-12); mif1/msf1 are the
# generic ones iPhones and libheif also write. AVIF (avif, avis) is not among them: pillow-heif decodes only HEVC.

RAW_SIGNATURES = (b"IIRO", b"IIRS", b"MMOR", b"IIU\0", b"FUJIFILMCCD-RAW")
# Olympus ORF, Panasonic RW2 (and Leica RWL), Fujifilm RAF: their first bytes name them.
TIFF_SIGNATURES = (b"II*\0", b"MM\0*")
DNG_VERSION_TAG = 50706
MAX_IFD_ENTRIES = 1024  # read of IFD0 when looking for the DNG tag: 12 KiB at most
HEAD_BYTES = 32


def sniff(file: BinaryIO, name: str = "") -> str:
    """HEIF, RAW, or "" (Pillow's own formats decide) for the content of ``file`` (left at 0).

    ``name``: the file's name, which tells a TIFF-structured RAW without a mark of its own (NEF, ARW).
    """
    head = file.read(HEAD_BYTES)
    file.seek(0)
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"crx ":  # Canon CR3: ISO-BMFF too, but LibRaw's
            return RAW
        return HEIF if brand in HEIF_BRANDS else ""
    if head.startswith(RAW_SIGNATURES):
        return RAW
    if head.startswith(TIFF_SIGNATURES):
        named_raw = name.rpartition(".")[2].lower() in RAW_EXTENSIONS
        if named_raw or head[8:10] == b"CR" or _has_dng_tag(file, head):
            return RAW
    return ""


def _has_dng_tag(file: BinaryIO, head: bytes) -> bool:
    """Whether IFD0 of the TIFF in ``file`` holds the DNGVersion tag (two bounded reads; ``file`` left at 0)."""
    order = "<" if head[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack(order + "I", head[4:8])
        file.seek(offset)
        (count,) = struct.unpack(order + "H", file.read(2))
        entries = file.read(12 * min(count, MAX_IFD_ENTRIES))
    except (struct.error, OSError, ValueError):
        return False
    finally:
        file.seek(0)
    tags = (struct.unpack_from(order + "H", entries, at)[0] for at in range(0, len(entries) - 11, 12))
    return DNG_VERSION_TAG in tags


EXIF_ORIENTATION = 0x0112  # the EXIF tag of a picture's orientation

# LibRaw's ``flip`` (dcraw's encoding) as the EXIF orientation it came from: a RAW's preview is turned by it
# unless the preview carries an EXIF orientation of its own.
ORIENTATION_FOR_FLIP = {0: 1, 1: 2, 3: 3, 2: 4, 4: 5, 6: 6, 7: 7, 5: 8}


def open_in_libraw(raw, file: BinaryIO) -> None:
    """Open the file already checked (roots, type, size) in ``raw``, a rawpy.RawPy (rawpy is the caller's
    import: the worker's, or the report's where installed): by its descriptor's /proc path, so that the file
    LibRaw reads is the one checked, and LibRaw reads only what it needs; where /proc is missing, or the file has
    no descriptor (an s3:// object, held in memory), from the file object (read whole: at most
    IMGQ_MAX_FILE_BYTES)."""
    try:
        path = f"/proc/self/fd/{file.fileno()}"
    except (AttributeError, OSError):  # io.BytesIO's fileno raises io.UnsupportedOperation, an OSError
        path = ""
    if path and os.path.exists(path):
        raw.open_file(path)
    else:
        raw.open_buffer(file)
