"""What slow or many clients get: the service's HTTP connections, guarded (uvicorn's h11 protocol, plus two rules).

uvicorn waits for a request head as long as the client keeps the connection open, and each connection
holds a file descriptor: 1,100 clients sending their headers one line every 5 s spend a 1,024-descriptor
limit, after which the service accepts nobody and /health times out for everyone. Two rules keep the
service answering others:

- **Head and body timeout.** A request head must be complete within `header_timeout_s` of the
  connection opening (or of the previous answer on a kept-alive connection), and each piece of a body
  must follow the previous one within that time (while the service itself has paused reading a body, the
  check waits), also the rest of a body the service has already answered (400, 413); otherwise the
  client gets 408 (or, already answered, nothing more) and the connection is closed. Trickling bytes
  does not restart the head's clock.
- **A connection cap below the open-file limit** (`connection_cap`): when a new connection would pass
  it, the connection that has waited longest for its client (head or body still due) is closed with 408
  to make room; when none is waiting, the new one gets 503 with Retry-After and is closed. The service
  never runs out of descriptors, so it never stops accepting.

The service (serving/app.py) raises its soft open-file limit to the hard one at start
(`raise_open_file_limit`). Under plain uvicorn: `--http serving.connections:GuardedH11Protocol`.
"""

from __future__ import annotations

import json
import resource
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0  # a browser sends its head in one packet; a phone on a bad link in well under this
RESERVED_FILES = 64  # descriptors kept for the model, the logs, the listening socket
MAX_CONNECTIONS = 10_000  # beyond this many at once, a proxy belongs in front


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(open_files: int | None = None) -> int:
    """The most connections held at once under `open_files` descriptors (default: the soft limit now): half
    of what the reserve leaves, since a request may hold two (its socket, and its upload spooled to a
    temporary file); at least 1, at most MAX_CONNECTIONS."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, (open_files - RESERVED_FILES) // 2))


def accept_backlog(max_connections: int) -> int:
    """The listening socket's backlog for a cap of `max_connections`: asyncio accepts up to this many
    connections in one go before the cap is looked at, so a burst must fit in the descriptors the cap
    leaves free (a quarter of the cap: a few bursts fit in the other half)."""
    return max(16, min(2048, max_connections // 4))


def canned(status: int, reason: str, message: str, headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer with an ErrorBody, closing the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{headers}\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the head/body timeout and the connection cap (the module's two rules).
    `guarded_protocol` makes one with other settings."""

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
        """Whether the client owes the service bytes: a request head, or a body (`_in_body`) not paused by us."""
        return not self.transport.is_closing() and (self.conn.their_state is h11.IDLE or self._receiving_body())

    def _in_body(self) -> bool:
        """Whether the client is sending a request body: one the service reads, or the rest of one it has
        already answered (a 400, a 413: the connection waits for that rest before it can take a next request)."""
        return self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (h11.SEND_RESPONSE, h11.DONE)

    def _receiving_body(self) -> bool:
        return self._in_body() and not self.flow.read_paused  # paused by the service itself: not the client's delay

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

    def _close(self, why: str) -> None:
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # not answered yet: say why
            self.transport.write(canned(408, "Request Timeout", why))
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
            self.transport.write(
                canned(503, "Service Unavailable", "too many connections: try again", "retry-after: 1\r\n")
            )
            self.transport.close()


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[GuardedH11Protocol]:
    """GuardedH11Protocol with these settings, for `uvicorn.run(…, http=…)`."""
    settings = {"header_timeout_s": header_timeout_s, "max_connections": max_connections}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), settings)
