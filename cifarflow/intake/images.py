"""One user image file → CIFAR-10's 32×32 RGB uint8 pixels, or the reason it cannot be used.

The conversion, in order (the README states it too):

1. the file must decode as PNG, JPEG, WebP or BMP (whatever its extension says);
2. more than `MAX_PIXELS` pixels is refused from the header alone, before any pixel is decoded,
   so a decompression bomb never reaches memory; fewer than `MIN_SIDE` pixels a side is refused;
3. EXIF orientation is applied (a phone photo taken upright stays upright);
4. palette, grayscale, 16-bit and CMYK images become RGB; transparency is composited on white;
5. the centre square is cropped (CIFAR-10's images are square: squashing would distort shapes)
   and resized to 32×32 with Lanczos (anti-aliased, so large photos do not alias).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarflow.data.archive import IMAGE_SHAPE

FORMATS = {"PNG", "JPEG", "MPO", "WEBP", "BMP"}  # MPO: a phone's JPEG with a second picture inside
EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_PIXELS = 50_000_000  # 50 megapixels: larger than any camera photo a person labels by hand
MIN_SIDE = 8  # below this there is nothing left to classify
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
SIZE = IMAGE_SHAPE[:2]


@dataclass(frozen=True)
class Converted:
    pixels: np.ndarray  # (32, 32, 3) uint8
    original_size: tuple[int, int]  # (width, height) as stored in the file
    original_format: str


class ImageRejected(ValueError):
    """A file that cannot become a training image; the message is the reason shown to people."""


def open_checked(source: Path | bytes) -> Image.Image:
    """Open a file (or an upload's bytes) lazily, header only, and refuse it early: empty, not an image,
    wrong format, absurd size."""
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
        raise ImageRejected(f"does not decode: {error}") from None
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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode → RGB; transparency (RGBA, LA, palette with a transparent index) composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: keep the top 8 bits' worth
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def convert_image(source: Path | bytes) -> Converted:
    """Decode and convert one file, or an upload's bytes (see the module docstring); ImageRejected says why not."""
    image = open_checked(source)
    try:
        original_size, original_format = image.size, image.format
        if image.format == "JPEG":
            image.draft("RGB", (SIZE[0] * 4, SIZE[1] * 4))  # decode large JPEGs at 1/2…1/8 scale: much faster
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = to_rgb(image)
        small = rgb.resize(SIZE, Image.Resampling.LANCZOS, box=square_box(*rgb.size), reducing_gap=3.0)
        return Converted(np.asarray(small, dtype=np.uint8).copy(), original_size, original_format)
    except ImageRejected:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        # truncated or corrupt data surfaces only when pixels are decoded
        raise ImageRejected(f"does not decode: {error}") from None
    finally:
        image.close()
