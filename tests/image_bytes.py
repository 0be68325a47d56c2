"""Image files written byte by byte, for the decoder tests: the shapes Pillow will not write for us (an EXIF
block with a tag of the wrong type, a 2-bit or 16-bit RGB PNG with a colour key, a BMP with an alpha band)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# EXIF (TIFF) field types and the tags the tests use
BYTE, ASCII, SHORT, LONG, RATIONAL = 1, 2, 3, 4, 5
ORIENTATION, RESOLUTION_UNIT, X_RESOLUTION, EXIF_IFD, GPS_IFD = 0x0112, 0x0128, 0x011A, 0x8769, 0x8825
PACKING = {BYTE: "B", ASCII: "B", SHORT: "H", LONG: "I", RATIONAL: "I"}  # a RATIONAL is two LONGs


def exif_block(entries: list[tuple[int, int, tuple[int, ...]]], byte_order: str = "<") -> bytes:
    """An EXIF block ("Exif\\0\\0", a TIFF header, one IFD) as JPEG's APP1 segment, PNG's eXIf chunk and WebP's
    EXIF chunk hold it (Pillow's `exif=` takes it for all three). Each entry is (tag, type, values), the type
    written as given, so a tag can carry a type the standard does not allow: ResolutionUnit as RATIONAL
    (2, 1) instead of SHORT 2. Values longer than 4 bytes go after the IFD, pointed to."""
    header = (b"II*\x00" if byte_order == "<" else b"MM\x00*") + struct.pack(byte_order + "I", 8)
    after_ifd = 8 + 2 + 12 * len(entries) + 4
    fields, extra = struct.pack(byte_order + "H", len(entries)), b""
    for tag, type_, values in entries:
        payload = struct.pack(byte_order + PACKING[type_] * len(values), *values)
        count = len(values) // 2 if type_ == RATIONAL else len(values)
        fields += struct.pack(byte_order + "HHI", tag, type_, count)
        if len(payload) <= 4:
            fields += payload.ljust(4, b"\x00")
        else:
            fields += struct.pack(byte_order + "I", after_ifd + len(extra))
            extra += payload
    return b"Exif\x00\x00" + header + fields + struct.pack(byte_order + "I", 0) + extra


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, rows: list[bytes], bit_depth: int, colour_type: int, trns: bytes | None = None) -> bytes:
    """A PNG from already packed rows (each gets filter byte 0), for the depths Pillow does not write."""
    header = struct.pack(">IIBBBBB", width, len(rows), bit_depth, colour_type, 0, 0, 0)
    transparency = png_chunk(b"tRNS", trns) if trns is not None else b""
    data = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return (
        PNG_SIGNATURE + png_chunk(b"IHDR", header) + transparency + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")
    )


def two_bit_grey_png(values: np.ndarray, transparent: int) -> bytes:
    """2-bit grayscale (values 0..3, four pixels a byte, most significant first), `transparent` keyed by tRNS."""
    height, width = values.shape
    padded = np.zeros((height, -(-width // 4) * 4), np.uint8)
    padded[:, :width] = values
    quads = padded.reshape(height, -1, 4)
    packed = (quads[..., 0] << 6) | (quads[..., 1] << 4) | (quads[..., 2] << 2) | quads[..., 3]
    return raw_png(width, [row.tobytes() for row in packed], 2, 0, struct.pack(">H", transparent))


def sixteen_bit_rgb_png(values: np.ndarray, transparent: tuple[int, int, int]) -> bytes:
    """16-bit RGB from (height, width, 3) uint16 values, `transparent` (16-bit values) keyed by tRNS."""
    rows = [row.astype(">u2").tobytes() for row in values]
    return raw_png(values.shape[1], rows, 16, 2, struct.pack(">HHH", *transparent))


def bmp_with_alpha(image: Image.Image) -> bytes:
    """A 32-bit BMP with a BITMAPV4HEADER whose bit fields include an alpha mask: the BMP that carries alpha
    (Pillow writes 32-bit BMPs without the alpha mask, so their fourth byte is read as padding)."""
    width, height = image.size
    pixels = np.asarray(image.convert("RGBA"))[::-1, :, [2, 1, 0, 3]].tobytes()  # bottom-up rows, BGRA
    masks = struct.pack("<4I", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    info = struct.pack("<IiiHHIIiiII", 108, width, height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    info += masks + b"BGRs" + b"\x00" * 48  # colour space sRGB; endpoints and gamma unused
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + pixels
