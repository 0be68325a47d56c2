"""Files and folders as users lay them out: any name, links, hidden files, unreadable folders.

Two things every command that reads a user's files shares:

- `printable(path)`: the text a name is recorded as (Parquet, JSON, the UI, logs). A name that is
  valid UTF-8 is kept as it is; in a name that is not (a Latin-1 `café.png` written by an old
  camera or a zip tool: the bytes `caf\\xe9.png`), each byte that is not part of valid UTF-8 becomes
  the four characters `\\xNN` (Python's `backslashreplace`), and so does every control character
  (a newline in a name would split a log line). Lossless: `printf 'caf\\xe9.png'` recreates the name.
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
    """The name as lossless printable UTF-8 text (see the module docstring); never raises."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(character: str) -> str:
    """`\\xNN` always means one byte (a control character below 0x80 is one byte); other characters
    are written as `\\uNNNN`, so that `from_printable` can tell them apart."""
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


ESCAPE = re.compile(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|\\U([0-9a-f]{8})")


def from_printable(text: str) -> str:
    """The path `printable` wrote `text` for: `text` itself when it names an existing path (or has no
    escapes), otherwise with its escapes turned back into the name's bytes. Flows take file names as
    printable text, because Prefect's parameters and API must be valid UTF-8."""
    if os.path.lexists(text) or not ESCAPE.search(text):
        return text
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
