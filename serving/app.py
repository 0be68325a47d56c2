"""The prediction service: the current champion over HTTP, and a page to try it.

    python serving/app.py                       # http://127.0.0.1:8000, data dir ./data
    python serving/app.py --data-dir /srv/cifar --host 0.0.0.0 --port 8080
    CIFARFLOW_DATA_DIR=/srv/cifar uvicorn --factory serving.app:create_app

    POST /predict          multipart field `file` (one image)   → {"label", "probability", "top", "model_version",
                                                                   "prediction_id"}
    POST /predict/batch    several `file` fields (at most 64)   → [ … one result per file, in order … ]
    GET  /health           200 {"status": "ok", "model_version"}; 503 while there is no model, naming why
                           (a damaged file of the champion's version, and the fix)
    GET  /model            the serving version's record (preset, accuracy, dataset version, run, …)
    GET  /limits           the upload limits (bytes per request, files per batch, pixels per image)
    GET  /                 the page: choose or drop an image, see the top-3 classes, say whether it is right
    POST /feedback         JSON {"prediction_id", "label"} (a reviewer's token) → {"prediction_id", "label", "status"}
    GET  /review/queue     ?n=50&label=cat (a reviewer's token) → unanswered logged images, least confident first
    GET  /review/image/ID.png  the 32×32 image the model saw (a reviewer's token)
    GET  /review           the review page: label the queue in a grid, one key per class

Images are decoded by the product's rules (PNG, JPEG, WebP, BMP; any size, centre square resized to
32×32; grayscale, palette and RGBA made RGB). Bad input gets a 4xx JSON {"error": …}, never a 500:
an empty upload (400), a missing field or a text field where the file belongs (422), a file that is
not a usable image, whatever the decoder raised (415), a body over the size limit (413), too many
files (400); a batch with one bad file is refused whole, naming the file. Every status and body is
in the OpenAPI schema (/openapi.json). Decoding has a memory bound: the pixels decoded at once are
capped by a budget (`cifarflow.inference.decode_budget`); a request that cannot get its share in time
gets 503 with Retry-After. When the champion alias moves, the service switches models without a
restart (`cifarflow.inference.live`); requests in flight finish on the model they started with.
Concurrent requests are scored together in one model call (`cifarflow.inference.batcher`).
HEAD runs GET's route and drops the body (`HeadAsGet`). A request head is due within 10 s
(`--header-timeout`) and connections are capped below the open-file limit, the slowest closed to make
room (`serving.connections`).
Every scored image is appended to the prediction log (`cifarflow.monitoring.log`: its pixels, the
probabilities, the model version, no client address) off the request path; `--no-log` turns it off.
Answers (`POST /feedback`) go to the append-only feedback log (`cifarflow.feedback.answers`); they can
teach the next model, so they need a reviewer's token (`--review-token-file`, `$CIFARFLOW_REVIEW_TOKEN`;
`cifarflow.feedback.access`) unless the service listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from fastapi import Body, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cifarflow.cli import ArgumentParser, done, run_cli, run_command
from cifarflow.errors import StorageError
from cifarflow.feedback.access import (
    AccessDenied,
    ReviewAccess,
    Reviewer,
    TokenFile,
    listens_on_loopback,
    load_reviewers,
)
from cifarflow.feedback.answers import PREDICTION_ID, AnswerBook, new_answer
from cifarflow.feedback.queue import (
    DEFAULT_MEASURE,
    DEFAULT_ORDER,
    ORDERS,
    LogIndex,
    held_row,
    margins,
    queue_order,
    read_pixels,
)
from cifarflow.files import ensure_writable
from cifarflow.inference.batcher import MAX_IMAGES, MicroBatcher
from cifarflow.inference.decode_budget import (
    DEFAULT_PIXELS,
    WAIT_S,
    DecodeBudget,
    DecodeBusy,
    header_pixels,
    return_freed_memory,
)
from cifarflow.inference.live import POLL_S, LiveModel
from cifarflow.inference.predictor import Predictor
from cifarflow.intake.images import MAX_PIXELS, ImageRejected, convert_image, describe
from cifarflow.layout import DataLayout
from cifarflow.monitoring.log import PredictionLog, new_ids
from cifarflow.registry import store
from serving.connections import (
    HEADER_TIMEOUT_S,
    accept_backlog,
    connection_cap,
    guarded_protocol,
    raise_open_file_limit,
)

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per request; a phone photo is 2–6 MB
MAX_BATCH_FILES = 64
MAX_QUEUE = 500  # most items in one /review/queue answer
MAX_BUDGET_MP = 1_000_000  # --decode-budget's ceiling: far above any machine's memory, and finite
DRAIN_FACTOR = 4  # an over-limit body up to 4× the limit is read and discarded before the 413 (see BodyLimit)
STATIC = Path(__file__).parent / "static"
FEEDBACK_EXAMPLE = '{"prediction_id": "<the id /predict answered>", "label": "cat"}'
CURL_HINT = "attach the image as a file: curl -F file=@photo.jpg …"

log = logging.getLogger("cifarflow.serving")


# --- what the service answers (the OpenAPI schema is built from these) --------------------------------


class FieldProblem(BaseModel):
    loc: list[str] = Field(description="where: ['body', 'file'] for the form field `file`")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: what was wrong and what to do."""

    error: str = Field(description="a sentence for people, naming the file when one file was the problem")
    detail: list[FieldProblem] | None = Field(None, description="422 only: each problem with the request")


class ClassProbability(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    probability: float = Field(ge=0, le=1)
    top: list[ClassProbability] = Field(description="the 3 most probable classes, most probable first")
    model_version: str = Field(description="the registry version that scored the image")
    prediction_id: str = Field(description="this answer's id in the prediction log (a UUID4 in hex)")


class Health(BaseModel):
    status: str = Field(description="`ok`, or `no model` (503)")
    model_version: str | None = None
    damage: str | None = Field(
        None,
        description="200 only: a file of the served version damaged on disk since it was loaded, and the fix "
        "(the model in memory still serves; a restart would not load it)",
    )
    error: str | None = Field(
        None, description="503 only: why there is no model (a damaged registry file is named, with what to do)"
    )


class ModelRecord(BaseModel):
    """The serving version's record in the registry (fields it lacks are left out)."""

    version: str
    model: str | None = Field(None, description="the preset that built it")
    accuracy: float | None = Field(None, description="test accuracy, 0–1")
    test_images: int | None = None
    label_names: list[str]
    dataset_sha256: str | None = None
    batch_ids: list[str] | None = None
    run_name: str | None = None
    promoted_at: str | None = None
    decision: str | None = None
    id: str | None = Field(None, description="sha256 of the model file")
    smoke: dict[str, Any] | None = Field(None, description="the smoke test run before it was registered")
    temperature: float | None = Field(
        None, description="the calibration temperature its probabilities are scaled by (absent: uncalibrated)"
    )
    test_set_decisions: int | None = Field(None, description="promotion decisions its test set had served")


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(
        pattern=f"^{PREDICTION_ID.pattern}$", description="the `prediction_id` of a /predict answer"
    )
    label: str = Field(max_length=64, description="the right class (the predicted one to confirm it)")


class FeedbackAnswer(BaseModel):
    prediction_id: str
    label: str = Field(description="the class recorded as right")
    status: str = Field(description="`recorded`, or `replaced` when this prediction had an answer before")
    predicted: str = Field(description="the class the model answered")
    model_version: str = Field(description="the registry version that answered")
    reviewer: str = Field(description="who answered (the token's name; `local` on a loopback-only service)")


class QueueItem(BaseModel):
    prediction_id: str
    label: str = Field(description="the predicted class")
    probability: float = Field(ge=0, le=1, description="the top class probability")
    margin: float = Field(ge=0, le=1, description="top probability minus the second: the queue's order, smallest first")
    model_version: str
    time: str = Field(description="when it was scored (ISO 8601, UTC)")
    thumbnail: str = Field(description="URL of the 32×32 PNG the model saw (needs the same token)")


class ReviewQueue(BaseModel):
    order: str = Field(description="`least-confident` (the default) or `random`")
    measure: str = Field(description="the uncertainty measure of the order (`margin`: least margin first)")
    unanswered: int = Field(description="logged predictions with no answer yet (of the chosen class, if any)")
    items: list[QueueItem]


class Limits(BaseModel):
    max_upload_bytes: int = Field(description="most bytes in one request body, multipart framing included")
    max_batch_files: int = Field(description="most `file` fields in one /predict/batch request")
    max_pixels: int = Field(description="most pixels (width × height) in one image")


MODEL_FIELDS = tuple(ModelRecord.model_fields)
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
ERRORS: dict[int, str] = {
    400: "an empty upload, or more `file` fields than the batch limit; feedback: a body that is not JSON",
    401: "a review endpoint without a reviewer's token, or with a wrong one (`Authorization: Bearer <token>`)",
    403: "a review endpoint on a service reachable from other machines that has no review token configured",
    404: "no such path, or (feedback, review images) no logged prediction with that id",
    405: "the path exists, with another method",
    413: "the request body is over the size limit (see GET /limits)",
    415: "a file that is not a usable image (PNG, JPEG, WebP or BMP within the size limits), with the reason",
    422: "the form lacks the field `file`, or `file` is text, not a file upload; feedback: a label that is "
    "not a class, or a malformed prediction id",
    503: "no model loaded yet, or (for an upload) the decode budget stayed spent, with Retry-After: try again "
    "later; feedback: the answer could not be stored; review: the review token file cannot be used now",
}
API_DESCRIPTION = (
    "The registry's champion classifies CIFAR-10 images; the model is switched live when the champion moves. "
    'Every error is JSON `{"error": "…"}` (ErrorBody), on any path: '
    + "; ".join(f"{status}: {why}" for status, why in ERRORS.items())
    + "."
)


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses: each an ErrorBody, with the reason from ERRORS."""
    return {
        status: {"model": ErrorBody, "description": ERRORS[status]}
        | ({"headers": RETRY_AFTER} if status == 503 else {})
        for status in statuses
    }


class BadInput(Exception):
    """A request the service answers with an ErrorBody: `status`, the message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


# --- the body limit ------------------------------------------------------------------------------------


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413 before it is parsed: at once from its
    Content-Length, or as soon as a chunked body passes the limit.

    The rest of the body is read and discarded first, up to `DRAIN_FACTOR` × `limit` bytes in all,
    so that a client that writes its whole body before reading the answer (Python's urllib) reads
    the 413 rather than a reset connection. A longer body, or a client that waits for `100 Continue`
    before sending it (curl), gets the 413 at once, and the connection is closed."""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.drain_limit = app, limit, DRAIN_FACTOR * limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            drained = self.worth_draining(headers, int(length)) and await drain(receive, self.drain_limit)
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

    def worth_draining(self, headers: dict[bytes, bytes], length: int) -> bool:
        """Read an over-limit body of `length` bytes before answering? Not past the drain limit, and not
        when the client waits for `100 Continue` (it has sent nothing and sends nothing on a 413)."""
        return length <= self.drain_limit and headers.get(b"expect", b"").lower() != b"100-continue"


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
    """An HTTPException so that FastAPI re-raises it from form parsing instead of answering 400;
    `drained`: the rest of the body was read, so the connection can stay open."""

    def __init__(self, drained: bool):
        super().__init__(413)
        self.drained = drained


def too_large(limit: int, drained: bool = True) -> JSONResponse:
    headers = None if drained else {"Connection": "close"}
    return JSONResponse({"error": f"the upload is over the {limit / 2**20:g} MiB limit"}, 413, headers)


class HeadAsGet:
    """HEAD answered by GET's own route with the body dropped (RFC 9110, 9.3.2): its status and headers
    (Content-Length, Content-Type, …) are GET's by construction, on every path, errors included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            await send({**message, "body": b""} if message["type"] == "http.response.body" else message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


# --- decoding and scoring ------------------------------------------------------------------------------


def decode_upload(upload: UploadFile, name: str, budget: DecodeBudget | None):
    """One upload → (32, 32, 3) uint8 pixels, holding its pixels of `budget` while it decodes.
    BadInput: 400 empty, 415 for anything decoding raises (the file's fault: this request alone),
    503 with Retry-After when the budget stays spent for the whole wait."""
    data = upload.file.read()
    if not data:
        raise BadInput(400, f"{name}: the upload is empty (0 bytes)")
    try:
        with budget.hold(header_pixels(data)) if budget else nullcontext():
            return convert_image(data).pixels
    except ImageRejected as rejected:
        raise BadInput(415, f"{name}: not a usable image: {rejected}") from None
    except DecodeBusy as busy:
        raise BadInput(503, f"{name}: {busy}", {"Retry-After": str(busy.retry_after_s)}) from None
    except Exception as error:  # what escapes the decoder's own boundary (reading the header): this file's all the same
        log.warning("decoding %s raised %s", name, describe(error), exc_info=True)
        raise BadInput(415, f"{name}: not a usable image: does not decode: {describe(error)}") from None


def predict_uploads(
    predictor: Predictor,
    uploads: list[UploadFile],
    batcher: MicroBatcher | None,
    budget: DecodeBudget | None,
    prediction_log: PredictionLog | None,
) -> list[dict]:
    """Decode every upload (any bad one fails the request, naming it), then score them together with
    the other requests waiting (micro-batching), or alone when micro-batching is off; log what was scored."""
    import numpy as np

    pixels = np.stack([decode_upload(u, u.filename or f"file {i + 1}", budget) for i, u in enumerate(uploads)])
    probabilities = batcher.probabilities(predictor, pixels) if batcher else predictor.probabilities(pixels)
    ids = new_ids(len(pixels))
    if prediction_log is not None:
        prediction_log.append(ids, "service", predictor.version, probabilities, pixels)
    tops = predictor.top(probabilities)
    return [
        {**top[0], "top": top, "model_version": predictor.version, "prediction_id": id_} for top, id_ in zip(tops, ids)
    ]


# --- validation errors ---------------------------------------------------------------------------------


def field_problems(errors: Sequence[dict]) -> list[dict]:
    """FastAPI's validation errors as plain JSON: where, what, which kind; never the input or its
    context (an exception object, or the user's whole text field)."""
    return [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]


def describe_problem(problem: dict) -> str:
    """One problem for people; for the field `file`, what to do (curl's @ is the usual slip)."""
    field = ".".join(problem["loc"][1:]) or "body"
    if problem["type"] == "missing" and problem["loc"] == ["body"]:
        return f"the body must be a JSON object: {FEEDBACK_EXAMPLE}"
    if problem["type"] == "missing":
        return f"missing form field: {field} (send the image as multipart field `file`; {CURL_HINT})"
    if problem["loc"] == ["body"]:  # no body, or not a JSON object at all (a form, a list, a string)
        return f"the body must be a JSON object: {FEEDBACK_EXAMPLE}"
    if problem["loc"][1:2] == ["file"]:
        return f"the field `file` must be a file upload, not text ({CURL_HINT})"
    return f"{field}: {problem['msg']}"


# --- the app -------------------------------------------------------------------------------------------


def create_app(
    data_dir: Path | None = None,
    model: str = store.ALIAS,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_batch_files: int = MAX_BATCH_FILES,
    poll_s: float = POLL_S,
    max_batch_images: int = MAX_IMAGES,
    decode_budget_pixels: int | None = DEFAULT_PIXELS,
    decode_wait_s: float = WAIT_S,
    log_predictions: bool = True,
    reviewers: list[Reviewer] | None = None,
    loopback_only: bool = False,
    review_token_file: Path | None = None,
) -> FastAPI:
    """The service on `data_dir`'s registry (default $CIFARFLOW_DATA_DIR, else ./data), serving `model`.

    `max_upload_bytes`: the largest request body; `max_batch_files`: the most files in one batch;
    `max_batch_images`: the most images scored in one model call (1: each request alone);
    `decode_budget_pixels`: the most pixels decoded at once over all requests (None: no bound), a
    request waiting up to `decode_wait_s` seconds for its share before a 503; `log_predictions`: append
    every scored image to the data dir's prediction log (monitoring/log/); `reviewers`: who may answer
    (None: from $CIFARFLOW_REVIEW_TOKEN), and those of `review_token_file` (read again whenever it changes);
    `loopback_only`: the service listens on 127.0.0.1 alone, so with no reviewers anyone on this machine
    may answer (`cifarflow.feedback.access`)."""
    data_dir = Path(data_dir or os.environ.get("CIFARFLOW_DATA_DIR", "data")).resolve()
    layout = DataLayout(data_dir)
    tokens = TokenFile(review_token_file) if review_token_file is not None else None
    access = ReviewAccess(load_reviewers(None, os.environ) if reviewers is None else reviewers, loopback_only, tokens)
    answers = AnswerBook(layout.feedback_answers, warn=log.warning)
    index = LogIndex(layout.prediction_log, warn=log.warning)
    live = LiveModel(DataLayout(data_dir).registry, model, poll_s, log=log.warning)
    budget = DecodeBudget(decode_budget_pixels, decode_wait_s) if decode_budget_pixels else None
    limits = Limits(max_upload_bytes=max_upload_bytes, max_batch_files=max_batch_files, max_pixels=MAX_PIXELS)
    batcher: MicroBatcher | None = None
    prediction_log: PredictionLog | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal batcher, prediction_log
        if not return_freed_memory():
            log.warning("no mallopt in this C library: freed image memory may stay with the process")
        live.start()
        batcher = MicroBatcher(max_batch_images) if max_batch_images > 1 else None
        if log_predictions:
            prediction_log = start_prediction_log(DataLayout(data_dir).prediction_log)
        yield
        if batcher:
            batcher.close()
        if prediction_log:
            prediction_log.close()  # what waits is written before the process ends
        live.stop()

    app = FastAPI(
        title="CIFAR-10 classifier", description=API_DESCRIPTION, lifespan=lifespan, responses=documented(413)
    )
    app.state.live, app.state.decode_budget = live, budget
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_error_handlers(app, max_upload_bytes)

    def serving() -> Predictor:
        predictor = live.predictor  # one read: the whole request uses this model, even if it is swapped
        if predictor is None:
            raise BadInput(503, live.problem or "no model loaded")
        return predictor

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get(
        "/health",
        response_model=Health,
        response_model_exclude_none=True,
        responses={503: {"model": Health, "description": "no model loaded yet: the error says why"}},
    )
    def health():
        predictor = live.predictor
        if predictor is None:
            return JSONResponse({"status": "no model", "error": live.problem}, status_code=503)
        return {"status": "ok", "model_version": predictor.version, "damage": live.damage}

    @app.get("/model", response_model=ModelRecord, response_model_exclude_none=True, responses=documented(503))
    def model_info():
        predictor = serving()
        # ModelRecord keeps version.json's names (`model`: the preset, `dataset_sha256`: the dataset version)
        facts = predictor.record.to_json() if predictor.record else {"id": predictor.model_id}
        record = {key: value for key, value in facts.items() if key in MODEL_FIELDS}
        return record | {"version": predictor.version, "label_names": predictor.label_names}

    @app.get("/limits", response_model=Limits)
    def upload_limits():
        return limits

    @app.post("/predict", response_model=Prediction, responses=documented(400, 415, 422, 503))
    def predict(file: UploadFile = File(..., description="the image: PNG, JPEG, WebP or BMP")):
        return predict_uploads(serving(), [file], batcher, budget, prediction_log)[0]

    @app.post("/predict/batch", response_model=list[Prediction], responses=documented(400, 415, 422, 503))
    def predict_batch(file: list[UploadFile] = File(..., description=f"the images, at most {max_batch_files}")):
        if len(file) > max_batch_files:
            raise BadInput(400, f"{len(file)} files in one request; at most {max_batch_files}")
        return predict_uploads(serving(), file, batcher, budget, prediction_log)

    # --- learning from use: answers and the review queue (a reviewer's token) ---------------------------

    @app.middleware("http")
    async def reviewers_only(request: Request, call_next):
        """The token is checked here, before anything else (a stranger's body is never read, parsed or
        judged), and the reviewer's name kept for the endpoint: `request.state.reviewer`. An endpoint the
        check skipped has no name there and fails closed."""
        path, method, headers = request.url.path, request.method, request.headers  # another method: the 405
        if (path == "/feedback" and method == "POST") or (path.startswith("/review/") and method in ("GET", "HEAD")):
            forwarded = "forwarded" in headers or "x-forwarded-for" in headers
            try:
                request.state.reviewer = access.reviewer(headers.get("authorization"), headers.get("host"), forwarded)
            except AccessDenied as denied:
                challenge = {"WWW-Authenticate": "Bearer"} if denied.status == 401 else None
                return JSONResponse({"error": str(denied)}, status_code=denied.status, headers=challenge)
        return await call_next(request)

    def logged(prediction_id: str):
        """([log file], row) of a logged prediction; one just made may still wait in the writer: flush it. One
        the writer holds because the disk refuses writes: (its held rows, row)."""
        index.refresh()
        found = index.find(prediction_id)
        if found is None and prediction_log is not None and prediction_log.flush():
            index.refresh()
            found = index.find(prediction_id)
        if found is not None:
            return [found[0]], found[1]
        held = prediction_log.held([prediction_id]) if prediction_log is not None else None
        if held is not None and held.num_rows:
            return held, held_row(held)
        off = "" if prediction_log is not None else " (this service keeps no prediction log: --no-log)"
        raise BadInput(404, f"no logged prediction {prediction_id}{off}")

    @app.post(
        "/feedback", response_model=FeedbackAnswer, responses=documented(400, 401, 403, 404, 422, 503), tags=["review"]
    )
    def feedback(request: Request, answer: FeedbackRequest = Body(...)):
        """Say which class a logged prediction really is (its own label to confirm it). The last answer
        for a prediction counts; every answer is kept in the append-only feedback log."""
        name = request.state.reviewer
        label_names = serving().label_names
        label = class_named(answer.label, label_names)
        _, row = logged(answer.prediction_id)
        predicted = label_names[int(row.probabilities.argmax())] if len(row.probabilities) == len(label_names) else ""
        recorded = new_answer(answer.prediction_id, label, predicted, row.model_version, name)
        try:
            replaced = answers.record(recorded)
        except OSError as error:
            log.error("feedback not recorded: %s", error)
            raise BadInput(503, f"the answer could not be stored: {error.strerror or error}") from None
        log.info("feedback from %s: %s is %s (model said %s)", name, answer.prediction_id, label, predicted)
        status = "replaced" if replaced else "recorded"
        return {**asdict(recorded), "status": status}

    @app.get("/review", include_in_schema=False)
    def review_page():
        return FileResponse(STATIC / "review.html")

    @app.get("/review/queue", response_model=ReviewQueue, responses=documented(401, 403, 422, 503), tags=["review"])
    def review_queue(
        n: int = Query(50, ge=1, le=MAX_QUEUE, description="how many items"),
        label: str | None = Query(None, description="only images predicted as this class"),
        order: Literal[ORDERS] = Query(  # type: ignore[valid-type]
            DEFAULT_ORDER, description="least confident (smallest margin) first, or a random order"
        ),
    ):
        """Logged predictions nobody has answered yet, least confident (smallest margin) first."""
        label_names = serving().label_names
        label = None if label is None else class_named(label, label_names)
        if prediction_log is not None:
            prediction_log.flush(timeout=2)  # an image scored a moment ago is in the queue too
        index.refresh()
        ids, times, versions, probabilities = index.rows(classes=len(label_names))  # the serving label set's
        try:
            answered = set(answers.refresh())
        except OSError as error:  # the feedback log is a directory, or unreadable: say which file
            raise BadInput(503, error.strerror or str(error)) from None
        ranked = queue_order(ids, probabilities, answered, label_names, label, order=order)
        chosen = ranked[:n]
        items = [
            {
                "prediction_id": str(ids[i]),
                "label": label_names[int(probabilities[i].argmax())],
                "probability": float(p),
                "margin": float(m),
                "model_version": str(versions[i]),
                "time": str(times[i].astype("datetime64[s]")) + "Z",
                "thumbnail": f"/review/image/{ids[i]}.png",
            }
            for i, p, m in zip(chosen, probabilities[chosen].max(axis=1), margins(probabilities[chosen]))
        ]
        return {"order": order, "measure": DEFAULT_MEASURE, "unanswered": len(ranked), "items": items}

    @app.get(
        "/review/image/{prediction_id}.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the 32×32 RGB image"}}
        | documented(401, 403, 404, 422, 503),
        tags=["review"],
    )
    def review_image(prediction_id: str):
        """The 32×32 image a logged prediction scored, as PNG."""
        where, _ = logged(prediction_id)
        pixels = read_pixels(where, [prediction_id], warn=log.warning).get(prediction_id)
        if pixels is None:
            raise BadInput(404, f"no logged prediction {prediction_id}")
        return Response(png_bytes(pixels), media_type="image/png", headers={"Cache-Control": "no-store"})

    app.add_middleware(HeadAsGet)  # the outermost layer: everything inside sees a GET
    return app


def class_named(text: str, label_names: list[str]) -> str:
    """The class `text` names (any case, surrounding spaces ignored); BadInput 422 listing the classes."""
    label = next((c for c in label_names if c.lower() == text.strip().lower()), None)
    if label is None:
        raise BadInput(422, f"{text!r} is not a class: one of {', '.join(label_names)}")
    return label


def png_bytes(pixels) -> bytes:
    """(32, 32, 3) uint8 → PNG bytes (lossless: the exact pixels)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def start_prediction_log(root: Path) -> PredictionLog | None:
    """The prediction log's writer, or None (said once in the log) when its folder cannot be written: the
    service answers all the same, it only keeps no log."""
    try:
        ensure_writable(root)
    except StorageError as error:
        log.warning("the prediction log is off: %s", error)
        return None
    return PredictionLog(root, warn=log.warning).start()


def add_error_handlers(app: FastAPI, max_upload_bytes: int) -> None:
    """Every error as an ErrorBody JSON answer, whatever raised it."""

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, error: BadInput):
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge):
        return too_large(max_upload_bytes, error.drained)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):  # 404, 405, a malformed body
        message = str(error.detail)
        if error.status_code == 400 and request.url.path == "/feedback":  # FastAPI's "error parsing the body"
            message = f"the body is not JSON ({message}): send {FEEDBACK_EXAMPLE} as application/json"
        return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        problems = field_problems(error.errors())
        message = "; ".join(dict.fromkeys(map(describe_problem, problems))) or "invalid request"
        return JSONResponse({"error": message, "detail": problems}, status_code=422)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=store.ALIAS, help="champion (default, followed live), vN, or a path")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=MAX_IMAGES,
        help=f"most images of concurrent requests scored in one model call (default {MAX_IMAGES}; 1: each alone)",
    )
    parser.add_argument(
        "--decode-budget",
        type=float,
        default=DEFAULT_PIXELS / 1e6,
        metavar="MP",
        help=f"most megapixels decoded at once over all requests, bounding memory (default {DEFAULT_PIXELS / 1e6:g}; "
        "0: no bound); a request waits for its share, then gets 503 with Retry-After",
    )
    parser.add_argument(
        "--review-token-file",
        type=Path,
        metavar="PATH",
        help="who may answer (POST /feedback) and review: one `name:token` per line; without it (and without "
        "$CIFARFLOW_REVIEW_TOKEN) only a service on 127.0.0.1 takes answers",
    )
    parser.add_argument(
        "--no-log",
        action="store_true",
        help="do not keep the prediction log (by default every scored image and its answer are appended to "
        "<data dir>/monitoring/log/ for the monitor flow)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT_S,
        metavar="S",
        help=f"seconds a client has to send a request head, and between two pieces of a body, before it gets 408 "
        f"and is closed (default {HEADER_TIMEOUT_S:g}; serving/connections.py)",
    )
    return parser


def check_arguments(parser: ArgumentParser, args: argparse.Namespace) -> int | None:
    """The decode budget in pixels (None: no bound); a value out of range ends the command as argparse's
    own refusals do (usage, `error: …`, exit 2), and an unusable review token file as a PipelineInputError
    (`error: …`, exit 2). The reviewers are kept in `args.reviewers`."""
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
    return round(args.decode_budget * 1e6) or None


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
        reviewers=None,  # $CIFARFLOW_REVIEW_TOKEN's
        loopback_only=listens_on_loopback(args.host),
        review_token_file=args.review_token_file,
    )
    who = ", ".join(r.name for r in args.reviewers) or (
        "anyone on this machine" if listens_on_loopback(args.host) else "nobody"
    )
    log.info("answers (POST /feedback) taken from: %s", who)
    open_files = raise_open_file_limit()
    cap = connection_cap(open_files)
    log.info(
        "at most %d connections (open-file limit %d); a request head is due within %g s",
        cap,
        open_files,
        args.header_timeout,
    )
    protocol = guarded_protocol(args.header_timeout, cap)
    uvicorn.run(app, host=args.host, port=args.port, http=protocol, backlog=accept_backlog(cap))
    return done("the service stopped")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser, lambda args: check_arguments(parser, args), run_service, argv, what="the service")


if __name__ == "__main__":
    sys.exit(run_command(main))
