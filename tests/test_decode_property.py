"""Every file gets its own verdict: `convert_image` returns pixels or raises `ImageRejected`, never anything else.

- The property: real PNG, JPEG (EXIF blocks included, the malformed one below among them), WebP and BMP bytes,
  mutated (bits flipped, bytes set, runs inserted and deleted, truncation, header integers overwritten with
  edge values, PNG chunks dropped, repeated, resized or their lengths swapped, EXIF entries given other tags,
  types, counts and values, PNG checksums recomputed so the damage gets past them) either convert to
  (32, 32, 3) uint8 pixels or are rejected with ImageRejected.
- EXIF is metadata: a JPEG whose EXIF stores ResolutionUnit as a RATIONAL (Pillow's `exif_transpose`
  raises struct.error re-writing it) still has its readable orientation applied; EXIF that cannot be read
  at all leaves the pixels as stored, with a note.
- The boundary: whatever a decoder raises (struct.error, MemoryError…) becomes ImageRejected with its type
  in the reason; KeyboardInterrupt and SystemExit pass through.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

import cifarflow.intake.images as images
from cifarflow.intake.images import ImageRejected, convert_image
from tests.image_bytes import (
    ASCII,
    EXIF_IFD,
    GPS_IFD,
    LONG,
    ORIENTATION,
    PNG_SIGNATURE,
    RATIONAL,
    RESOLUTION_UNIT,
    SHORT,
    X_RESOLUTION,
    bmp_with_alpha,
    exif_block,
    sixteen_bit_rgb_png,
    two_bit_grey_png,
)

EXAMPLES = 600  # about 25 mutated files per seed; the whole property runs in a few seconds

# Orientation 6 (readable) beside ResolutionUnit stored as RATIONAL 2/1 instead of SHORT 2: the reported file
MALFORMED_UNIT = [(ORIENTATION, SHORT, (6,)), (RESOLUTION_UNIT, RATIONAL, (2, 1))]
# Sub-IFD pointers back at IFD0 and a resolution with a zero denominator: more for the mutations to work on
TANGLED = [(ORIENTATION, SHORT, (8,)), (X_RESOLUTION, RATIONAL, (72, 0)), (EXIF_IFD, LONG, (8,)), (GPS_IFD, LONG, (8,))]


# --------------------------------------------------------------------------------------------- seeds


def scene(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A small smooth picture (gradients and a square): compresses well, so the headers are a large share
    of each file and the mutations reach them often."""
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    rgb[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (200, 30, 60)
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(x.astype(np.uint8)))
    return image if mode in ("RGB", "RGBA") else image.convert(mode)


def encode(image: Image.Image, format_: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format_, **options)
    return buffer.getvalue()


@functools.cache
def seeds() -> dict[str, bytes]:
    """One real file of each shape the decoders take apart differently."""
    palette = scene().quantize(16)
    grey16 = Image.fromarray((np.asarray(scene("L"), np.uint16) * 257).astype(np.uint16))
    rgb16 = np.asarray(scene(), np.uint16) * 257
    return {
        "png rgb": encode(scene(), "PNG"),
        "png rgba": encode(scene("RGBA"), "PNG"),
        "png la": encode(scene("LA"), "PNG"),
        "png palette, transparent index": encode(palette, "PNG", transparency=0),
        "png palette, alpha bytes": encode(palette, "PNG", transparency=bytes(range(0, 256, 16))),
        "png grey, colour key": encode(scene("L"), "PNG", transparency=0),
        "png 16-bit grey, colour key": encode(grey16, "PNG", transparency=0),
        "png 2-bit grey, colour key": two_bit_grey_png(np.asarray(scene("L")) >> 6, transparent=1),
        "png 16-bit rgb, colour key": sixteen_bit_rgb_png(rgb16, transparent=(0, 0, 0)),
        "png 1-bit": encode(scene("1"), "PNG", transparency=0),
        "png with exif": encode(scene(), "PNG", exif=exif_block(MALFORMED_UNIT)),
        "jpeg": encode(scene(), "JPEG", quality=80),
        "jpeg exif, malformed unit": encode(scene(), "JPEG", exif=exif_block(MALFORMED_UNIT)),
        "jpeg exif, malformed unit, big-endian": encode(scene(), "JPEG", exif=exif_block(MALFORMED_UNIT, ">")),
        "jpeg exif, tangled": encode(scene(), "JPEG", exif=exif_block(TANGLED)),
        "jpeg progressive": encode(scene(), "JPEG", progressive=True),
        "jpeg cmyk": encode(scene("CMYK"), "JPEG"),
        "jpeg grey": encode(scene("L"), "JPEG"),
        "mpo": encode(scene(), "MPO", save_all=True, append_images=[scene("L").convert("RGB")]),
        "webp lossy, exif": encode(scene(), "WEBP", quality=50, exif=exif_block(MALFORMED_UNIT)),
        "webp lossless rgba": encode(scene("RGBA"), "WEBP", lossless=True),
        "bmp rgb": encode(scene(), "BMP"),
        "bmp palette": encode(scene().quantize(16), "BMP"),
        "bmp 1-bit": encode(scene("1"), "BMP"),
        "bmp alpha": bmp_with_alpha(scene("RGBA")),
    }


# ----------------------------------------------------------------------------------------- mutations


def png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start, data length) of each whole chunk of a PNG, as far as its lengths can be followed."""
    chunks, at = [], len(PNG_SIGNATURE)
    while data.startswith(PNG_SIGNATURE) and at + 12 <= len(data):
        length = struct.unpack_from(">I", data, at)[0]
        if at + 12 + length > len(data):
            break
        chunks.append((at, length))
        at += 12 + length
    return chunks


def fix_png_checksums(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so a mutation inside a chunk reaches the parser behind the checksum."""
    fixed = bytearray(data)
    for at, length in png_chunks(data):
        struct.pack_into(">I", fixed, at + 8 + length, zlib.crc32(fixed[at + 4 : at + 8 + length]))
    return bytes(fixed)


def mutate_png_chunk(data: bytes, index: int, action: str, number: int) -> bytes:
    chunks = png_chunks(data)
    if not chunks:
        return data
    at, length = chunks[index % len(chunks)]
    whole = data[at : at + 12 + length]
    if action == "drop":
        return data[:at] + data[at + 12 + length :]
    if action == "repeat":
        return data[:at] + whole + data[at:]
    if action == "length":
        return data[:at] + struct.pack(">I", number) + data[at + 4 :]
    other_at, other_length = chunks[number % len(chunks)]  # "swap lengths"
    swapped = bytearray(data)
    struct.pack_into(">I", swapped, at, other_length)
    struct.pack_into(">I", swapped, other_at, length)
    return bytes(swapped)


def mutate_exif_entry(data: bytes, index: int, field: str, number: int) -> bytes:
    """Rewrite one field of one IFD0 entry of the first EXIF (TIFF) block in the file."""
    tiff = max(data.find(b"II*\x00"), data.find(b"MM\x00*"))
    if tiff < 0 or tiff + 10 > len(data):
        return data
    order = "<" if data[tiff] == ord("I") else ">"
    ifd = tiff + struct.unpack_from(order + "I", data, tiff + 4)[0]
    if ifd + 2 > len(data):
        return data
    count = struct.unpack_from(order + "H", data, ifd)[0]
    entry = ifd + 2 + 12 * (index % max(count, 1))
    offset, packing = {"tag": (0, "H"), "type": (2, "H"), "count": (4, "I"), "value": (8, "I")}[field]
    if entry + 12 > len(data):
        return data
    mutated = bytearray(data)
    struct.pack_into(order + packing, mutated, entry + offset, number % (1 << (8 * struct.calcsize(packing))))
    return bytes(mutated)


def apply(data: bytes, mutation: tuple) -> bytes:
    """One mutation; positions wrap around the file's length, so every drawn mutation lands somewhere."""
    kind, *arguments = mutation
    if kind in ("png chunk", "exif entry"):
        return (mutate_png_chunk if kind == "png chunk" else mutate_exif_entry)(data, *arguments)
    position = arguments[0] % (len(data) + 1)
    if kind == "truncate":
        return data[:position]
    if kind == "insert":
        return data[:position] + arguments[1] + data[position:]
    if kind == "delete":
        return data[:position] + data[position + arguments[1] :]
    if position == len(data):
        return data
    if kind == "flip":
        return data[:position] + bytes([data[position] ^ (1 << arguments[1])]) + data[position + 1 :]
    if kind == "set":
        return data[:position] + bytes([arguments[1]]) + data[position + 1 :]
    packing, number = arguments[1], arguments[2]  # "integer": a header field overwritten
    size = struct.calcsize(packing)
    field = struct.pack(packing, number % (1 << (8 * size)))
    return data[:position] + field[: len(data) - position] + data[position + size :]


EDGE_VALUES = [0, 1, 2, 5, 7, 8, 9, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]
field_values = st.one_of(st.sampled_from(EDGE_VALUES), st.integers(0, 0xFFFFFFFF))
positions = st.one_of(st.integers(0, 63), st.integers(0, 1 << 16))  # the headers, or anywhere
mutations = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(0, 7)),
    st.tuples(st.just("set"), positions, st.integers(0, 255)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), positions, st.integers(1, 64)),
    st.tuples(st.just("integer"), positions, st.sampled_from(["<H", ">H", "<I", ">I"]), field_values),
    st.tuples(
        st.just("png chunk"),
        st.integers(0, 15),
        st.sampled_from(["drop", "repeat", "length", "swap lengths"]),
        field_values,
    ),
    st.tuples(
        st.just("exif entry"), st.integers(0, 15), st.sampled_from(["tag", "type", "count", "value"]), field_values
    ),
)


# ------------------------------------------------------------------------------------------ the property


@pytest.mark.filterwarnings("ignore::UserWarning")  # as in production: Pillow warns about corrupt EXIF and goes on
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run and machine: a CI failure reproduces locally
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.sampled_from(sorted(seeds())),
    changes=st.lists(mutations, min_size=1, max_size=4),
    fix_checksums=st.booleans(),
)
def test_any_mutated_file_converts_or_is_rejected(seed, changes, fix_checksums):
    data = seeds()[seed]
    for change in changes:
        data = apply(data, change)
    if fix_checksums:
        data = fix_png_checksums(data)
    try:
        converted = convert_image(data, 32)
    except ImageRejected as rejected:
        assert str(rejected)  # a reason people can read
        return
    assert converted.pixels.shape == (32, 32, 3)
    assert converted.pixels.dtype == np.uint8
    assert all(isinstance(note, str) for note in converted.notes)


@pytest.mark.parametrize("name", sorted(seeds()))
def test_every_seed_converts_unmutated(name):
    """The property starts from files that decode, so each rejection it sees is the mutation's doing."""
    assert convert_image(seeds()[name], 32).pixels.shape == (32, 32, 3)


# ------------------------------------------------------------------------------------------------ EXIF


def halves(top=(255, 0, 0), bottom=(0, 0, 255)) -> Image.Image:
    image = Image.new("RGB", (64, 64), top)
    image.paste(bottom, (0, 32, 64, 64))
    return image


@pytest.mark.parametrize("byte_order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_readable_orientation_is_applied_beside_a_malformed_tag(byte_order):
    malformed = encode(halves(), "JPEG", quality=95, exif=exif_block(MALFORMED_UNIT, byte_order))
    clean = encode(halves(), "JPEG", quality=95, exif=exif_block([(ORIENTATION, SHORT, (6,))], byte_order))
    with Image.open(io.BytesIO(malformed)) as opened:
        exif = opened.getexif()
        assert exif[ORIENTATION] == 6 and not isinstance(exif[RESOLUTION_UNIT], int)  # the reported shape
    converted = convert_image(malformed, 32)
    assert converted.notes == ()  # the orientation was read: nothing to report
    np.testing.assert_array_equal(converted.pixels, convert_image(clean, 32).pixels)
    assert converted.pixels[:, 20:, 0].min() > 240  # orientation 6 turns the red top to the right


def test_orientation_stored_as_a_rational_is_read_as_its_value():
    data = encode(halves(), "JPEG", quality=95, exif=exif_block([(ORIENTATION, RATIONAL, (3, 1))]))
    converted = convert_image(data, 32)
    assert converted.notes == ()
    assert converted.pixels[20:, :, 0].min() > 240  # orientation 3: the red top is at the bottom


def test_exif_that_cannot_be_read_leaves_pixels_as_stored_with_a_note():
    plain = encode(halves(), "PNG")
    broken = encode(halves(), "PNG", exif=b"XX*\x00\x08\x00\x00\x00")  # an eXIf chunk that is not TIFF
    converted = convert_image(broken, 32)
    np.testing.assert_array_equal(converted.pixels, convert_image(plain, 32).pixels)
    assert len(converted.notes) == 1
    assert converted.notes[0].startswith("EXIF orientation unreadable (SyntaxError: not a TIFF file")
    assert converted.notes[0].endswith(": pixels as stored")


@pytest.mark.parametrize(
    ("entry", "shown"), [((ORIENTATION, SHORT, (9,)), "9"), ((ORIENTATION, ASCII, (54, 0)), "'6'")], ids=["9", "text"]
)
def test_orientation_outside_1_to_8_leaves_pixels_as_stored_with_a_note(entry, shown):
    plain = encode(halves(), "JPEG", quality=95)
    data = encode(halves(), "JPEG", quality=95, exif=exif_block([entry]))
    converted = convert_image(data, 32)
    np.testing.assert_array_equal(converted.pixels, convert_image(plain, 32).pixels)
    assert converted.notes == (f"EXIF orientation {shown} is not one of 1..8: pixels as stored",)


def test_image_with_clean_exif_has_no_notes():
    data = encode(halves(), "JPEG", exif=exif_block([(ORIENTATION, SHORT, (1,))]))
    assert convert_image(data, 32).notes == ()


# -------------------------------------------------------------------------------------------- boundary


UNEXPECTED = [
    struct.error("required argument is not an integer"),
    AttributeError("'NoneType' object has no attribute 'read'"),
    TypeError("unsupported operand"),
    IndexError("index out of range"),
    KeyError(274),
    ZeroDivisionError("division by zero"),
    RuntimeError("decoder failed"),
    Image.DecompressionBombError("too many pixels"),
    MemoryError(),
    AssertionError(),
    UserWarning("Corrupt EXIF data"),  # a warning a caller's filter turned into an error
]


@pytest.mark.parametrize("stage", ["open", "load", "convert"])
@pytest.mark.parametrize("error", UNEXPECTED, ids=lambda error: type(error).__name__)
def test_whatever_a_decoder_raises_becomes_image_rejected(monkeypatch, stage, error):
    def fail(*args, **kwargs):
        raise error

    target = {"open": (Image, "open"), "load": (ImageFile.ImageFile, "load"), "convert": (images, "resizable")}[stage]
    monkeypatch.setattr(*target, fail)
    with pytest.raises(ImageRejected) as rejected:
        convert_image(encode(halves(), "PNG"), 32)
    if stage == "open" and isinstance(error, Image.DecompressionBombError):  # refused by name before the boundary
        assert str(rejected.value) == "too large to decode safely (too many pixels)"
    else:
        assert str(rejected.value) == f"does not decode: {images.describe(error)}"


@pytest.mark.parametrize("error", UNEXPECTED, ids=lambda error: type(error).__name__)
def test_whatever_the_exif_parser_raises_becomes_a_note(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(Image.Image, "getexif", fail)
    converted = convert_image(encode(halves(), "PNG"), 32)
    assert converted.pixels.shape == (32, 32, 3)
    assert converted.notes == (f"EXIF orientation unreadable ({images.describe(error)}): pixels as stored",)


def test_unexpected_error_names_its_module_qualified_type():
    assert images.describe(struct.error("bad")) == "struct.error: bad"
    assert images.describe(MemoryError()) == "MemoryError"
    assert images.describe(Image.DecompressionBombError("x")) == "PIL.Image.DecompressionBombError: x"
    assert len(images.describe(ValueError("x" * 1000))) == images.LONGEST_DETAIL


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_interruptions_are_not_turned_into_rejections(monkeypatch, interruption):
    def interrupt(*args, **kwargs):
        raise interruption

    monkeypatch.setattr(images, "resizable", interrupt)
    with pytest.raises(interruption):
        convert_image(encode(halves(), "PNG"), 32)
