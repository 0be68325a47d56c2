"""One user image file → CIFAR-10's 32×32 RGB uint8 pixels, or the reason it cannot be used.

The conversion, in order (the README states it too):

1. the file must decode as PNG, JPEG, WebP or BMP (whatever its extension says);
2. more than `MAX_PIXELS` pixels is refused from the header alone, before any pixel is decoded,
   so a decompression bomb never reaches memory; fewer than `MIN_SIDE` pixels a side is refused;
3. EXIF orientation is applied (a phone photo taken upright stays upright). EXIF is metadata: when it
   cannot be read, the pixels are kept as stored and `Converted.notes` says so;
4. palette, grayscale, 16-bit and CMYK images become RGB; transparency of every kind (an alpha band,
   a palette's transparent entries, a PNG colour key) is composited on white;
5. the centre square is cropped (CIFAR-10's images are square: squashing would distort shapes)
   and resized to 32×32 with Lanczos (anti-aliased, so large photos do not alias).

`convert_image` raises `ImageRejected` for every file that cannot become pixels, and nothing else:
whatever a decoder raises on one malformed file is turned into `ImageRejected` at one boundary there.
"""

from __future__ import annotations

import io
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cifarflow.data.archive import IMAGE_SHAPE

FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "BMP"}  # MPO: a phone's JPEG with a second picture inside
EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_PIXELS = 50_000_000  # 50 megapixels: larger than any camera photo a person labels by hand
MIN_SIDE = 8  # below this there is nothing left to classify
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
SIZE = IMAGE_SHAPE[:2]

ORIENTATION = 0x0112  # the EXIF tag; its values 1..8 name how the stored pixels must turn to be shown upright
TURN_UPRIGHT = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
STRAIGHT_ALPHA = {"La": "LA", "RGBa": "RGBA"}  # Pillow converts premultiplied alpha only to its straight twin
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
# Pillow reports a PNG colour key in the file's own bit depth but decodes those pixels to 0..255:
# the file's rawmode → (multiplier, divisor) that brings the key to the decoded scale
KEY_SCALE = {"L;2": (85, 1), "L;4": (17, 1), "RGB;16B": (1, 256)}
LONGEST_DETAIL = 160  # characters of a decoder's message kept in a reason or a note


@dataclass(frozen=True)
class Converted:
    pixels: np.ndarray  # (32, 32, 3) uint8
    original_size: tuple[int, int]  # (width, height) as stored in the file
    original_format: str
    notes: tuple[str, ...] = ()  # what was decoded differently from the file's wish (unreadable EXIF), for reports


class ImageRejected(ValueError):
    """A file that cannot become a training image; the message is the reason shown to people."""


def describe(error: BaseException) -> str:
    """`struct.error: required argument is not an integer`: the type (module-qualified unless built in, since
    `struct.error` alone would read `error`) and the message, shortened for a report."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    text = f"{name}: {error}" if str(error) else name
    return text if len(text) <= LONGEST_DETAIL else text[: LONGEST_DETAIL - 1] + "…"


def open_checked(source: Path | bytes) -> Image.Image:
    """Open a file (or an upload's bytes) lazily, header only, and refuse it early: empty, not an image,
    wrong format, absurd size. Raises ImageRejected for these; a header so malformed that Pillow raises
    something else is left to `convert_image`'s boundary."""
    if isinstance(source, bytes | bytearray):
        empty, source = len(source) == 0, io.BytesIO(source)
    else:
        try:
            empty = source.stat().st_size == 0
        except OSError as error:  # gone or unreadable since the scan (a sync tool renaming a temporary file)
            raise ImageRejected(f"could not be read: {error.strerror}") from None
    if empty:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(f"too large to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (no known image format inside, whatever the extension)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # a header cut short or corrupt
        raise ImageRejected(f"does not decode: {describe(error)}") from None
    if image.format not in FORMATS:
        image.close()
        raise ImageRejected(f"unsupported image format {image.format}; use PNG, JPEG, WebP or BMP")
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageRejected(f"too large: {width}×{height} pixels is over the {MAX_PIXELS:,}-pixel limit")
    if min(width, height) < MIN_SIDE:
        image.close()
        raise ImageRejected(f"too small: {width}×{height} pixels (at least {MIN_SIDE} a side)")
    return image


def read_orientation(image: Image.Image) -> tuple[Image.Transpose | None, str | None]:
    """How to turn the stored pixels upright (None: as they are), and a note when the EXIF says nothing usable.

    Only the orientation tag is read: another malformed tag (a ResolutionUnit stored as a RATIONAL) does
    not stop a readable orientation from being applied. Pillow's `ImageOps.exif_transpose` is not used
    because it also rewrites the whole EXIF block, which raises on such tags. Never raises: EXIF that
    cannot be parsed leaves the pixels as stored, with a note saying why."""
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception as error:  # any parser fault in a metadata block: the pixels are still good
        return None, f"EXIF orientation unreadable ({describe(error)}): pixels as stored"
    if isinstance(value, numbers.Real) and value in TURN_UPRIGHT:  # 6.0 from a RATIONAL tag reads as 6
        return TURN_UPRIGHT[value], None
    shown = repr(value)[:40]
    return None, f"EXIF orientation {shown} is not one of 1..8: pixels as stored"


def colour_key(image: Image.Image) -> int | tuple[int, ...] | None:
    """The colour a PNG's tRNS chunk marks transparent on a 1-bit, grayscale, 16-bit grayscale or RGB image,
    in the scale of the pixels Pillow decodes; None when there is none (a palette's transparency and alpha
    bands come through Pillow's own conversion). Call it before `load()`: only the undecoded tile tells the
    file's bit depth, and Pillow reports the key in that depth (0..3 in a 2-bit PNG) while it decodes the
    pixels to 0..255. A 16-bit RGB key matches on its top 8 bits, the only ones Pillow keeps."""
    key = image.info.get("transparency")
    if key is None or image.mode not in ("1", "L", "I;16", "RGB"):
        return None
    rawmode = image.tile[0].args if image.tile else None
    multiplier, divisor = KEY_SCALE.get(rawmode, (1, 1)) if isinstance(rawmode, str) else (1, 1)
    if isinstance(key, tuple):
        return tuple(value * multiplier // divisor for value in key)
    return key * multiplier // divisor


def key_alpha(image: Image.Image, key: int | tuple[int, ...]) -> Image.Image:
    """An L alpha band for a colour-keyed image: 0 where a pixel equals the key (every channel), 255 elsewhere.
    Compared on the decoded values, so a 16-bit grayscale key is matched before the values are scaled."""
    values = np.asarray(image)
    if values.dtype == bool:  # mode "1": Pillow reports its key as 0 or 255
        values = values.astype(np.uint8) * 255
    matches = values == np.asarray(key, dtype=np.int64)
    if matches.ndim == 3:
        matches = matches.all(axis=-1)
    return Image.fromarray(np.where(matches, 0, 255).astype(np.uint8), "L")


def to_8_bit(image: Image.Image) -> Image.Image:
    """16/32-bit grayscale → L, keeping the top 8 bits' worth (a 32-bit image within 0..255 is kept as is)."""
    array = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def resizable(image: Image.Image, key: int | tuple[int, ...] | None = None) -> Image.Image:
    """The stored pixels as L, LA, RGB or RGBA (straight alpha): every kind of transparency as an alpha band
    (RGBA, LA, PA, La, RGBa; a palette's transparent entries, as a tRNS index or alpha bytes or an RGBA
    palette; a colour key, `key` from `colour_key`: a tRNS colour on a 1-bit, grayscale, 16-bit or RGB image).
    Pillow resizes LA and RGBA with premultiplied alpha, so transparent pixels never bleed their colour;
    a mode already resizable is returned as it is, not copied (a 49-megapixel RGBA image is 196 MB)."""
    alpha = key_alpha(image, key) if key is not None else None
    if image.mode in SIXTEEN_BIT_MODES:
        image = to_8_bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    if alpha is not None:
        image = image.convert("L" if image.mode in ("1", "L") else "RGB")
        image.putalpha(alpha)
    if image.mode in STRAIGHT_ALPHA:
        image = image.convert(STRAIGHT_ALPHA[image.mode])
    return image if image.mode in ("L", "LA", "RGB", "RGBA") else image.convert("RGB")


def on_white(image: Image.Image) -> Image.Image:
    """L, LA, RGB or RGBA → RGB, an alpha band composited on white."""
    if image.mode in ("LA", "RGBA"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def decode(source: Path | bytes) -> Converted:
    """The conversion itself (see the module docstring), without the boundary: it may raise whatever Pillow
    raises on a malformed file."""
    image = open_checked(source)
    try:
        original_size, original_format = image.size, image.format
        if image.format == "JPEG":
            image.draft("RGB", (SIZE[0] * 4, SIZE[1] * 4))  # decode large JPEGs at 1/2…1/8 scale: much faster
        key = colour_key(image)
        image.load()
        turn, note = read_orientation(image)
        # shrink first, then composite and turn the 32×32 result: composite-then-resize is the same
        # arithmetic (Lanczos is linear; Pillow resizes alpha premultiplied), without full-size copies
        stored = resizable(image, key)
        small = stored.resize(SIZE, Image.Resampling.LANCZOS, box=square_box(*stored.size), reducing_gap=3.0)
        del stored
        upright = small.transpose(turn) if turn is not None else small
        pixels = np.asarray(on_white(upright), dtype=np.uint8).copy()
    finally:
        image.close()  # the decoded pixels are released now, not when the garbage collector gets to them
    return Converted(pixels, original_size, original_format, (note,) if note else ())


def convert_image(source: Path | bytes) -> Converted:
    """Decode and convert one file, or an upload's bytes (see the module docstring).

    Raises ImageRejected, and only ImageRejected, for every file that cannot become pixels, with the reason.
    This is the one boundary that makes it so: Pillow's decoders raise far more than their documented
    OSError on malformed input (struct.error, AttributeError, IndexError, ZeroDivisionError, MemoryError…),
    and one bad file must be one rejection, not a failed request or flow. KeyboardInterrupt and SystemExit
    are not Exceptions and pass through."""
    try:
        return decode(source)
    except ImageRejected:
        raise
    except Exception as error:  # the boundary: see the docstring
        # chained, unlike the expected rejections: whoever logs it sees where in Pillow it came from
        raise ImageRejected(f"does not decode: {describe(error)}") from error
