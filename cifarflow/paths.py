"""Files and folders as users lay them out: any name, links, hidden files, unreadable folders.

Two things every command that reads a user's files shares:

- `printable(path)`: the text a name is recorded as (Parquet, JSON, the UI, logs). A name that is
  printable UTF-8 without a backslash is kept as it is; in any other name (a Latin-1 `café.png`
  written by an old camera or a zip tool: the bytes `caf\\xe9.png`), each byte that is not part of
  valid UTF-8 becomes the four characters `\\xNN` (as Python's `backslashreplace` writes it), and so
  do every control character (a newline in a name would split a log line) and the backslash itself
  (`\\x5c`), so two names never print alike. Lossless: `printf 'caf\\xe9.png'` recreates the name.
  `from_printable(text)` turns it back into the name (flows get their file names as printable text:
  Prefect's parameters must be valid UTF-8).
- `walk(root)`: every file under a folder, each with the reason it cannot be read, if any: links
  to folders are followed once (a link loop is reported, not followed forever), a folder that cannot
  be read, a broken link, a named pipe or device are each reported with that reason, never dropped
  without a word.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def printable(path: str | os.PathLike) -> str:
    """The name as lossless printable UTF-8 text (see the module docstring); never raises. A printable
    UTF-8 name without a backslash is returned as it is; otherwise each byte that is not UTF-8, each
    control character and each backslash is escaped, so that `from_printable` is its exact inverse."""
    raw = os.fsencode(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(c) for c in raw.decode("utf-8", "surrogateescape"))


def _escape(character: str) -> str:
    """`\\xNN` always means one byte: a byte that is not UTF-8 (decoded as a lone surrogate), a control
    character below 0x80, or the backslash itself (`\\x5c`); other unprintable characters are
    `\\uNNNN` or `\\UNNNNNNNN`, so that `from_printable` can tell them apart."""
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    if character.isprintable() and character != "\\":
        return character
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


ESCAPE = re.compile(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|\\U([0-9a-f]{8})")


def from_printable(text: str) -> str:
    """The name `printable` wrote `text` for: every escape turned back into the name's bytes (a backslash
    that starts no escape is kept as it is). Flows take file names as printable text, because Prefect's
    parameters and API must be valid UTF-8."""
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
    """Every file under `root` at any depth, sorted by path within each folder, folders followed
    through links once each (by their real path). Folders that cannot be listed and link loops are
    reported as `Found(folder, problem)`."""
    root = Path(root)
    seen = {os.path.realpath(root)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                names = sorted(entries, key=lambda entry: entry.name)
        except OSError as error:
            yield Found(folder, f"folder could not be read: {error.strerror}")
            continue
        subfolders = []
        for entry in names:
            path = Path(folder) / entry.name
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if not is_dir:
                yield Found(path, file_problem(path))
                continue
            real = os.path.realpath(path)
            if real in seen:
                yield Found(path, "a link to a folder already read (a loop): not read again")
                continue
            seen.add(real)
            subfolders.append(path)
        stack.extend(reversed(subfolders))
