"""Who may teach the model: review tokens, checked in constant time.

Answers become training data, so an open feedback endpoint is a data-poisoning hole. A service with
review tokens requires `Authorization: Bearer <token>` on /feedback and the review endpoints; one
without tokens allows them only when it listens on the loopback interface alone (127.0.0.1, ::1,
localhost: only this machine's users reach it), and refuses them otherwise, saying how to set one.

Tokens come from `--review-token-file PATH` (one reviewer per line: `name:token`; `#` comments and
blank lines ignored) or the environment variable `CIFARFLOW_REVIEW_TOKEN` (`name:token`, or several
separated by commas). Each token must be at least `MIN_TOKEN_CHARS` characters (`python -c "import
secrets; print(secrets.token_urlsafe(24))"` makes one). The answer records the reviewer's name, never
the token. Every configured token is compared with `hmac.compare_digest`, with no early exit, so the
time taken says nothing about which token, or how much of one, matched. The running service reads the
token file again whenever it changes (`TokenFile`), so a token revoked or added counts from the next
request; while the file cannot be used, review requests are refused (503) naming it.
"""

from __future__ import annotations

import hmac
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cifarflow.errors import PipelineInputError
from cifarflow.files import file_signature

TOKEN_ENV = "CIFARFLOW_REVIEW_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
LOCAL_REVIEWER = "local"
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(24))"'
NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
TOKEN = re.compile(r"[!-+\--~]+")  # printable ASCII, no space, no comma (the entry separator)


@dataclass(frozen=True)
class Reviewer:
    name: str
    token: str

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"Reviewer({self.name!r})"


def parse_reviewers(text: str, source: str) -> list[Reviewer]:
    """`name:token` entries, one per line (or comma-separated); PipelineInputError naming `source` and
    the line for a bad name, a short token or a name given twice."""
    reviewers: list[Reviewer] = []
    entries = [
        (number, part.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.strip().startswith("#")  # a comment may hold commas
        for part in line.split(",")
        if part.strip()
    ]
    for number, entry in entries:
        name, sep, token = entry.partition(":")
        if not sep:
            raise PipelineInputError(f"{source}, line {number}: expected `name:token`, got no `:`")
        name, token = name.strip(), token.strip()
        if not NAME.fullmatch(name):
            raise PipelineInputError(
                f"{source}, line {number}: reviewer name {name!r} must be 1–64 of A–Z a–z 0–9 . _ @ + -"
            )
        if not TOKEN.fullmatch(token):
            raise PipelineInputError(
                f"{source}, line {number} ({name}): a token is printable ASCII with no spaces or commas "
                f"(an HTTP header carries nothing else; make one: {MAKE_TOKEN})"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise PipelineInputError(
                f"{source}, line {number} ({name}): the token has {len(token)} characters, at least "
                f"{MIN_TOKEN_CHARS} are needed (make one: {MAKE_TOKEN})"
            )
        reviewers.append(Reviewer(name, token))
    return reviewers


def check_distinct(reviewers: list[Reviewer]) -> list[Reviewer]:
    """PipelineInputError when a name or a token is given twice (the answers would go to either name)."""
    for what, values in (("reviewer name", [r.name for r in reviewers]), ("token", [r.token for r in reviewers])):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            shown = ", ".join(repr(v) for v in twice) if what == "reviewer name" else "(not shown)"
            raise PipelineInputError(f"a {what} is given twice among the review tokens: {shown}")
    return reviewers


def load_reviewers(token_file: Path | None, environ: dict[str, str]) -> list[Reviewer]:
    """The reviewers of `token_file` and of $CIFARFLOW_REVIEW_TOKEN together ([] when neither is set).
    PipelineInputError for a file that cannot be read or an entry that is not usable."""
    reviewers = [] if token_file is None else read_token_file(Path(token_file))
    if environ.get(TOKEN_ENV, "").strip():
        from_env = parse_reviewers(environ[TOKEN_ENV], f"${TOKEN_ENV}")
        if not from_env:  # set, but nothing usable: not silently "no tokens" (and open on loopback)
            raise PipelineInputError(f"${TOKEN_ENV} is set but has no `name:token` entry")
        reviewers += from_env
    return check_distinct(reviewers)


def read_token_file(path: Path) -> list[Reviewer]:
    """The reviewers of a token file; PipelineInputError naming it when it cannot be read or used."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not a name
    except (OSError, UnicodeDecodeError) as error:
        raise PipelineInputError(f"cannot read the review token file {path}: {error}") from None
    reviewers = parse_reviewers(text, str(path))
    if not reviewers:
        raise PipelineInputError(f"the review token file {path} has no `name:token` line")
    return reviewers


class TokenFile:
    """A review token file, read again whenever it changes (another device or inode, size or mtime): a
    token revoked or added counts from the next request, without a restart. Thread-safe."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._seen: tuple[int, ...] | None = None
        self._reviewers: list[Reviewer] = []
        self._lock = threading.Lock()

    def reviewers(self) -> list[Reviewer]:
        """The file's reviewers as it stands now; PipelineInputError (read_token_file's) while it cannot be
        used, again at each call until it is fixed."""
        with self._lock:
            seen = file_signature(self.path)
            if seen is None or seen != self._seen:
                self._reviewers, self._seen = read_token_file(self.path), seen
            return self._reviewers


class AccessDenied(Exception):
    """`status` 401 (no or wrong token), 403 (reviewing is off here) or 503 (the token file cannot be used
    now), with the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def listens_on_loopback(host: str) -> bool:
    """Whether binding `host` (the service's --host) makes it reachable from this machine only."""
    return host.strip("[]").lower() in LOOPBACK


def loopback_host(header: str | None) -> bool:
    """Whether a request's Host header names this machine (`127.0.0.1:8000`, `localhost`, `[::1]:8000`).
    A web page that re-points its own name at 127.0.0.1 (DNS rebinding) sends its own name here."""
    if not header:
        return False
    host = header.rsplit(":", 1)[0] if header.count(":") == 1 else header.rsplit("]:", 1)[0]
    return listens_on_loopback(host)


class ReviewAccess:
    """The rule for one service: `reviewers` (may be empty) and those of `token_file` (read again when it
    changes), and whether it listens on loopback only."""

    def __init__(self, reviewers: list[Reviewer], loopback_only: bool, token_file: TokenFile | None = None):
        self.reviewers, self.loopback_only, self.token_file = list(reviewers), loopback_only, token_file

    def configured(self) -> list[Reviewer]:
        """Every reviewer now; AccessDenied 503 naming the token file while it cannot be used."""
        if self.token_file is None:
            return self.reviewers
        try:
            return check_distinct(self.token_file.reviewers() + self.reviewers)
        except PipelineInputError as error:
            raise AccessDenied(
                503, f"reviewing is paused: {error}; fix the file (read again at each request)"
            ) from None

    def reviewer(self, authorization: str | None, host: str | None = None, forwarded: bool = False) -> str:
        """The name of the reviewer whose token `authorization` (the header's value) carries. AccessDenied
        401 when a token is needed and missing or wrong; 403 when no token is configured and the request
        may come from elsewhere: the service is reachable from other machines, a proxy forwarded it
        (`forwarded`), or its `host` header does not name this machine (a page using DNS rebinding); 503
        while the token file cannot be used."""
        reviewers = self.configured()
        if not reviewers:
            if not self.loopback_only:
                raise AccessDenied(
                    403,
                    "reviewing is off: this service is reachable from other machines and has no review token; "
                    f"give it one (--review-token-file PATH or ${TOKEN_ENV}; see the README, 'Learning from use')",
                )
            if forwarded or not loopback_host(host):
                raise AccessDenied(
                    403,
                    "without a review token, answers are taken only from this machine, addressed as 127.0.0.1 or "
                    f"localhost, not through a proxy; give the service a token (${TOKEN_ENV}) to review from elsewhere",
                )
            return LOCAL_REVIEWER
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AccessDenied(401, "a review token is needed: send `Authorization: Bearer <token>`")
        given_bytes, match = given.strip().encode(), None
        for reviewer in reviewers:  # every token compared, none skipped: the time does not depend on which
            if hmac.compare_digest(given_bytes, reviewer.token.encode()):
                match = reviewer
        if match is None:
            raise AccessDenied(401, "the review token is not valid")
        return match.name
