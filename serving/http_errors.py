"""Every error the service answers: a JSON ErrorBody, documented per operation in the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cifarflow.intake.images import format_names

FEEDBACK_EXAMPLE = '{"prediction_id": "<the id /predict answered>", "label": "<one of GET /model\'s label_names>"}'
CURL_HINT = "attach the image as a file: curl -F file=@photo.jpg …"
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
ERRORS: dict[int, str] = {
    400: "an empty upload, or more `file` fields than the batch limit; feedback: a body that is not JSON; /v2 "
    "inference: a request the model cannot take (its input, outputs, parameters, binary data), said how",
    401: "a review endpoint without a reviewer's token, or with a wrong one (`Authorization: Bearer <token>`)",
    403: "a review endpoint on a service reachable from other machines that has no review token configured",
    404: "no such path, or (feedback, review images) no logged prediction with that id, or (/v2) a model name or "
    "version this service does not serve (the error names the one it does)",
    405: "the path exists, with another method",
    413: "the request body is over the size limit (see GET /limits)",
    415: f"a file that is not a usable image ({format_names()}, within the size limits), with the reason",
    422: "the form lacks the field `file`, or `file` is text, not a file upload; feedback: a label that is "
    "not a class, or a malformed prediction id",
    503: "no model loaded yet, or (for an upload) the decode budget stayed spent, with Retry-After: try again "
    "later; feedback: the answer could not be stored; review: the review token file cannot be used now",
}
API_DESCRIPTION = (
    "The registry's champion classifies images into the classes of the data set it was trained on (GET /model: "
    "label_names, image_size, dataset); the model is switched live when the champion moves. "
    'Every error is JSON `{"error": "…"}` (ErrorBody), on any path: '
    + "; ".join(f"{status}: {why}" for status, why in ERRORS.items())
    + "."
)


class FieldProblem(BaseModel):
    loc: list[str] = Field(description="where: ['body', 'file'] for the form field `file`")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: what was wrong and what to do."""

    error: str = Field(description="a sentence for people, naming the file when one file was the problem")
    detail: list[FieldProblem] | None = Field(None, description="422 only: each problem with the request")


class BadInput(Exception):
    """A request answered with an ErrorBody: `status`, the message, optional headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses: each an ErrorBody, with the reason from ERRORS."""
    return {
        status: {"model": ErrorBody, "description": ERRORS[status]}
        | ({"headers": RETRY_AFTER} if status == 503 else {})
        for status in statuses
    }


def field_problems(errors: Sequence[dict]) -> list[dict]:
    """FastAPI's validation errors as plain JSON (loc, msg, type); never the input or its context."""
    return [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ]


def describe_problem(problem: dict) -> str:
    """One problem for people; for the field `file`, what to do (curl's @ is the usual slip)."""
    field = ".".join(problem["loc"][1:]) or "body"
    if problem["loc"] == ["body"]:  # no body, or not a JSON object at all (a form, a list, a string)
        return f"the body must be a JSON object: {FEEDBACK_EXAMPLE}"
    if problem["type"] == "missing":
        return f"missing form field: {field} (send the image as multipart field `file`; {CURL_HINT})"
    if problem["loc"][1:2] == ["file"]:
        return f"the field `file` must be a file upload, not text ({CURL_HINT})"
    return f"{field}: {problem['msg']}"


def error_answer(error: BadInput) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)


def add_error_handlers(app: FastAPI, refused: Callable[[Request], BadInput | None]) -> None:
    """Every error as an ErrorBody; `refused(request)`: the access refusal that comes before a bad body, or None."""

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, error: BadInput):
        return error_answer(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):  # 404, 405, a body that does not parse
        message = str(error.detail)
        if error.status_code == 400 and request.url.path == "/feedback":  # FastAPI's "error parsing the body"
            message = f"the body is not JSON ({message}): send {FEEDBACK_EXAMPLE} as application/json"
        refusal = refused(request) if error.status_code == 400 else None
        return error_answer(refusal or BadInput(error.status_code, message, error.headers))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        refusal = refused(request)
        if refusal is not None:
            return error_answer(refusal)
        problems = field_problems(error.errors())
        message = "; ".join(dict.fromkeys(map(describe_problem, problems))) or "invalid request"
        return JSONResponse({"error": message, "detail": problems}, status_code=422)
