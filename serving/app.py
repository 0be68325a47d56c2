"""The prediction service: the registry's champion over HTTP, switched live when it moves, and a page to try
it; every route and error is in /openapi.json. Run `python serving/app.py`, or under uvicorn:
`CIFARFLOW_DATA_DIR=data uvicorn --factory serving.app:create_app`."""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from cifarflow.cli import ArgumentParser, done, fail, run_cli
from cifarflow.errors import StorageError
from cifarflow.feedback.answers import AnswerBook
from cifarflow.files import ensure_writable
from cifarflow.inference.batcher import MAX_IMAGES, MicroBatcher
from cifarflow.inference.decode_budget import DEFAULT_PIXELS, WAIT_S, DecodeBudget, return_freed_memory
from cifarflow.inference.live import POLL_S, LiveModel
from cifarflow.intake.images import MAX_PIXELS
from cifarflow.layout import DataLayout
from cifarflow.monitoring.log import PredictionLog
from cifarflow.registry import store
from serving import model_routes, predict_routes, review_routes, v2_routes
from serving.access import ReviewAccess, Reviewer, listens_on_loopback, load_reviewers, refused
from serving.connections import HEADER_TIMEOUT_S, guarded_protocol
from serving.http_errors import API_DESCRIPTION, add_error_handlers, documented
from serving.predict_routes import STATIC, Limits

MAX_UPLOAD_BYTES = 10 * 2**20  # per request; a phone photo is 2–6 MB
MAX_BATCH_FILES = 64
MAX_BUDGET_MP = 1_000_000  # --decode-budget's ceiling: far above any machine's memory, and finite
DRAIN_FACTOR = 4  # an over-limit body up to 4× the limit is read and discarded before the 413 (see BodyLimit)

log = logging.getLogger("cifarflow.serving")


class BodyLimit:
    """413 for a body over `limit` bytes (Content-Length, or counted). The rest is drained up to DRAIN_FACTOR × `limit`
    so that a client writing its whole body first reads the 413; past that, or for `Expect: 100-continue`, close."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.drain_limit = app, limit, DRAIN_FACTOR * limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            # not past the drain limit, and not when the client waits for `100 Continue` (it sends nothing)
            worth = int(length) <= self.drain_limit and headers.get(b"expect", b"").lower() != b"100-continue"
            drained = worth and await drain(receive, self.drain_limit)
            return await too_large(self.limit, drained)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                rest_read = not message.get("more_body") or await drain(receive, self.drain_limit - seen)
                raise BodyTooLarge(rest_read)
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge as error:  # raised outside FastAPI's exception handlers
            await too_large(self.limit, error.drained)(scope, receive, send)


async def drain(receive, most: int) -> bool:
    """Read and discard the rest of a request body; False (stop reading) once it passes `most` bytes."""
    read = 0
    while read <= most:
        message = await receive()
        read += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return read <= most
    return False


class BodyTooLarge(HTTPException):
    """An HTTPException, so that form parsing re-raises it (not 400); `drained`: the connection can stay open."""

    def __init__(self, drained: bool):
        super().__init__(413)
        self.drained = drained


def too_large(limit: int, drained: bool = True) -> JSONResponse:
    headers = None if drained else {"Connection": "close"}
    return JSONResponse({"error": f"the upload is over the {limit / 2**20:g} MiB limit"}, 413, headers)


class HeadAsGet:
    """HEAD answered by GET's route, body dropped (RFC 9110, 9.3.2): GET's status and headers on every path."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            await send({**message, "body": b""} if message["type"] == "http.response.body" else message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def start_prediction_log(root: Path) -> PredictionLog | None:
    """The prediction log's writer, or None (logged once) when its folder cannot be written; the service answers."""
    try:
        ensure_writable(root.parent)
    except StorageError as error:
        log.warning("the prediction log is off: %s", error)
        return None
    return PredictionLog(root, warn=log.warning).start()


def create_app(
    data_dir: Path | None = None,
    model: str = store.ALIAS,
    poll_s: float = POLL_S,
    max_batch_images: int = MAX_IMAGES,
    decode_budget_pixels: int | None = DEFAULT_PIXELS,
    decode_wait_s: float = WAIT_S,
    log_predictions: bool = True,
    reviewers: list[Reviewer] | None = None,
    loopback_only: bool = False,
    review_token_file: Path | None = None,
) -> FastAPI:
    """The service on `data_dir`'s registry (default $CIFARFLOW_DATA_DIR, else ./data), serving `model`;
    `max_batch_images` 1: each request alone; `decode_budget_pixels` None: no bound; `reviewers` None:
    $CIFARFLOW_REVIEW_TOKEN's, with `review_token_file`'s; `loopback_only`: without reviewers, this host may answer."""
    layout = DataLayout(Path(data_dir or os.environ.get("CIFARFLOW_DATA_DIR", "data")).resolve())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not return_freed_memory():
            log.warning("no mallopt in this C library: freed image memory may stay with the process")
        state = app.state
        state.live.start()
        state.batcher = MicroBatcher(max_batch_images) if max_batch_images > 1 else None
        state.prediction_log = start_prediction_log(layout.prediction_log) if log_predictions else None
        yield
        if state.batcher:
            state.batcher.close()
        if state.prediction_log:
            state.prediction_log.close()  # what waits is written before the process ends
        state.live.stop()

    app = FastAPI(title="Image classifier", description=API_DESCRIPTION, lifespan=lifespan, responses=documented(413))
    reviewers = load_reviewers(None, os.environ) if reviewers is None else reviewers
    app.state.access = ReviewAccess(reviewers, loopback_only, review_token_file)
    app.state.live = LiveModel(layout.registry, model, poll_s, log=log.warning)
    app.state.decode_budget = DecodeBudget(decode_budget_pixels, decode_wait_s) if decode_budget_pixels else None
    app.state.limits = Limits(max_upload_bytes=MAX_UPLOAD_BYTES, max_batch_files=MAX_BATCH_FILES, max_pixels=MAX_PIXELS)
    app.state.answers = AnswerBook(layout.prediction_log)
    app.state.log_path = layout.prediction_log
    app.state.batcher = app.state.prediction_log = None  # set while the lifespan runs
    for routes in (predict_routes, model_routes, review_routes, v2_routes):
        app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_error_handlers(app, refused)
    app.add_exception_handler(BodyTooLarge, lambda request, error: too_large(MAX_UPLOAD_BYTES, error.drained))
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD_BYTES)
    app.add_middleware(HeadAsGet)  # the outermost layer: everything inside sees a GET
    return app


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=store.ALIAS, help="champion (default, followed live), vN, or a path")
    parser.add_argument(
        "--max-batch", type=int, default=MAX_IMAGES, help="most images per model call (default %(default)s)"
    )
    parser.add_argument(
        "--decode-budget",
        type=float,
        default=DEFAULT_PIXELS / 1e6,
        metavar="MP",
        help="most megapixels decoded at once, bounding memory (default %(default)g; 0: no bound); a request "
        "waits for its share, then gets 503 with Retry-After",
    )
    parser.add_argument(
        "--review-token-file",
        type=Path,
        metavar="PATH",
        help="who may answer and review: one `name:token` per line; without it (and $CIFARFLOW_REVIEW_TOKEN) "
        "only a service on 127.0.0.1 takes answers",
    )
    parser.add_argument("--no-log", action="store_true", help="keep no prediction log (the monitor flow reads it)")
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT_S,
        metavar="S",
        help="seconds a client has for its request head, and between two pieces of a body, before a 408 "
        "(default %(default)g)",
    )
    return parser


def check_arguments(parser: ArgumentParser, args: argparse.Namespace) -> int | None:
    """The decode budget in pixels (None: no bound), `args.reviewers` set; a bad value or token file: exit 2."""
    args.reviewers = load_reviewers(args.review_token_file, dict(os.environ))
    if args.max_batch < 1:
        parser.error(f"--max-batch must be at least 1, got {args.max_batch}")
    if not (math.isfinite(args.decode_budget) and 0 <= args.decode_budget <= MAX_BUDGET_MP):
        parser.error(
            f"--decode-budget must be 0 (no bound) to {MAX_BUDGET_MP:,} megapixels, got {args.decode_budget:g}"
        )
    if not (math.isfinite(args.header_timeout) and args.header_timeout > 0):
        parser.error(f"--header-timeout must be a positive number of seconds, got {args.header_timeout:g}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0 to 65535, got {args.port}")
    if problem := address_problem(args.host, args.port):
        parser.error(problem)
    return round(args.decode_budget * 1e6) or None


def address_problem(host: str, port: int) -> str | None:
    """Why the service could not listen on host:port (taken, not this machine's), or None; port 0 is any free port."""
    if port == 0:
        return None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as error:
        return (
            f"cannot listen on {host}:{port}: {error.strerror or error} (another service there? --port picks another)"
        )
    return None


def run_service(args: argparse.Namespace, budget: int | None) -> int:
    """Serve until stopped (Ctrl-C, SIGTERM)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(
        args.data_dir,
        args.model,
        max_batch_images=args.max_batch,
        decode_budget_pixels=budget,
        log_predictions=not args.no_log,
        loopback_only=listens_on_loopback(args.host),
        review_token_file=args.review_token_file,
    )
    local = "anyone on this machine" if listens_on_loopback(args.host) else "nobody"
    log.info("answers (POST /feedback) taken from: %s", ", ".join(r.name for r in args.reviewers) or local)
    protocol, backlog = guarded_protocol(args.header_timeout)
    log.info("at most %d connections; a request head is due within %g s", protocol.max_connections, args.header_timeout)
    try:
        uvicorn.run(app, host=args.host, port=args.port, http=protocol, backlog=backlog)
    except SystemExit as stopped:  # uvicorn's way out when it cannot listen (the port taken since the check)
        return fail(f"the service could not listen on {args.host}:{args.port} (uvicorn exit {stopped.code}; see above)")
    return done("the service stopped")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser, lambda args: check_arguments(parser, args), run_service, argv, what="the service")


if __name__ == "__main__":
    sys.exit(main())
