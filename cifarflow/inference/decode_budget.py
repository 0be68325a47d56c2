"""A memory bound for decoding uploads: how many pixels the service decodes at once, shared by the
requests in flight.

Decoding costs memory in proportion to the pixels decoded, and a small file can hold many: a 208 KB
PNG of 7,000 × 7,000 RGBA pixels (49 MP, under `MAX_PIXELS`) needs 376 MB while it decodes (4 bytes
a pixel, and Pillow's premultiplied copy for resizing), so eight at once took the service to 3 GB.

A request reads the image's size from its header (no pixel decoded), holds that many pixels of the
budget while it decodes, and gives them back. A request goes ahead as soon as its share fits, so the
service's usual small images are not held up behind a big one waiting for room; one that finds no
room within `wait_s` seconds gives up with `DecodeBusy`, which the service answers 503 with
`Retry-After`.

An image larger than the whole budget is not refused for its size: it waits until nothing else is
decoding, then decodes alone, holding the whole budget (DecodeBusy if that moment does not come within
`wait_s`). So every image the product accepts can be decoded whatever the budget, and the pixels being
decoded at once never exceed max(budget, largest image).

A bound on what is decoded at once bounds the process's memory only if freed memory goes back to the
system: glibc's malloc keeps an arena per thread, and a 16 MB block of Pillow's freed in one arena is
not reused by another thread's next image. Decoding eight such images one after the other, each in
another thread, kept 4.7 GB; `return_freed_memory` (which the service calls at its start) has blocks
of 1 MiB or more mapped on their own and unmapped when freed: 0 kept, 1.0 GB at the peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cifarflow.intake.images import open_checked

DEFAULT_PIXELS = 50_000_000  # one largest accepted image (MAX_PIXELS) at a time: see the README's measurement
WAIT_S = 10.0  # a 49 MP RGBA PNG decodes in about 2 s on 2 cores: a few such ahead of a request still fit
RETRY_AFTER_S = 2  # what a refused request is told to wait before trying again
MMAP_THRESHOLD_BYTES = 2**20  # allocations this large or larger are unmapped when freed (see the docstring)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


class DecodeBusy(Exception):
    """The budget stayed spent for the whole wait; `retry_after_s` says when to try again (seconds)."""

    def __init__(self, pixels: int, budget: int, wait_s: float, retry_after_s: int = RETRY_AFTER_S):
        super().__init__(
            f"the service is busy decoding other large images ({pixels / 1e6:.1f} MP asked, "
            f"{budget / 1e6:.1f} MP budget, waited {wait_s:g} s); try again in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class DecodeBudget:
    """Pixels being decoded at once, at most `pixels` (> 0), shared by threads; a request that cannot
    get its share within `wait_s` seconds gets `DecodeBusy`. Thread-safe."""

    def __init__(self, pixels: int = DEFAULT_PIXELS, wait_s: float = WAIT_S):
        if pixels < 1:
            raise ValueError(f"a decode budget needs at least 1 pixel, got {pixels}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be 0 or more seconds, got {wait_s}")
        self.pixels, self.wait_s = pixels, wait_s
        self.in_use = 0  # pixels held now
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[int]:
        """Hold `pixels` (clamped to the whole budget) for the `with` block; DecodeBusy if they did not
        fit within `wait_s` seconds. Yields the pixels held."""
        held = self.acquire(pixels)
        try:
            yield held
        finally:
            self.release(held)

    def acquire(self, pixels: int) -> int:
        """Take `pixels` of the budget (at most all of it) as soon as they fit, waiting up to `wait_s`
        seconds; the pixels taken, to give to `release`. DecodeBusy when they did not fit in time."""
        share = min(max(pixels, 0), self.pixels)
        with self._changed:
            if not self._changed.wait_for(lambda: self.in_use + share <= self.pixels, timeout=self.wait_s):
                raise DecodeBusy(pixels, self.pixels, self.wait_s)
            self.in_use += share
        return share

    def release(self, share: int) -> None:
        """Give back what `acquire` returned."""
        with self._changed:
            self.in_use -= share
            self._changed.notify_all()


def header_pixels(data: bytes) -> int:
    """Width × height of the image in `data`, read from its header alone (nothing decoded);
    ImageRejected for what `convert_image` would refuse from the header (not an image, too large…)."""
    with open_checked(data) as image:
        return image.width * image.height


def return_freed_memory(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc's malloc map every allocation of `threshold_bytes` or more on its own, so that it goes
    back to the system when freed instead of staying in a thread's arena (a process-wide setting; see
    the module docstring). False, and nothing changed, where the C library has no `mallopt` (macOS, musl)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, threshold_bytes))
