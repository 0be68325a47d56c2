"""The prediction service: the current champion over HTTP, and a page to try it.

    python serving/app.py                       # http://127.0.0.1:8000, data dir ./data
    python serving/app.py --data-dir /srv/cifar --host 0.0.0.0 --port 8080
    CIFARFLOW_DATA_DIR=/srv/cifar uvicorn --factory serving.app:create_app

    POST /predict          multipart field `file` (one image)   → {"label", "probability", "top", "model_version"}
    POST /predict/batch    several `file` fields (at most 64)   → [ … one result per file, in order … ]
    GET  /health           200 {"status": "ok", "model_version"}; 503 while there is no model
    GET  /model            the serving version's record (preset, accuracy, dataset version, run, …)
    GET  /                 the page: choose or drop an image, see the top-3 classes

Images are decoded by the product's rules (PNG, JPEG, WebP, BMP; any size, centre square resized to
32×32; grayscale, palette and RGBA made RGB). Bad input gets a 4xx JSON {"error": …}: an empty upload
or a missing field (400/422), a file that is not a usable image (415), a body over the size limit
(413), too many files (400); a batch with one bad file is refused whole, naming the file. When the
champion alias moves, the service switches models without a restart (`cifarflow.inference.live`);
requests in flight finish on the model they started with. Concurrent requests are scored together in
one model call (`cifarflow.inference.batcher`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from cifarflow.inference.batcher import MAX_IMAGES, MicroBatcher
from cifarflow.inference.live import POLL_S, LiveModel
from cifarflow.inference.predictor import Predictor
from cifarflow.intake.images import ImageRejected, convert_image
from cifarflow.layout import DataLayout
from cifarflow.registry import store

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per request; a phone photo is 2–6 MB
MAX_BATCH_FILES = 64
STATIC = Path(__file__).parent / "static"
MODEL_FIELDS = (
    "version",
    "model",
    "accuracy",
    "test_images",
    "label_names",
    "dataset_sha256",
    "batch_ids",
    "run_name",
    "promoted_at",
    "decision",
    "id",
    "smoke",
)

log = logging.getLogger("cifarflow.serving")


class BadInput(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413 before it is parsed: at once from its
    Content-Length, or as soon as a chunked body passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(self.limit)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await too_large(self.limit)(scope, receive, send)


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI re-raises it from form parsing instead of answering 400."""

    def __init__(self):
        super().__init__(413)


def too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"the upload is over the {limit / 2**20:g} MiB limit"}, status_code=413)


def decode_upload(upload: UploadFile, name: str):
    data = upload.file.read()
    if not data:
        raise BadInput(400, f"{name}: the upload is empty (0 bytes)")
    try:
        return convert_image(data).pixels
    except ImageRejected as rejected:
        raise BadInput(415, f"{name}: not a usable image: {rejected}") from None


def predict_uploads(predictor: Predictor, uploads: list[UploadFile], batcher: MicroBatcher | None) -> list[dict]:
    """Decode every upload (any bad one fails the request, naming it), then score them together with
    the other requests waiting (micro-batching), or alone when micro-batching is off."""
    import numpy as np

    pixels = np.stack([decode_upload(u, u.filename or f"file {i + 1}") for i, u in enumerate(uploads)])
    probabilities = batcher.probabilities(predictor, pixels) if batcher else predictor.probabilities(pixels)
    tops = predictor.top(probabilities)
    return [{**top[0], "top": top, "model_version": predictor.version} for top in tops]


def create_app(
    data_dir: Path | None = None,
    model: str = store.ALIAS,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_batch_files: int = MAX_BATCH_FILES,
    poll_s: float = POLL_S,
    max_batch_images: int = MAX_IMAGES,
) -> FastAPI:
    data_dir = Path(data_dir or os.environ.get("CIFARFLOW_DATA_DIR", "data")).resolve()
    live = LiveModel(DataLayout(data_dir).registry, model, poll_s, log=log.warning)
    batcher: MicroBatcher | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal batcher
        live.start()
        batcher = MicroBatcher(max_batch_images) if max_batch_images > 1 else None
        yield
        if batcher:
            batcher.close()
        live.stop()

    app = FastAPI(title="CIFAR-10 classifier", lifespan=lifespan)
    app.state.live = live
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def serving() -> Predictor:
        predictor = live.predictor  # one read: the whole request uses this model, even if it is swapped
        if predictor is None:
            raise BadInput(503, live.problem or "no model loaded")
        return predictor

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, error: BadInput):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge):
        return too_large(max_upload_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):  # 404, 405, a malformed body
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        missing = [".".join(map(str, e["loc"][1:])) for e in error.errors() if e["type"] == "missing"]
        message = f"missing form field: {', '.join(missing)} (send the image as multipart field `file`)"
        return JSONResponse({"error": message if missing else "invalid request", "detail": error.errors()}, 422)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    def health():
        predictor = live.predictor
        if predictor is None:
            return JSONResponse({"status": "no model", "error": live.problem}, status_code=503)
        return {"status": "ok", "model_version": predictor.version}

    @app.get("/model")
    def model_info():
        predictor = serving()
        record = {key: predictor.metadata[key] for key in MODEL_FIELDS if key in predictor.metadata}
        return record | {"version": predictor.version, "label_names": predictor.label_names}

    @app.post("/predict")
    def predict(file: UploadFile = File(...)):
        return predict_uploads(serving(), [file], batcher)[0]

    @app.post("/predict/batch")
    def predict_batch(file: list[UploadFile] = File(...)):
        if len(file) > max_batch_files:
            raise BadInput(400, f"{len(file)} files in one request; at most {max_batch_files}")
        return predict_uploads(serving(), file, batcher)

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.max_batch < 1:
        parser.error(f"--max-batch must be at least 1, got {args.max_batch}")
    app = create_app(args.data_dir, args.model, max_batch_images=args.max_batch)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
