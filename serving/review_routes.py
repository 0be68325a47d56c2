"""Learning from use: POST /feedback, GET /review/queue, GET /review/image/ID.png (reviewers only), GET /review."""

from __future__ import annotations

import io
import logging
from dataclasses import asdict
from typing import Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from cifarflow.feedback.answers import MAX_LABEL, PREDICTION_ID, new_answer
from cifarflow.feedback.queue import DEFAULT_MEASURE, DEFAULT_ORDER, ORDERS, margins, unanswered
from cifarflow.monitoring.log import Logged, find
from cifarflow.paths import name_key
from serving.access import require_reviewer
from serving.http_errors import BadInput, documented
from serving.model_routes import served_model
from serving.predict_routes import STATIC

MAX_QUEUE = 500  # most items in one /review/queue answer

log = logging.getLogger("cifarflow.serving")
router = APIRouter()


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(pattern=f"^{PREDICTION_ID.pattern}$", description="a /predict answer's `prediction_id`")
    label: str = Field(max_length=MAX_LABEL, description="the right class (the predicted one to confirm it)")


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
    thumbnail: str = Field(description="URL of the PNG the model saw, at its data set's size (needs the same token)")


class ReviewQueue(BaseModel):
    order: str = Field(description="`least-confident` (the default) or `random`")
    measure: str = Field(description="the uncertainty measure of the order (`margin`: least margin first)")
    unanswered: int = Field(description="logged predictions with no answer yet (of the chosen class, if any)")
    items: list[QueueItem]


def class_named(text: str, label_names: list[str]) -> str:
    """The class `text` names (any case, surrounding spaces ignored); BadInput 422 listing the classes."""
    label = next((c for c in label_names if name_key(c) == name_key(text.strip())), None)
    if label is None:
        raise BadInput(422, f"{text!r} is not a class: one of {', '.join(label_names)}")
    return label


def logged(state, prediction_id: str) -> Logged:
    """A logged prediction with its pixels, also one the writer still holds (flushed, or found there while the
    disk refuses writes); BadInput 404 for none, 503 naming the log database when it cannot be read."""
    prediction_log = state.prediction_log
    try:
        found = find(state.log_path, [prediction_id])
        if not found and prediction_log is not None:
            flushed = prediction_log.flush()
            found = find(state.log_path, [prediction_id]) if flushed else prediction_log.held([prediction_id])
    except OSError as error:
        raise BadInput(503, str(error)) from None
    if prediction_id in found:
        return found[prediction_id]
    off = "" if prediction_log is not None else " (this service keeps no prediction log: --no-log)"
    raise BadInput(404, f"no logged prediction {prediction_id}{off}")


def png_bytes(pixels) -> bytes:
    """(S, S, 3) uint8 → PNG bytes (lossless: the exact pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@router.post(
    "/feedback", response_model=FeedbackAnswer, responses=documented(400, 401, 403, 404, 422, 503), tags=["review"]
)
def feedback(request: Request, answer: FeedbackRequest = Body(...), reviewer: str = Depends(require_reviewer)):
    """Say which class a logged prediction really is: JSON `{"prediction_id", "label"}` (its own label confirms it;
    any case); the last answer counts (`status`: `recorded` or `replaced`). Needs `Authorization: Bearer <token>`
    unless the service has no tokens and listens on 127.0.0.1 only. 400: not JSON; 401: no or wrong token; 403:
    reviewing is off; 404: no logged prediction with that id; 422: not a class, or a malformed id; 503: no model, or
    the answer could not be stored."""
    label_names = served_model(request).label_names
    label = class_named(answer.label, label_names)
    row = logged(request.app.state, answer.prediction_id)
    predicted = label_names[int(row.probabilities.argmax())] if len(row.probabilities) == len(label_names) else ""
    recorded = new_answer(answer.prediction_id, label, predicted, row.model_version, reviewer)
    try:
        replaced = request.app.state.answers.record(recorded)
    except OSError as error:
        log.error("feedback not recorded: %s", error)
        raise BadInput(503, f"the answer could not be stored: {error.strerror or error}") from None
    log.info("feedback from %s: %s is %s (model said %s)", reviewer, answer.prediction_id, label, predicted)
    return {**asdict(recorded), "status": "replaced" if replaced else "recorded"}


@router.get("/review", include_in_schema=False)
def review_page():
    """The review page: answer the least confident predictions (serving/static/review.html)."""
    return FileResponse(STATIC / "review.html")


@router.get("/review/queue", response_model=ReviewQueue, responses=documented(401, 403, 422, 503), tags=["review"])
def review_queue(
    request: Request,
    reviewer: str = Depends(require_reviewer),
    n: int = Query(50, ge=1, le=MAX_QUEUE, description="how many items"),
    label: str | None = Query(None, description="only images predicted as this class"),
    order: Literal[ORDERS] = Query(DEFAULT_ORDER, description="smallest margin first, or random"),  # type: ignore[valid-type]
):
    """Logged predictions nobody has answered yet, least confident (smallest margin) first, or `order=random`: `n`
    items (1–500, default 50), optionally only those predicted as `label`; each with its `thumbnail` URL, and the
    `unanswered` count. Same token as POST /feedback (401, 403); 422: a bad `n`, `order` or class; 503: no model, or
    the prediction log cannot be read."""
    label_names = served_model(request).label_names
    wanted = None if label is None else label_names.index(class_named(label, label_names))
    if request.app.state.prediction_log is not None:
        request.app.state.prediction_log.flush(timeout=2)  # an image scored a moment ago is in the queue too
    try:
        count, rows = unanswered(request.app.state.log_path, len(label_names), n, wanted, order)
    except OSError as error:  # the log database is a directory, or unreadable: say which file
        raise BadInput(503, str(error)) from None
    items = [
        {
            "prediction_id": row.prediction_id,
            "label": label_names[int(row.probabilities.argmax())],
            "probability": float(row.probabilities.max()),
            "margin": float(margins(row.probabilities[None])[0]),
            "model_version": row.model_version,
            "time": row.time,
            "thumbnail": f"/review/image/{row.prediction_id}.png",
        }
        for row in rows
    ]
    return {"order": order, "measure": DEFAULT_MEASURE, "unanswered": count, "items": items}


@router.get(
    "/review/image/{prediction_id}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the RGB image, at the data set's size"}}
    | documented(401, 403, 404, 422, 503),
    tags=["review"],
)
def review_image(request: Request, prediction_id: str, reviewer: str = Depends(require_reviewer)):
    """The image a logged prediction scored (the image the model saw, at the data set's size), as PNG: the queue's
    `thumbnail`. Same token as POST /feedback (401, 403); 404: no logged prediction with that id; 503: the prediction
    log cannot be read."""
    pixels = logged(request.app.state, prediction_id).pixels
    return Response(png_bytes(pixels), media_type="image/png", headers={"Cache-Control": "no-store"})
