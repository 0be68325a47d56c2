"""GET /health and GET /model: which model serves, from `request.app.state.live` (a LiveModel)."""

from __future__ import annotations

from dataclasses import fields
from typing import get_type_hints

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, create_model

from cifarflow.inference.predictor import Predictor
from cifarflow.registry import store
from serving.http_errors import BadInput, documented

router = APIRouter()


class Health(BaseModel):
    status: str = Field(description="`ok`, or `no model` (503)")
    model_version: str | None = None
    damage: str | None = Field(None, description="200 only: a served file damaged on disk since loading, and the fix")
    error: str | None = Field(None, description="503 only: why there is no model (a damaged file, with the fix)")


HIDDEN = ("version", "label_names", "image_size", "files")  # /model states the first three itself; `files`: the seal's
ModelRecord = create_model(
    "ModelRecord",
    __doc__="The serving version's record in the registry (store.VersionRecord; fields it lacks are left out).",
    version=(str, ...),
    label_names=(list[str], Field(description="the classes it tells apart, in its output order")),
    image_size=(int, Field(description="S: every image is cropped to a square and resized to S × S pixels")),
    **{
        store.JSON_NAMES.get(f.name, f.name): (get_type_hints(store.VersionRecord)[f.name] | None, None)
        for f in fields(store.VersionRecord)
        if f.name not in HIDDEN
    },
)


def served_model(request: Request) -> Predictor:
    """The model serving now, read once so that a whole request uses it across a swap; BadInput 503 if none."""
    live = request.app.state.live
    predictor = live.predictor
    if predictor is None:
        raise BadInput(503, live.problem or "no model loaded")
    return predictor


@router.get(
    "/health",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health, "description": "no model loaded yet: the error says why"}},
)
def health(request: Request):
    """Whether a model serves: 200 `{"status": "ok", "model_version"}` (with `damage` if a served file was damaged on
    disk since loading, and the fix); 503 `{"status": "no model", "error"}` saying why (no champion yet, a file that
    does not load)."""
    live = request.app.state.live
    predictor = live.predictor
    if predictor is None:
        return JSONResponse({"status": "no model", "error": live.problem}, status_code=503)
    return {"status": "ok", "model_version": predictor.version, "damage": live.damage}


@router.get("/model", response_model=ModelRecord, response_model_exclude_none=True, responses=documented(503))
def model_info(request: Request):
    """The serving version's registry record: `version`, the `label_names` it tells apart, its `image_size`, and its
    accuracy, data set and promotion facts. 503: no model loaded yet."""
    predictor = served_model(request)
    facts = predictor.record.to_json() if predictor.record else {"id": predictor.model_id}
    record = {key: value for key, value in facts.items() if key in ModelRecord.model_fields}
    return record | {
        "version": predictor.version,
        "label_names": predictor.label_names,
        "image_size": predictor.image_size,
    }
