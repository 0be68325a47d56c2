"""Users' file names as lossless printable UTF-8 text (`printable`, `from_printable`), and `walk`, which lists
every file under a folder with the reason it cannot be read, if any."""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def name_key(name: str) -> str:
    """What two class names are compared by: Unicode NFC (macOS writes names decomposed) and case folded."""
    return unicodedata.normalize("NFC", name).casefold()


def printable(path: str | os.PathLike) -> str:
    """`path` as printable UTF-8 text, never raising: a byte that is not UTF-8, a control character and a backslash
    are escaped as `backslashreplace` writes them (`caf\\xe9.png`), so that `from_printable` is its exact inverse."""
    text = os.fsencode(path).decode("utf-8", "surrogateescape")  # a byte that is not UTF-8: a lone surrogate
    if text.isprintable() and "\\" not in text:  # a surrogate is not printable
        return text
    return "".join(map(_escape, text))


def _escape(character: str) -> str:
    """`\\xNN` always means one byte (not UTF-8, a control character below 0x80, or `\\x5c`); other unprintable
    characters are `\\uNNNN` or `\\UNNNNNNNN`."""
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    if character.isprintable() and character != "\\":
        return character
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


ESCAPE = re.compile(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|\\U([0-9a-f]{8})")


def from_printable(text: str) -> str:
    """The name `printable` wrote `text` for (a backslash that starts no escape is kept). Flows take names as
    printable text: Prefect's parameters must be valid UTF-8."""
    raw, last = bytearray(), 0
    for match in ESCAPE.finditer(text):
        raw += text[last : match.start()].encode("utf-8", "surrogateescape")
        byte, char4, char8 = match.groups()
        raw += bytes([int(byte, 16)]) if byte else chr(int(char4 or char8, 16)).encode("utf-8", "surrogatepass")
        last = match.end()
    raw += text[last:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(raw))


@dataclass(frozen=True)
class Found:
    """One entry under a walked folder: a readable regular file (`problem` None) or why not."""

    path: Path
    problem: str | None = None


def file_problem(path: Path) -> str | None:
    """None for a regular file (or a link to one); otherwise what it is, in words."""
    try:
        mode = path.stat().st_mode  # follows links
    except FileNotFoundError:
        return "broken symbolic link" if path.is_symlink() else "gone since it was listed"
    except OSError as error:
        return f"could not be read: {error.strerror}"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device"}
    kinds |= {stat.S_ISBLK: "a device"}
    kind = next((name for is_kind, name in kinds.items() if is_kind(mode)), "something else")
    return f"not a regular file ({kind})"


def walk(root: Path) -> Iterator[Found]:
    """Every file under `root`, sorted by name within each folder, linked folders followed once each; a folder
    that cannot be listed, a link loop, a broken link, a pipe or a device comes with its `problem`."""
    seen = {os.path.realpath(root)}
    unreadable: list[OSError] = []
    for folder, subfolders, files in os.walk(root, onerror=unreadable.append, followlinks=True):
        yield from (Found(Path(error.filename), f"folder could not be read: {error.strerror}") for error in unreadable)
        unreadable.clear()
        found = [Found(Path(folder, name), file_problem(Path(folder, name))) for name in files]
        for name in sorted(subfolders):
            real = os.path.realpath(Path(folder, name))
            if real in seen:
                subfolders.remove(name)
                found.append(Found(Path(folder, name), "a link to a folder already read (a loop): not read again"))
            seen.add(real)
        subfolders.sort()
        yield from sorted(found, key=lambda entry: entry.path.name)
    yield from (Found(Path(error.filename), f"folder could not be read: {error.strerror}") for error in unreadable)
