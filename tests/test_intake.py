"""Unit tests for the image-intake library (`cifarflow.intake`): no Prefect, only files in tmp_path.

Covered, module by module:

- images: every supported format and mode becomes (32, 32, 3) uint8 RGB; EXIF orientation is applied;
  non-square images are centre-cropped; every rejection reason, including a decompression bomb refused
  from its header alone;
- inbox: which files become candidates (class folders, case-insensitive, sub-folders) and which are
  rejected and why; the inbox is only read;
- leaks: exact and near copies of test images (re-encoded, resized, shifted, mirrored) are found, other
  images are not;
- screen: every inbox file ends up accepted, duplicate or rejected exactly once; the accepted batch is a
  table in the ingest schema;
- summary: summary.json, report.md and the thumbnail grid.
"""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarflow.data.shards import pixel_digest, shard_schema
from cifarflow.intake.batch_report import build_summary, write_summary
from cifarflow.intake.images import (
    FORMATS,
    MAX_PIXELS,
    MIN_SIDE,
    ImageRejected,
    convert_image,
    format_names,
    open_checked,
    resize_pixels,
)
from cifarflow.intake.screen import (
    NEAR_RMS,
    Geometry,
    LeakIndex,
    Reference,
    Screening,
    batch_table,
    scan_inbox,
    screen_inbox,
)
from cifarflow.markdown import escape, join_wrapped
from tests.markdown_check import inline_tags, table_cells, wrapped_lines
from tests.synthetic import CLASSES

MAX_SHIFT = Geometry.of(32).shifts[-1]  # the leak check's largest shift at 32 px

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# --------------------------------------------------------------------------------------------- helpers


def solid(size: tuple[int, int], colour, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def halves(size: tuple[int, int], top, bottom) -> Image.Image:
    """Top half one colour, bottom half another."""
    width, height = size
    image = Image.new("RGB", size, top)
    image.paste(bottom, (0, height // 2, width, height))
    return image


def noisy(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Random RGB noise: compresses badly, so half of its file is surely not decodable."""
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def smooth_images(count: int, seed: int) -> np.ndarray:
    """(count, 32, 32, 3) uint8 'natural-looking' images: random 4×4 colour grids upscaled bilinearly plus a
    little noise. Smooth like photos (so resampling and JPEG barely change them) and far apart from each other."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 32, 32, 3), np.uint8)
    for i in range(count):
        grid = Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8))
        base = np.asarray(grid.resize((32, 32), Image.Resampling.BILINEAR), np.float64)
        images[i] = np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)
    return images


def save(image: Image.Image | np.ndarray, path: Path, **options) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def resize_roundtrip(pixels: np.ndarray, side: int) -> np.ndarray:
    up = Image.fromarray(pixels).resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(up.resize((32, 32), Image.Resampling.LANCZOS))


def shifted(pixels: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by (dy, dx) pixels, filling the uncovered edge by repeating the border (no wrap-around)."""
    pad = max(abs(dy), abs(dx))
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[pad - dy : pad - dy + 32, pad - dx : pad - dx + 32]


def huge_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit all-black PNG of width × height pixels, written row by row through zlib so neither the
    pixels nor the raw data is ever held in memory: a few kilobytes claiming hundreds of megapixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor, compressed = zlib.compressobj(9), []
    for _ in range(height):
        compressed.append(compressor.compress(row))
    compressed.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(compressed)) + chunk(b"IEND", b"")
    )
    return path


def mean_colour(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, 3).mean(axis=0)


def assert_close(pixels: np.ndarray, colour, tolerance: float = 3) -> None:
    """Every pixel within `tolerance` of `colour` (lossy formats move colours a little)."""
    difference = np.abs(pixels.astype(np.int16) - np.array(colour, np.int16))
    assert difference.max() <= tolerance, f"max difference {difference.max()} from {colour}"


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


# ---------------------------------------------------------------------------- images: formats and modes


@pytest.mark.parametrize(
    ("suffix", "options"),
    [(".png", {}), (".jpg", {"quality": 95}), (".webp", {"lossless": True}), (".bmp", {})],
    ids=["png", "jpeg", "webp", "bmp"],
)
def test_every_supported_format_converts_to_32x32_rgb_uint8(tmp_path, suffix, options):
    path = save(solid((48, 48), GREEN), tmp_path / f"green{suffix}", **options)
    converted = convert_image(path, 32)
    assert converted.pixels.shape == (32, 32, 3)
    assert converted.pixels.dtype == np.uint8
    assert converted.original_size == (48, 48)
    assert converted.original_format == {".jpg": "JPEG"}.get(suffix, suffix[1:].upper())
    assert_close(converted.pixels, GREEN, tolerance=2)


def test_format_is_read_from_content_not_extension(tmp_path):
    path = save(solid((40, 40), BLUE), tmp_path / "actually_a_jpeg.png", format="JPEG", quality=95)
    converted = convert_image(path, 32)
    assert converted.original_format == "JPEG"
    assert_close(converted.pixels, BLUE)


def test_grayscale_becomes_equal_rgb_channels(tmp_path):
    path = save(solid((40, 40), 100, "L"), tmp_path / "gray.png")
    assert_close(convert_image(path, 32).pixels, (100, 100, 100), tolerance=0)


def test_bilevel_image_converts(tmp_path):
    image = Image.new("1", (40, 40), 0)
    image.paste(1, (0, 0, 40, 20))
    pixels = convert_image(save(image, tmp_path / "bilevel.png"), 32).pixels
    assert_close(pixels[:14], WHITE, tolerance=0)
    assert_close(pixels[18:], (0, 0, 0), tolerance=0)


def test_palette_image_keeps_its_colours(tmp_path):
    image = halves((40, 40), RED, BLUE).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    path = save(image, tmp_path / "palette.png")
    assert Image.open(path).mode == "P"
    pixels = convert_image(path, 32).pixels
    assert_close(pixels[:14], RED, tolerance=0)
    assert_close(pixels[18:], BLUE, tolerance=0)


def test_palette_transparent_index_is_composited_on_white(tmp_path):
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * (256 - 2) * 3)  # index 0 black (transparent), 1 red
    image.paste(1, (0, 20, 40, 40))
    path = save(image, tmp_path / "palette_transparent.png", transparency=0)
    pixels = convert_image(path, 32).pixels
    assert_close(pixels[:14], WHITE, tolerance=0)  # the transparent index's black must not show
    assert_close(pixels[18:], RED, tolerance=0)


@pytest.mark.parametrize(("suffix", "options"), [(".png", {}), (".webp", {"lossless": True})], ids=["png", "webp"])
def test_fully_transparent_rgba_region_becomes_white(tmp_path, suffix, options):
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent black on top
    image.paste((*RED, 255), (0, 20, 40, 40))  # opaque red below
    pixels = convert_image(save(image, tmp_path / f"rgba{suffix}", **options), 32).pixels
    assert_close(pixels[:14], WHITE, tolerance=0)
    assert_close(pixels[18:], RED, tolerance=0)


def test_half_transparent_rgba_is_blended_with_white(tmp_path):
    pixels = convert_image(save(solid((40, 40), (0, 0, 0, 128), "RGBA"), tmp_path / "half.png"), 32).pixels
    assert_close(pixels, (127, 127, 127), tolerance=1)


def test_la_transparent_region_becomes_white(tmp_path):
    image = Image.new("LA", (40, 40), (0, 0))
    image.paste((50, 255), (0, 20, 40, 40))
    path = save(image, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    pixels = convert_image(path, 32).pixels
    assert_close(pixels[:14], WHITE, tolerance=0)
    assert_close(pixels[18:], (50, 50, 50), tolerance=0)


def test_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    white = save(Image.fromarray(np.full((40, 40), 65535, np.uint16)), tmp_path / "white16.png")
    mid = save(Image.fromarray(np.full((40, 40), 32896, np.uint16)), tmp_path / "mid16.png")  # 128 × 257
    assert Image.open(white).mode == "I;16"
    assert_close(convert_image(white, 32).pixels, WHITE, tolerance=0)
    assert_close(convert_image(mid, 32).pixels, (128, 128, 128), tolerance=0)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = save(solid((40, 40), (0, 255, 255, 0), "CMYK"), tmp_path / "cmyk.jpg", quality=95)  # CMYK red
    assert Image.open(path).mode == "CMYK"
    assert_close(convert_image(path, 32).pixels, RED, tolerance=3)


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (9, 9), (MIN_SIDE, MIN_SIDE), (1000, 8)])
def test_any_size_becomes_32x32(tmp_path, size):
    converted = convert_image(save(noisy(size), tmp_path / "any.png"), 32)
    assert converted.pixels.shape == (32, 32, 3)
    assert converted.original_size == size


@pytest.mark.parametrize("side", [8, 48, 64, 200])
def test_the_side_asked_for_is_the_side_given(tmp_path, side):
    """The data set's image size, any of them: a wide photo's centre square at side × side, upscaled if need be."""
    image = Image.new("RGB", (150, 100), RED)
    image.paste(BLUE, (25, 0, 125, 100))  # the centre square
    pixels = convert_image(save(image, tmp_path / "wide.jpg", quality=95), side).pixels
    assert pixels.shape == (side, side, 3) and pixels.dtype == np.uint8
    assert_close(pixels[side // 4 : -side // 4, side // 4 : -side // 4], BLUE, tolerance=6)


def test_arrays_and_files_are_resized_by_one_rule(tmp_path):
    """`resize_pixels` (an archive's decoded images at another size) gives exactly what a file's decode gives."""
    pixels = np.asarray(noisy((40, 30), seed=3))
    path = save(pixels, tmp_path / "a.png")
    for side in (16, 64):
        np.testing.assert_array_equal(resize_pixels(pixels, side), convert_image(path, side).pixels)
    np.testing.assert_array_equal(resize_pixels(pixels[:30, :30], 30), pixels[:30, :30])  # already that size


def test_gif_tiff_and_apng_are_accepted_first_frame_first(tmp_path):
    red, blue = solid((40, 30), RED), solid((40, 30), BLUE)
    files = {
        "anim.gif": {"save_all": True, "append_images": [blue]},
        "anim.png": {"save_all": True, "append_images": [blue]},  # an APNG: a PNG with more frames
        "pages.tiff": {"save_all": True, "append_images": [blue]},
        "plain.tif": {},
    }
    for name, options in files.items():
        converted = convert_image(save(red, tmp_path / name, **options), 32)
        assert converted.original_format in {"GIF", "PNG", "TIFF"}
        assert_close(converted.pixels, RED, tolerance=0)


def test_gif_transparency_lies_on_white(tmp_path):
    image = solid((20, 20), RED).convert("P")
    pixels = convert_image(save(image, tmp_path / "clear.gif", transparency=image.getpixel((0, 0))), 16).pixels
    assert_close(pixels, WHITE, tolerance=0)


@pytest.mark.parametrize("suffix", [".jpg", ".tiff"])
def test_cmyk_becomes_rgb(tmp_path, suffix):
    """A print shop's CMYK JPEG or TIFF: pure cyan ink is RGB (0, 255, 255), no ink is white."""
    image = Image.new("CMYK", (40, 40), (255, 0, 0, 0))
    image.paste((0, 0, 0, 0), (0, 20, 40, 40))
    options = {"quality": 95} if suffix == ".jpg" else {}
    pixels = convert_image(save(image, tmp_path / f"cmyk{suffix}", **options), 32).pixels
    assert_close(pixels[:14], (0, 255, 255), tolerance=4)
    assert_close(pixels[18:], WHITE, tolerance=4)


def test_large_jpeg_converts_without_distortion(tmp_path):
    path = save(halves((1600, 1600), RED, BLUE), tmp_path / "large.jpg", quality=95)
    converted = convert_image(path, 32)
    assert converted.original_size == (1600, 1600)
    assert_close(converted.pixels[:14], RED, tolerance=4)
    assert_close(converted.pixels[18:], BLUE, tolerance=4)


def test_wide_image_is_centre_cropped_not_squashed(tmp_path):
    image = Image.new("RGB", (90, 30), RED)  # red | blue | red, thirds of 30 px: the centre square is blue
    image.paste(BLUE, (30, 0, 60, 30))
    # Lanczos reads a little past the crop box, so the outermost pixels pick up a trace of red
    assert_close(convert_image(save(image, tmp_path / "wide.png"), 32).pixels, BLUE, tolerance=8)


def test_tall_image_is_centre_cropped_not_squashed(tmp_path):
    image = Image.new("RGB", (30, 90), GREEN)
    image.paste(RED, (0, 30, 30, 60))
    assert_close(convert_image(save(image, tmp_path / "tall.png"), 32).pixels, RED, tolerance=8)


def test_off_centre_non_square_image_is_mostly_centre_colour(tmp_path):
    image = Image.new("RGB", (120, 60), RED)  # centre square is columns 30..90; blue covers 35..85 of it
    image.paste(BLUE, (35, 0, 85, 60))
    pixels = convert_image(save(image, tmp_path / "mostly_blue.png"), 32).pixels
    blue_share = np.mean((pixels[..., 2] > 200) & (pixels[..., 0] < 50))
    assert blue_share > 0.7
    assert mean_colour(pixels)[2] > 2 * mean_colour(pixels)[0]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180°: the stored top (red) is shown at the bottom
    path = save(halves((64, 64), RED, BLUE), tmp_path / "rotated.jpg", exif=exif, quality=95)
    pixels = convert_image(path, 32).pixels
    assert_close(pixels[:14], BLUE, tolerance=4)
    assert_close(pixels[18:], RED, tolerance=4)


def test_exif_orientation_rotating_90_degrees_swaps_sides(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: stored top (red) ends up on the right
    path = save(halves((64, 64), RED, BLUE), tmp_path / "rotated90.jpg", exif=exif, quality=95)
    pixels = convert_image(path, 32).pixels
    assert_close(pixels[:, 18:], RED, tolerance=4)
    assert_close(pixels[:, :14], BLUE, tolerance=4)


def test_image_without_exif_keeps_its_orientation(tmp_path):
    pixels = convert_image(save(halves((64, 64), RED, BLUE), tmp_path / "upright.jpg", quality=95), 32).pixels
    assert_close(pixels[:14], RED, tolerance=4)
    assert_close(pixels[18:], BLUE, tolerance=4)


def test_multi_picture_jpeg_from_a_phone_is_accepted_as_jpeg(tmp_path):
    path = tmp_path / "phone.jpg"
    solid((64, 64), RED).save(path, format="MPO", save_all=True, append_images=[solid((64, 64), BLUE)])
    assert_close(convert_image(path, 32).pixels, RED, tolerance=4)


# ---------------------------------------------------------------------------------- images: rejections


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageRejected, match=r"^empty file"):
        convert_image(path, 32)


def test_text_file_named_png_is_rejected(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n" * 20)
    with pytest.raises(ImageRejected, match=r"^not an image"):
        convert_image(path, 32)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_rejected_as_not_decoding(tmp_path, suffix):
    whole = save(noisy((256, 256)), tmp_path / f"whole{suffix}")
    data = whole.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    assert convert_image(whole, 32).pixels.shape == (32, 32, 3)  # the whole file is fine
    with pytest.raises(ImageRejected, match=r"^does not decode"):
        convert_image(truncated, 32)


@pytest.mark.parametrize("format_", ["ICO", "PPM"])
def test_other_image_format_with_png_extension_is_rejected(tmp_path, format_):
    path = save(solid((40, 40), RED), tmp_path / "disguised.png", format=format_)
    with pytest.raises(ImageRejected) as rejected:
        convert_image(path, 32)
    assert str(rejected.value) == f"unsupported image format {format_}; use {format_names()}"


@pytest.mark.parametrize("format_", sorted(FORMATS))
def test_every_format_the_messages_name_decodes(tmp_path, format_):
    frames = {"save_all": True, "append_images": [solid((40, 40), BLUE)]} if format_ == "MPO" else {}
    converted = convert_image(save(solid((40, 40), RED), tmp_path / "image", format=format_, **frames), 32)
    assert converted.original_format == format_ and FORMATS[format_] in format_names()
    assert_close(converted.pixels, RED, tolerance=4)


@pytest.mark.parametrize("size", [(4, 4), (MIN_SIDE - 1, 100), (100, MIN_SIDE - 1)])
def test_too_small_image_is_rejected(tmp_path, size):
    path = save(solid(size, RED), tmp_path / "tiny.png")
    with pytest.raises(ImageRejected, match=rf"^too small: {size[0]}×{size[1]}"):
        convert_image(path, 32)


@pytest.mark.parametrize(
    "size",
    [(8000, 8000), (10_000, 10_000), (20_000, 20_000)],
    ids=["over-MAX_PIXELS", "over-Pillow-warning-limit", "over-Pillow-error-limit"],
)
def test_decompression_bomb_is_rejected_from_its_header_quickly(tmp_path, size):
    path = huge_png(tmp_path / "bomb.png", *size)
    assert size[0] * size[1] > MAX_PIXELS
    assert path.stat().st_size < 1_000_000  # tiny on disk, hundreds of megabytes once decoded
    start = time.perf_counter()
    with pytest.raises(ImageRejected, match=r"^too large"):
        convert_image(path, 32)
    assert time.perf_counter() - start < 2.0  # header only: decoding 400 MP would take far longer


def test_image_just_under_the_pixel_limit_passes_the_header_checks(tmp_path):
    path = huge_png(tmp_path / "big.png", 7000, 7000)  # 49 MP ≤ MAX_PIXELS
    assert 7000 * 7000 <= MAX_PIXELS
    with open_checked(path) as image:  # header only: the 49 MP are not decoded here
        assert image.size == (7000, 7000)


# ------------------------------------------------------------------------------------------------ inbox


def make_inbox(root: Path, files: list[str]) -> Path:
    """Write a small valid PNG (or, for other extensions, a few bytes) at each relative path under root."""
    for number, relative in enumerate(files):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".png":
            save(solid((16, 16), (number, 0, 0)), path)
        else:
            path.write_bytes(b"x" * (number + 1))
    return root


def test_scan_accepts_class_folders_case_insensitively_with_labels_in_class_order(tmp_path):
    inbox = make_inbox(tmp_path / "inbox", ["DOG/b.png", "Cat/a.png", "airplane/z.png", "truck/x.PNG"])
    result = scan_inbox(inbox, CLASSES)
    assert result.rejected == []
    assert [c.path for c in result.candidates] == sorted(c.path for c in result.candidates)
    by_name = {c.path.name: (c.label, c.label_name) for c in result.candidates}
    assert by_name == {
        "b.png": (CLASSES.index("dog"), "dog"),
        "a.png": (CLASSES.index("cat"), "cat"),
        "z.png": (CLASSES.index("airplane"), "airplane"),
        "x.PNG": (CLASSES.index("truck"), "truck"),
    }
    assert result.files == 4


def test_scan_includes_nested_sub_folders_of_a_class_folder(tmp_path):
    inbox = make_inbox(tmp_path / "inbox", ["cat/2024/june/a.png", "cat/b.png", "frog/pond/c.jpg"])
    result = scan_inbox(inbox, CLASSES)
    assert sorted((c.path.relative_to(inbox).as_posix(), c.label_name) for c in result.candidates) == [
        ("cat/2024/june/a.png", "cat"),
        ("cat/b.png", "cat"),
        ("frog/pond/c.jpg", "frog"),
    ]


def test_scan_rejects_a_file_at_the_top_level(tmp_path):
    inbox = make_inbox(tmp_path / "inbox", ["loose.png", "cat/a.png"])
    result = scan_inbox(inbox, CLASSES)
    assert [c.path.name for c in result.candidates] == ["a.png"]
    assert [(r.path, r.reason.startswith("not in a class folder")) for r in result.rejected] == [
        (str(inbox / "loose.png"), True)
    ]


def test_scan_rejects_an_unknown_class_folder_naming_it(tmp_path):
    inbox = make_inbox(tmp_path / "inbox", ["Giraffe/a.png", "Giraffe/sub/b.png"])
    result = scan_inbox(inbox, CLASSES)
    assert result.candidates == []
    assert [r.path for r in result.rejected] == [str(inbox / "Giraffe/a.png"), str(inbox / "Giraffe/sub/b.png")]
    for rejection in result.rejected:
        assert "'Giraffe'" in rejection.reason
        assert f"is not one of this data dir's classes ({', '.join(CLASSES)})" in rejection.reason
        assert "a data dir holds one data set" in rejection.reason and "another --data-dir" in rejection.reason


def test_scan_takes_the_data_dirs_own_classes_not_cifar_10s(tmp_path):
    inbox = make_inbox(tmp_path / "inbox", ["Lantern/a.png", "anvil/b.png", "cat/c.png"])
    result = scan_inbox(inbox, ["kettle", "lantern", "anvil"])
    assert [(c.path.name, c.label, c.label_name) for c in result.candidates] == [
        ("a.png", 1, "lantern"),
        ("b.png", 2, "anvil"),
    ]
    (rejected,) = result.rejected
    assert (
        rejected.path.endswith("c.png")
        and "'cat' is not one of this data dir's classes (kettle, lantern, anvil)" in rejected.reason
    )


@pytest.mark.parametrize("name", ["notes.txt", "icon.ico", "no_extension"])
def test_scan_rejects_a_wrong_extension(tmp_path, name):
    inbox = make_inbox(tmp_path / "inbox", [f"cat/{name}"])
    result = scan_inbox(inbox, CLASSES)
    assert result.candidates == []
    assert len(result.rejected) == 1
    assert result.rejected[0].path == str(inbox / "cat" / name)
    assert result.rejected[0].reason.startswith("extension ")
    assert ".png" in result.rejected[0].reason  # says what is accepted


def test_scan_accepts_every_supported_extension_in_any_case(tmp_path):
    names = ["a.png", "b.JPG", "c.jpeg", "d.WebP", "e.bmp"]
    inbox = make_inbox(tmp_path / "inbox", [f"ship/{name}" for name in names])
    assert [c.path.name for c in scan_inbox(inbox, CLASSES).candidates] == names


def test_scan_rejects_a_broken_symbolic_link(tmp_path):
    inbox = make_inbox(tmp_path / "inbox", ["cat/a.png"])
    (inbox / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    result = scan_inbox(inbox, CLASSES)
    assert [c.path.name for c in result.candidates] == ["a.png"]
    assert [(r.path, r.reason) for r in result.rejected] == [(str(inbox / "cat/gone.png"), "broken symbolic link")]


def test_scan_accounts_for_every_file_and_does_not_modify_the_inbox(tmp_path):
    files = ["Cat/a.png", "DOG/sub/b.png", "top.png", "zebra/c.png", "cat/d.txt", "horse/e.ico", "bird/f.jpg"]
    inbox = make_inbox(tmp_path / "inbox", files)
    before = snapshot(inbox)
    result = scan_inbox(inbox, CLASSES)
    assert snapshot(inbox) == before
    found = [str(c.path) for c in result.candidates] + [r.path for r in result.rejected]
    assert sorted(found) == sorted(str(inbox / f) for f in files)
    assert result.files == len(files)
    assert sorted(c.path.name for c in result.candidates) == ["a.png", "b.png", "f.jpg"]


# ------------------------------------------------------------------------------------------------ leaks


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:  # the stand-in for the 10,000 CIFAR-10 test images
    return smooth_images(200, seed=1)


@pytest.fixture(scope="module")
def leak_index(test_images) -> LeakIndex:
    return LeakIndex.build(test_images, [f"test-{i:05d}" for i in range(len(test_images))])


PICKED = [0, 17, 101, 199]  # test images the copies are made of


def test_leak_index_finds_exact_copies(leak_index, test_images):
    indices, distances = leak_index.nearest(test_images[PICKED])
    assert indices.tolist() == PICKED
    assert (distances < 0.01).all()


def test_leak_index_finds_every_test_image_in_chunks(leak_index, test_images):
    indices, distances = leak_index.nearest(test_images)  # 200 images: several CHUNKs of queries
    assert indices.tolist() == list(range(len(test_images)))
    assert (distances <= NEAR_RMS).all()


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda p: jpeg_roundtrip(p, 75), id="jpeg-q75"),
        pytest.param(lambda p: resize_roundtrip(p, 128), id="resize-128-and-back"),
        pytest.param(lambda p: shifted(p, 0, 2), id="shift-right-2"),
        pytest.param(lambda p: shifted(p, -2, 0), id="shift-up-2"),
        pytest.param(lambda p: shifted(p, MAX_SHIFT, -MAX_SHIFT), id="shift-diagonal"),
        pytest.param(lambda p: np.roll(p, 2, axis=1), id="roll-2"),
        pytest.param(lambda p: p[:, ::-1], id="mirror"),
        pytest.param(lambda p: jpeg_roundtrip(shifted(p[:, ::-1], 1, 1), 75), id="mirror-shift-jpeg"),
    ],
)
def test_leak_index_finds_near_copies(leak_index, test_images, transform):
    copies = np.stack([np.ascontiguousarray(transform(test_images[i])) for i in PICKED])
    assert not np.array_equal(copies, test_images[PICKED])  # really changed
    indices, distances = leak_index.nearest(copies)
    assert indices.tolist() == PICKED
    assert (distances <= NEAR_RMS).all(), distances


def test_leak_index_does_not_flag_other_images(leak_index):
    others = smooth_images(100, seed=2)
    _, distances = leak_index.nearest(others)
    assert (distances > NEAR_RMS).all(), distances.min()


def test_leak_index_does_not_flag_edited_copies_of_images_outside_it(leak_index):
    training = smooth_images(20, seed=3)  # not in the index
    edited = np.concatenate(
        [
            training[:, :, ::-1],  # mirrored
            np.stack([resize_roundtrip(t[4:28, 4:28], 32) for t in training]),  # cropped and enlarged
            np.stack([jpeg_roundtrip(shifted(t, 1, -1), 75) for t in training]),
        ]
    )
    _, distances = leak_index.nearest(np.ascontiguousarray(edited))
    assert (distances > NEAR_RMS).all(), distances.min()


def test_leak_index_keeps_the_image_ids(leak_index):
    assert leak_index.image_ids[17] == "test-00017"
    assert leak_index.signatures.shape == (200, 7 * 7 * 3)


@pytest.mark.parametrize("side", [8, 16, 48, 64, 100])
def test_the_leak_check_scales_its_crop_and_shifts_with_the_image_size(side):
    """At S px the check finds copies shifted by its largest shift and mirrored (and JPEG'd, where JPEG's 8×8 blocks
    leave an image: from 32 px) and flags no other image."""
    rng = np.random.default_rng(side)
    grids = rng.integers(0, 256, (90, 4, 4, 3), np.uint8)
    smooth = [Image.fromarray(g).resize((side, side), Image.Resampling.BILINEAR) for g in grids]
    images = np.stack([np.asarray(image) for image in smooth])
    index = LeakIndex.build(images[:60], [f"test-{i}" for i in range(60)])
    most = index.geometry.shifts[-1]
    padded = np.pad(images[:10], ((0, 0), (most, most), (most, most), (0, 0)), mode="edge")
    moved = padded[:, :side, 2 * most : 2 * most + side]  # down and left by the largest shift
    copies = np.stack(
        [jpeg_roundtrip(np.ascontiguousarray(m[:, ::-1]), 90) if side >= 32 else m[:, ::-1] for m in moved]
    )
    assert index.signatures.shape == (60, 7 * 7 * 3)
    indices, distances = index.nearest(copies)
    assert indices.tolist() == list(range(10)) and (distances <= NEAR_RMS).all(), distances
    assert (index.nearest(images[60:])[1] > NEAR_RMS).all()


# ----------------------------------------------------------------------------------------------- screen


def test_screen_inbox_sorts_every_file_into_accepted_duplicate_or_rejected(tmp_path, test_images, leak_index):
    training = smooth_images(3, seed=4)
    new = smooth_images(3, seed=5)
    reference = Reference(leak_index, {pixel_digest(image): f"train-{i:05d}" for i, image in enumerate(training)}, 32)
    inbox = tmp_path / "inbox"
    paths = {
        "new": save(new[0], inbox / "cat" / "new.png"),
        "new_jpeg": save(new[1], inbox / "Dog" / "deep" / "new.jpg", quality=90),
        "leak_png": save(test_images[5], inbox / "cat" / "leak_copy.png"),
        "leak_jpeg": save(test_images[6], inbox / "deer" / "leak_reencoded.jpg", quality=75),
        "known": save(training[1], inbox / "frog" / "known.png"),
        "twin_a": save(new[2], inbox / "bird" / "twin.png"),
        "twin_b": save(new[2], inbox / "ship" / "twin_again.png"),
        "broken": inbox / "truck" / "broken.png",
        "loose": save(new[0], inbox / "loose.png"),
    }
    whole = save(noisy((128, 128)), tmp_path / "whole.png").read_bytes()
    paths["broken"].parent.mkdir(parents=True)
    paths["broken"].write_bytes(whole[: len(whole) // 2])  # a truncated download
    before = snapshot(inbox)
    messages: list[str] = []

    scanned = scan_inbox(inbox, CLASSES)
    screening = screen_inbox(scanned, reference, log=messages.append)

    assert snapshot(inbox) == before
    assert messages and messages[-1] == f"checked {len(scanned.candidates)}/{len(scanned.candidates)} files"

    accepted = {str(a.candidate.path) for a in screening.accepted}
    duplicates = {d["path"]: d["of"] for d in screening.duplicates}
    rejected = {r.path: r.reason for r in screening.rejected}
    everything = [*accepted, *duplicates, *rejected]
    assert sorted(everything) == sorted(str(p) for p in paths.values())  # each file exactly once
    assert len(everything) == len(set(everything)) == scanned.files

    assert accepted == {str(paths[k]) for k in ("new", "new_jpeg", "twin_a")}  # twin_a sorts first (bird < ship)
    assert duplicates == {str(paths["known"]): "train-00001", str(paths["twin_b"]): str(paths["twin_a"])}
    assert rejected[str(paths["leak_png"])] == "test-set leak: an exact copy of test image test-00005"
    assert rejected[str(paths["leak_jpeg"])].startswith("test-set leak: a near copy (distance ")
    assert rejected[str(paths["leak_jpeg"])].endswith("of test image test-00006")
    assert rejected[str(paths["broken"])].startswith("does not decode")
    assert rejected[str(paths["loose"])].startswith("not in a class folder")
    assert [r.path for r in screening.rejected] == sorted(rejected)
    assert screening.class_counts == {"bird": 1, "cat": 1, "dog": 1}

    by_path = {str(a.candidate.path): a for a in screening.accepted}
    np.testing.assert_array_equal(by_path[str(paths["new"])].pixels, new[0])  # a 32×32 PNG is kept exactly
    assert by_path[str(paths["new"])].digest == pixel_digest(new[0])


def test_exact_copies_in_a_large_batch_are_reported_as_exact(tmp_path, test_images, leak_index):
    inbox = tmp_path / "inbox"
    for number in range(40):
        save(test_images[number], inbox / "cat" / f"copy{number:02d}.png")
    screening = screen_inbox(scan_inbox(inbox, CLASSES), Reference(leak_index, {}, 32), log=lambda _: None)
    assert len(screening.rejected) == 40
    near = [r.reason for r in screening.rejected if "an exact copy" not in r.reason]
    assert near == []


def test_screen_inbox_with_nothing_decodable_returns_only_rejections(tmp_path, leak_index):
    inbox = tmp_path / "inbox"
    (inbox / "cat").mkdir(parents=True)
    (inbox / "cat" / "empty.png").write_bytes(b"")
    screening = screen_inbox(scan_inbox(inbox, CLASSES), Reference(leak_index, {}, 32), log=lambda _: None)
    assert screening.accepted == [] and screening.duplicates == []
    assert [(Path(r.path).name, r.reason) for r in screening.rejected] == [("empty.png", "empty file (0 bytes)")]


def test_batch_table_is_in_the_ingest_schema_with_ids_paths_and_labels(tmp_path, leak_index):
    new = smooth_images(3, seed=6)
    inbox = tmp_path / "inbox"
    save(new[0], inbox / "Horse" / "a.png")
    save(new[1], inbox / "airplane" / "b.png")
    save(new[2], inbox / "truck" / "sub" / "c.png")
    screening = screen_inbox(scan_inbox(inbox, CLASSES), Reference(leak_index, {}, 32), log=lambda _: None)
    assert len(screening.accepted) == 3

    table = batch_table(screening.accepted, CLASSES)
    assert table.schema.equals(shard_schema(32))
    rows = table.to_pylist()
    assert [row["filename"] for row in rows] == [
        str((inbox / p).resolve()) for p in ("Horse/a.png", "airplane/b.png", "truck/sub/c.png")
    ]
    assert all(Path(row["filename"]).is_absolute() for row in rows)
    assert [row["label"] for row in rows] == [CLASSES.index(c) for c in ("horse", "airplane", "truck")]
    assert [row["label_name"] for row in rows] == ["horse", "airplane", "truck"]
    assert [row["image_id"] for row in rows] == [f"add-{pixel_digest(image)[:20]}" for image in new]
    pixels = np.array([row["pixels"] for row in rows], np.uint8).reshape(-1, 32, 32, 3)
    np.testing.assert_array_equal(pixels, new)


# ---------------------------------------------------------------------------------------------- summary


def screening_for_summary(tmp_path: Path, leak_index: LeakIndex, added: int) -> tuple[Path, Screening]:
    inbox = tmp_path / "inbox"
    for number, image in enumerate(smooth_images(added, seed=7)):
        save(image, inbox / "cat" / f"new{number}.png")
    (inbox / "dog").mkdir(parents=True, exist_ok=True)
    (inbox / "dog" / "empty.png").write_bytes(b"")
    (inbox / "dog" / "readme.txt").write_text("hello")
    screening = screen_inbox(scan_inbox(inbox, CLASSES), Reference(leak_index, {}, 32), log=lambda _: None)
    return inbox, screening


def summarize(inbox: Path, screening: Screening, version: str = "v2") -> dict:
    return build_summary(
        addition_id="batch-0001",
        batch_id="batch-0001" if screening.accepted else None,
        inbox=inbox,
        files=len(screening.accepted) + len(screening.duplicates) + len(screening.rejected),
        screening=screening,
        previous_version="v1",
    ) | {"dataset_version": version, "train_images": 100 + len(screening.accepted)}


def test_write_summary_writes_json_report_and_thumbnail_grid(tmp_path, leak_index):
    inbox, screening = screening_for_summary(tmp_path, leak_index, added=2)
    summary = summarize(inbox, screening)
    out = tmp_path / "reports" / "batch-0001"

    written = write_summary(out, summary, [a.pixels for a in screening.accepted])

    assert written == out / "summary.json"
    data = json.loads(written.read_text())
    assert data["added"] == 2
    assert data["duplicates"] == 0
    assert data["dataset_version"] == "v2"
    assert data["class_counts"] == {"cat": 2}
    assert data["rejected"] == [
        {"path": str(inbox / "dog" / "empty.png"), "reason": "empty file (0 bytes)"},
        {"path": str(inbox / "dog" / "readme.txt"), "reason": screening.rejected[1].reason},
    ]
    assert data["files"] == 4

    report = (out / "report.md").read_text()
    for rejection in data["rejected"]:
        assert [rejection["path"], rejection["reason"]] in table_cells(report)
    assert "**2 added**" in report
    assert "| cat | 2 |" in report
    assert "![added images](added.png)" in report

    grid = (out / "added.png").read_bytes()
    assert grid.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(out / "added.png") as image:
        assert image.size == (2 * 64, 64)  # two thumbnails side by side at twice the size
        first = np.asarray(image.convert("RGB"))[:64, :64]
    np.testing.assert_array_equal(first[::2, ::2], screening.accepted[0].pixels)
    assert sorted(p.name for p in out.iterdir()) == ["added.png", "report.md", "summary.json"]


@pytest.mark.parametrize(("side", "drawn"), [(16, 64), (96, 96)])
def test_the_thumbnail_grid_draws_any_image_size_whole_at_least_64_px(tmp_path, side, drawn):
    from cifarflow.intake.batch_report import thumbnail_grid

    images = [np.random.default_rng(i).integers(0, 256, (side, side, 3), np.uint8) for i in range(3)]
    thumbnail_grid(images, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as image:
        assert image.size == (3 * drawn, drawn)
        last = np.asarray(image.convert("RGB"))[:, 2 * drawn :]
    np.testing.assert_array_equal(np.asarray(Image.fromarray(images[2]).resize((drawn, drawn), Image.NEAREST)), last)


def test_write_summary_without_additions_writes_no_grid(tmp_path, leak_index):
    inbox, screening = screening_for_summary(tmp_path, leak_index, added=0)
    summary = summarize(inbox, screening, version="v1")
    out = tmp_path / "reports" / "nothing"

    write_summary(out, summary, [])

    assert sorted(p.name for p in out.iterdir()) == ["report.md", "summary.json"]
    data = json.loads((out / "summary.json").read_text())
    assert data["added"] == 0 and data["class_counts"] == {} and len(data["rejected"]) == 2
    report = (out / "report.md").read_text()
    assert "added.png" not in report
    assert "unchanged: nothing new was added" in report
    assert "empty file (0 bytes)" in report


def test_summary_lists_duplicates_with_what_they_duplicate(tmp_path, leak_index):
    known = smooth_images(1, seed=8)[0]
    inbox = tmp_path / "inbox"
    save(known, inbox / "cat" / "again.png")
    reference = Reference(leak_index, {pixel_digest(known): "train-00042"}, 32)
    screening = screen_inbox(scan_inbox(inbox, CLASSES), reference, log=lambda _: None)
    summary = summarize(inbox, screening, version="v1")
    write_summary(tmp_path / "out", summary, [])
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["duplicates"] == 1
    assert data["duplicate_files"] == [{"path": str(inbox / "cat" / "again.png"), "of": "train-00042", "label": ""}]
    cells = table_cells((tmp_path / "out" / "report.md").read_text())
    assert [str(inbox / "cat" / "again.png"), "train-00042", ""] in cells


MARKDOWN_SPECIALS = ["<class name>", "a*b*c", "my_file_name_", "x|y", "`tick`", "[x](y)"]


@pytest.mark.parametrize("text", MARKDOWN_SPECIALS + ["<b>&amp;</b> ~~s~~ #1 \\ ![i](j)"])
def test_escaped_text_renders_as_itself(text):
    markdown = f"| a |\n|---|\n| {escape(text)} |\n\nbefore {escape(text)} after\n"
    assert table_cells(markdown)[1] == [text]
    assert not inline_tags(markdown)  # no emphasis, code, link or HTML made from the text


def test_join_wrapped_puts_each_paragraph_on_one_line():
    blocks = "\n\n| a |\n|---|\n| b |\n\n![p](p.png)\n![q](q.png)\n"  # tables and images keep their lines
    wrapped = "# T\n\nA sentence\nwrapped here.\n\n- item\n  more\n- next" + blocks
    joined = "# T\n\nA sentence wrapped here.\n\n- item more\n- next" + blocks
    assert join_wrapped(wrapped) == joined and wrapped_lines(wrapped) == ["wrapped here."] and not wrapped_lines(joined)


def test_the_addition_report_shows_names_and_reasons_as_they_are(tmp_path, leak_index):
    """A rejection reads "put it in INBOX/<class name>/" in report.md and the UI, not "INBOX//" (the
    placeholder taken for an HTML tag), and file names with Markdown characters stay as they are."""
    inbox = tmp_path / "inbox"
    for name in MARKDOWN_SPECIALS[1:]:
        save(solid((32, 32), "red"), inbox / f"{name}.png")
    screening = screen_inbox(scan_inbox(inbox, CLASSES), Reference(leak_index, {}, 32), log=lambda _: None)
    write_summary(tmp_path / "out", summarize(inbox, screening, version="v1"), [])
    report = (tmp_path / "out" / "report.md").read_text()
    cells = table_cells(report)
    for name in MARKDOWN_SPECIALS[1:]:
        assert [str(inbox / f"{name}.png"), "not in a class folder: put it in INBOX/<class name>/"] in cells
    assert not inline_tags(report.partition("## Rejected")[2])  # no formatting made of a name or reason


def test_an_inbox_class_folder_matches_its_class_in_any_unicode_form_and_case(tmp_path):
    folder = tmp_path / "inbox" / "N\u0303ANDU\u0301"  # decomposed, as macOS writes names; upper case
    folder.mkdir(parents=True)
    Image.new("RGB", (12, 12), "red").save(folder / "bird.png")
    result = scan_inbox(tmp_path / "inbox", ["cat", "Ñandú"])
    assert [(c.label, c.path.name) for c in result.candidates] == [(1, "bird.png")] and result.rejected == []
