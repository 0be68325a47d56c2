"""POST /predict, /predict/batch, GET /limits and the page (GET /): decoded under the budget, micro-batched, logged."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from cifarflow.inference.decode_budget import DecodeBudget, DecodeBusy, header_pixels
from cifarflow.inference.predictor import Predictor
from cifarflow.intake.images import ImageRejected, convert_image, describe, format_names
from cifarflow.monitoring.log import new_ids
from serving.http_errors import BadInput, documented
from serving.model_routes import served_model

STATIC = Path(__file__).parent / "static"

log = logging.getLogger("cifarflow.serving")

router = APIRouter()


class ClassProbability(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    probability: float = Field(ge=0, le=1)
    top: list[ClassProbability] = Field(description="the 3 most probable classes, most probable first")
    model_version: str = Field(description="the registry version that scored the image")
    prediction_id: str = Field(description="this answer's id in the prediction log (a UUID4 in hex)")


class Limits(BaseModel):
    max_upload_bytes: int = Field(description="most bytes in one request body, multipart framing included")
    max_batch_files: int = Field(description="most images in one request: `file` fields (/predict/batch), or N (/v2)")
    max_pixels: int = Field(description="most pixels (width × height) in one image")


def decode_upload(upload: UploadFile, name: str, side: int, budget: DecodeBudget | None) -> np.ndarray:
    """One upload → (side, side, 3) uint8 pixels, holding its pixels of `budget` while it decodes. BadInput 400: empty;
    415: anything decoding raises (this file's fault alone); 503 with Retry-After: the budget stayed spent."""
    data = upload.file.read()
    if not data:
        raise BadInput(400, f"{name}: the upload is empty (0 bytes)")
    try:
        with budget.hold(header_pixels(data)) if budget else nullcontext():
            return convert_image(data, side).pixels
    except ImageRejected as rejected:
        raise BadInput(415, f"{name}: not a usable image: {rejected}") from None
    except DecodeBusy as busy:
        raise BadInput(503, f"{name}: {busy}", {"Retry-After": str(busy.retry_after_s)}) from None
    except Exception as error:  # escaped the decoder's own checks (reading the header): still this file's
        log.warning("decoding %s raised %s", name, describe(error), exc_info=True)
        raise BadInput(415, f"{name}: not a usable image: does not decode: {describe(error)}") from None


def score(request: Request, predictor: Predictor, pixels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """uint8 (N, S, S, 3) → (float32 probabilities (N, classes), their prediction ids): scored micro-batched (if on),
    appended to the prediction log (if kept) as the service's. Every route that scores images calls this."""
    state = request.app.state
    probabilities = state.batcher.probabilities(predictor, pixels) if state.batcher else predictor.probabilities(pixels)
    ids = new_ids(len(pixels))
    if state.prediction_log is not None:
        state.prediction_log.append(ids, "service", predictor.version, probabilities, pixels)
    return probabilities, ids


def predict_uploads(request: Request, uploads: list[UploadFile]) -> list[dict]:
    """Decode every upload (a bad one fails the request, naming it), score them micro-batched (if on), log them."""
    predictor: Predictor = served_model(request)
    side, budget = predictor.image_size, request.app.state.decode_budget
    pixels = np.stack([decode_upload(u, u.filename or f"file {i + 1}", side, budget) for i, u in enumerate(uploads)])
    probabilities, ids = score(request, predictor, pixels)
    tops = predictor.top(probabilities)
    return [
        {**top[0], "top": top, "model_version": predictor.version, "prediction_id": id_} for top, id_ in zip(tops, ids)
    ]


@router.get("/", include_in_schema=False)
def page():
    """The page: try the model on your own images (serving/static/index.html)."""
    return FileResponse(STATIC / "index.html")


@router.get("/limits", response_model=Limits)
def upload_limits(request: Request):
    """What one request may carry: `max_upload_bytes` (10 MiB, else 413), `max_batch_files` (64 images, else 400)
    and `max_pixels` per image (50 megapixels, else 415)."""
    return request.app.state.limits


@router.post("/predict", response_model=Prediction, responses=documented(400, 415, 422, 503))
def predict(request: Request, file: UploadFile = File(..., description=f"the image: {format_names()}")):
    """Classify one image sent as the multipart field `file` (at most 10 MiB and 50 megapixels, at least 8 pixels a
    side; cropped to its centre square and resized to the model's size). Answers `label`, `probability`, the `top` 3
    and the `prediction_id` to send to POST /feedback. 400: empty file; 413: over 10 MiB; 415: not a usable image (the
    reason); 422: no `file` field; 503: no model yet, or the decode budget is spent (Retry-After)."""
    return predict_uploads(request, [file])[0]


@router.post("/predict/batch", response_model=list[Prediction], responses=documented(400, 415, 422, 503))
def predict_batch(
    request: Request, file: list[UploadFile] = File(..., description="the images, at most GET /limits' max_batch_files")
):
    """Classify up to 64 images in one request, each a multipart field `file` (10 MiB in all): a list of /predict's
    answers in upload order. One bad file fails the whole request with its name in the error: 400 for an empty file
    or over 64 files, 415 for one that is not a usable image; 413, 422 and 503 as for /predict."""
    most = request.app.state.limits.max_batch_files
    if len(file) > most:
        raise BadInput(400, f"{len(file)} files in one request; at most {most}")
    return predict_uploads(request, file)
