"""Slow or many clients cannot take the service down: uvicorn's h11 protocol with a head/body timeout (408) and a cap
below the open-file limit (the slowest waiting connection closed, else 503).
Under plain uvicorn: `--http serving.connections:GuardedH11Protocol`."""

from __future__ import annotations

import contextlib
import json
import resource
import time
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0  # a browser sends its head in one packet; a phone on a bad link in well under this
RESERVED_FILES = 64  # descriptors kept for the model, the logs, the listening socket
MAX_CONNECTIONS = 10_000  # beyond this many at once, a proxy belongs in front


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def connection_cap(open_files: int | None = None) -> int:
    """Most connections under `open_files` (default: the soft limit now): half of what the reserve leaves, since a
    request may hold two descriptors (its socket, its spooled upload); in [1, MAX_CONNECTIONS]."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, (open_files - RESERVED_FILES) // 2))


def canned(status: int, message: str, headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer with an ErrorBody, closing the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{headers}\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """A request head is due within `header_timeout_s` of the opening or the last answer (trickling does not reset it),
    each body piece within that of the last, else 408; past `max_connections`, 408 to the longest wait, or 503."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    max_connections: int | None = None  # None: connection_cap() at the first connection

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._timer, self._waiting_since = None, time.monotonic()
        self._arm()
        cls = type(self)
        if cls.max_connections is None:
            cls.max_connections = connection_cap()
        if len(self.connections) > cls.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_body():
            self._arm()  # each piece of a body restarts its clock (also one that made the service pause)
        elif self.conn.their_state is not h11.IDLE:
            self._disarm()  # the request is in: the rest is the service's time, not the client's

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's head is due

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def waiting_on_client(self) -> bool:
        """Whether the client owes the service bytes: a request head, or a body the service is not pausing."""
        in_body = self._in_body() and not self.flow.read_paused
        return not self.transport.is_closing() and (self.conn.their_state is h11.IDLE or in_body)

    def _in_body(self) -> bool:
        """Whether the client is sending a body: one the service reads, or the rest of one already answered."""
        return self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (h11.SEND_RESPONSE, h11.DONE)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since = time.monotonic()
        self._timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.waiting_on_client():
            self._close(f"the request did not arrive within {self.header_timeout_s:g} s")
        elif self._in_body():  # the service has paused reading the body (its delay, not the client's): look again later
            self._arm()

    def _close(self, why: str, status: int = 408, headers: str = "") -> None:
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # not answered yet: say why
            self.transport.write(canned(status, why, headers))
        self.transport.close()

    def _make_room(self) -> None:
        """Over the cap: close the connection that has waited longest for its client, or refuse this one."""
        waiting = [
            c for c in self.connections if c is not self and isinstance(c, GuardedH11Protocol) and c.waiting_on_client()
        ]
        if waiting:
            min(waiting, key=lambda c: c._waiting_since)._close(
                f"{self.max_connections} connections are open and this one was the slowest to send its request"
            )
        else:
            self._disarm()
            self._close("too many connections: try again", 503, "retry-after: 1\r\n")


def guarded_protocol(header_timeout_s: float) -> tuple[type[GuardedH11Protocol], int]:
    """For `uvicorn.run`: GuardedH11Protocol capped under the raised open-file limit, and the listen backlog (a burst
    accepted before the cap is looked at must fit in a quarter of the cap)."""
    cap = connection_cap(raise_open_file_limit())
    settings = {"header_timeout_s": header_timeout_s, "max_connections": cap}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), settings), max(16, min(2048, cap // 4))
