"""Who may teach the model: reviewers' `name:token`s, checked in constant time by `require_reviewer` on every review
route. Without tokens only a loopback-only service takes answers (they become training data: no open poisoning hole)."""

from __future__ import annotations

import hmac
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from cifarflow.errors import PipelineInputError
from cifarflow.files import file_signature
from serving.http_errors import BadInput

TOKEN_ENV = "CIFARFLOW_REVIEW_TOKEN"
MIN_TOKEN_CHARS = 16
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
NAME = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
TOKEN = re.compile(rf"[!-+\--~]{{{MIN_TOKEN_CHARS},}}")  # printable ASCII, no space, no comma (the entry separator)


@dataclass(frozen=True)
class Reviewer:
    name: str
    token: str

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"Reviewer({self.name!r})"


def parse_reviewers(text: str, source: str) -> list[Reviewer]:
    """`name:token` entries, one per line or comma-separated (`#` comment lines, blank lines ignored);
    PipelineInputError naming `source` and the line for a bad name or token, or when there is no entry."""
    reviewers = []
    for number, line in enumerate(text.splitlines(), 1):
        entries = [] if line.strip().startswith("#") else [part for part in line.split(",") if part.strip()]
        for entry in entries:  # a comment may hold commas
            name, sep, token = (part.strip() for part in entry.partition(":"))
            where = f"{source}, line {number}"
            if not sep:
                raise PipelineInputError(f"{where}: expected `name:token`, got no `:`")
            if not NAME.fullmatch(name):
                raise PipelineInputError(f"{where}: reviewer name {name!r} must be 1–64 of A–Z a–z 0–9 . _ @ + -")
            if not TOKEN.fullmatch(token):
                raise PipelineInputError(
                    f"{where} ({name}): a token is at least {MIN_TOKEN_CHARS} characters of printable ASCII with "
                    "no spaces or commas (an HTTP header carries nothing else; make one: "
                    'python -c "import secrets; print(secrets.token_urlsafe(24))")'
                )
            reviewers.append(Reviewer(name, token))
    if not reviewers:  # given, but nothing usable: not silently "no tokens" (and open on loopback)
        raise PipelineInputError(f"{source} has no `name:token` entry")
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
    """The reviewers of `token_file` and $CIFARFLOW_REVIEW_TOKEN ([]: neither); PipelineInputError if unusable."""
    reviewers = []
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not a name
        except (OSError, UnicodeDecodeError) as error:
            raise PipelineInputError(f"cannot read the review token file {token_file}: {error}") from None
        reviewers += parse_reviewers(text, f"the review token file {token_file}")
    if environ.get(TOKEN_ENV, "").strip():
        reviewers += parse_reviewers(environ[TOKEN_ENV], f"${TOKEN_ENV}")
    return check_distinct(reviewers)


class AccessDenied(BadInput):
    """`status` 401 (no or wrong token), 403 (reviewing is off here) or 503 (the token file is unusable now)."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message, {"WWW-Authenticate": "Bearer"} if status == 401 else None)


def listens_on_loopback(host: str | None) -> bool:
    """Whether `host` (--host, or a Host header and port) names this machine alone (DNS rebinding sends its own)."""
    host = host or ""
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.lower() in LOOPBACK


class ReviewAccess:
    """One service's rule: `reviewers`, plus those of `token_file` (read again whenever its file_signature
    changes: a token revoked or added counts from the next request), and whether it listens on loopback only."""

    def __init__(self, reviewers: list[Reviewer], loopback_only: bool, token_file: Path | None = None):
        self.reviewers, self.loopback_only, self.token_file = list(reviewers), loopback_only, token_file
        self._seen: tuple[int, ...] | None = None  # the token file's signature when last read
        self._from_file: list[Reviewer] = []
        self._lock = threading.Lock()

    def configured(self) -> list[Reviewer]:
        """Every reviewer now; AccessDenied 503 naming the token file while it cannot be used."""
        if self.token_file is None:
            return self.reviewers
        try:
            with self._lock:
                seen = file_signature(self.token_file)
                if seen is None or seen != self._seen:
                    self._from_file, self._seen = load_reviewers(self.token_file, {}), seen
            return check_distinct(self._from_file + self.reviewers)
        except PipelineInputError as error:
            raise AccessDenied(
                503, f"reviewing is paused: {error}; fix the file (read again at each request)"
            ) from None

    def reviewer(self, authorization: str | None, host: str | None = None, forwarded: bool = False) -> str:
        """The name of the reviewer whose token `authorization` carries, compared with every token (no early exit).
        AccessDenied 401: a token missing or wrong; 403: no token configured and the request may come from elsewhere
        (not loopback only, `forwarded` by a proxy, or `host` not this machine); 503: the token file is unusable."""
        reviewers = self.configured()
        if not reviewers:
            if not self.loopback_only:
                raise AccessDenied(
                    403,
                    "reviewing is off: this service is reachable from other machines and has no review token; "
                    f"give it one (--review-token-file PATH or ${TOKEN_ENV}; see docs/how-to/review.md)",
                )
            if forwarded or not listens_on_loopback(host):
                raise AccessDenied(
                    403,
                    "without a review token, answers are taken only from this machine, addressed as 127.0.0.1 or "
                    f"localhost, not through a proxy; give the service a token (${TOKEN_ENV}) to review from elsewhere",
                )
            return "local"
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AccessDenied(401, "a review token is needed: send `Authorization: Bearer <token>`")
        matches = [r.name for r in reviewers if hmac.compare_digest(given.strip().encode(), r.token.encode())]
        if not matches:
            raise AccessDenied(401, "the review token is not valid")
        return matches[0]


def require_reviewer(request: Request) -> str:
    """FastAPI dependency: the reviewer's name (`local`: loopback-only, no tokens), else AccessDenied (401/403/503)."""
    headers = request.headers
    forwarded = "forwarded" in headers or "x-forwarded-for" in headers
    return request.app.state.access.reviewer(headers.get("authorization"), headers.get("host"), forwarded)


def requires_reviewer(route) -> bool:
    """Whether a route (an APIRoute, or any other) declares `Depends(require_reviewer)`."""
    dependencies = getattr(getattr(route, "dependant", None), "dependencies", ())
    return any(dependency.call is require_reviewer for dependency in dependencies)


def refused(request: Request) -> AccessDenied | None:
    """The AccessDenied of a request to a reviewer's route, which comes before any complaint about its body; or None."""
    if not requires_reviewer(request.scope.get("route")):
        return None
    try:
        require_reviewer(request)
    except AccessDenied as denied:
        return denied
    return None
