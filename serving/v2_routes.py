"""The Open Inference Protocol (KServe v2 REST) beside /predict: health, server and model metadata, and inference on a
UINT8 input `pixels` [N, S, S, 3] → FP32 `probabilities` [N, classes] and BYTES `label` [N] (the top class), as JSON or
with the binary tensor data extension; scored and logged as /predict's are. Names: cifarflow.data.ingest.model_name."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, Field, StrictInt, ValidationError

from cifarflow.data.ingest import model_name
from cifarflow.inference.predictor import Predictor
from cifarflow.orchestration.cache import library_version
from serving.http_errors import BadInput, ErrorBody, documented
from serving.model_routes import served_model
from serving.predict_routes import score

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

SERVER, EXTENSIONS = "cifarflow", ["binary_tensor_data"]
PLATFORM = "tensorflow_savedmodel"  # Triton's name for what scores here: the version's SavedModel export
INPUT, PROBABILITIES, LABEL = "pixels", "probabilities", "label"
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary extension's: bytes of JSON before the tensor data
Parameter = bool | int | float | str  # the protocol's parameter values


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]
    models: list[str] = Field(description="beyond the protocol: the name of the model served ([] while none is)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the registry version serving (one)")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, str] = Field(
        description="label_names: the classes in `probabilities`' order, a JSON list in a string (the protocol's "
        "parameters are strings, numbers or booleans)"
    )


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str = Field(examples=[INPUT])
    shape: list[StrictInt] = Field(examples=[[1, 2, 2, 3]])
    datatype: str = Field(examples=["UINT8"])
    parameters: dict[str, Parameter] | None = Field(None, description="binary_data_size: its bytes after the JSON")
    data: list | None = Field(None, description="the elements, row-major, flat or nested (absent: binary data)")


class RequestOutput(BaseModel):
    name: str = Field(examples=[LABEL])
    parameters: dict[str, Parameter] | None = Field(None, description="binary_data: true for binary data")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Parameter] | None = Field(None, description="binary_data_output: every output binary")
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="absent: every output")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Parameter] | None = Field(None, description="binary_data_size: its bytes after the JSON")
    data: list | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = Field(None, description="the request's id, when it gave one")
    outputs: list[ResponseOutput]


def inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` put in place of their `$ref`s (a request body's schema in OpenAPI)."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            return (
                resolve(defs[node["$ref"].rsplit("/", 1)[1]])
                if "$ref" in node
                else {k: resolve(v) for k, v in node.items()}
            )
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return resolve(schema)


REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inlined(InferenceRequest.model_json_schema())},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},  # JSON + tensor data
        },
    }
}
# FastAPI lists a 422 for every route with parameters; the app answers any as an ErrorBody, and these never do
NAMED = documented(404, 503) | {422: {"model": ErrorBody, "description": "never: the names are any text"}}
INFER_ANSWERS = (
    NAMED
    | documented(400)
    | {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
)


def served_name(predictor: Predictor) -> str:
    dataset = predictor.record.dataset if predictor.record else None
    return model_name(dataset.get("source") if dataset else None)


def named_model(request: Request, name: str, version: str | None = None) -> Predictor:
    """The model serving now if `name` (and `version`) name it; BadInput 503 for none, 404 for another."""
    predictor = served_model(request)
    served = served_name(predictor)
    if name != served:
        raise BadInput(404, f"no model named {name!r}: this service serves {served!r} (GET /v2/models/{served})")
    if version is not None and version != predictor.version:
        raise BadInput(404, f"{served!r} version {version!r} is not served: version {predictor.version} is")
    return predictor


async def raw_body(request: Request) -> bytes:
    return await request.body()  # over the size limit: BodyLimit's 413


def read_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """The JSON inference request and the binary tensor data after it (b"" without the binary extension);
    BadInput 400 saying what is wrong."""
    if header_length is not None:
        size = int(header_length) if header_length.isdecimal() and len(header_length) <= len(str(len(body))) else 0
        if not 0 < size <= len(body):
            raise BadInput(
                400,
                f"{HEADER_LENGTH} {header_length!r} must be the length in bytes of the JSON at the start of the "
                f"body (1 to {len(body):,} here)",
            )
        body, binary = body[:size], body[size:]
    else:
        binary = b""
    try:
        return InferenceRequest.model_validate_json(body), binary
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(map(str, problem["loc"])) or "body"
        raise BadInput(
            400,
            f"not an inference request ({where}: {problem['msg']}): send a JSON object "
            '{"inputs": [{"name", "shape", "datatype", "data"}]} (the Open Inference Protocol)',
        ) from None


def input_pixels(request: InferenceRequest, binary: bytes, side: int, most: int) -> np.ndarray:
    """The one input `pixels` as uint8 (N, side, side, 3), from JSON `data` or the binary tensor data; BadInput 400
    naming what is wrong and what is expected."""
    expected = f"one input {INPUT!r}, datatype UINT8, shape [N, {side}, {side}, 3], 1 ≤ N ≤ {most}"
    tensor = request.inputs[0] if len(request.inputs) == 1 else None
    if tensor is None or tensor.name != INPUT or tensor.datatype != "UINT8" or len(tensor.shape) != 4:
        given = ", ".join(f"{t.name!r} {t.datatype} {t.shape}" for t in request.inputs) or "none"
        raise BadInput(400, f"inputs {given}: the model takes {expected}")
    if tensor.shape[0] > most:
        raise BadInput(400, f"{tensor.shape[0]} images in one request; at most {most}")
    if tensor.shape[1:] != [side, side, 3] or tensor.shape[0] < 1:
        raise BadInput(400, f"input {INPUT!r} has shape {tensor.shape}: the model takes {expected}")
    count = math.prod(tensor.shape)
    parameters = tensor.parameters or {}
    if set(parameters) - {"binary_data_size"}:
        raise BadInput(400, f"input parameters {sorted(parameters)}: only binary_data_size is supported")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if tensor.data is not None or type(size) is not int or size != len(binary) or size != count:
            raise BadInput(
                400,
                f"input {INPUT!r}: binary_data_size {size!r} with {len(binary):,} bytes after the JSON "
                f"({HEADER_LENGTH}){' and data' if tensor.data is not None else ''}: send its {count:,} bytes "
                "after the JSON and no data",
            )
        return np.frombuffer(binary, np.uint8).reshape(tensor.shape)
    if binary:
        raise BadInput(400, f"{len(binary):,} bytes after the JSON, but no input has binary_data_size")
    try:
        values = np.asarray(tensor.data)
        fits = values.dtype.kind in "iu" and values.size == count and 0 <= values.min() and values.max() <= 255
        fits = fits and (values.ndim == 1 or values.shape == tuple(tensor.shape))
    except (ValueError, OverflowError, TypeError):  # ragged lists, numbers past int64
        fits = False
    if not fits:
        raise BadInput(
            400,
            f"input {INPUT!r} data: expected {count:,} integers 0 to 255, flat or nested as its shape {tensor.shape}",
        )
    return values.astype(np.uint8).reshape(tensor.shape)


def asked_outputs(request: InferenceRequest) -> list[tuple[str, bool]]:
    """(name, binary) for each output to answer, as asked (none asked: every output); BadInput 400 for an unknown
    output or parameter."""
    default = (request.parameters or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise BadInput(400, f"parameter binary_data_output {default!r}: true or false")
    outputs = request.outputs or [RequestOutput(name=name) for name in (PROBABILITIES, LABEL)]
    asked = [(output.name, (output.parameters or {}).get("binary_data", default)) for output in outputs]
    for output, (name, binary) in zip(outputs, asked):
        if name not in (PROBABILITIES, LABEL):
            raise BadInput(
                400,
                f"output {name!r} unknown: the outputs are {PROBABILITIES!r} (FP32 [N, classes]) and {LABEL!r} "
                "(BYTES [N], the top class)",
            )
        if set(output.parameters or {}) - {"binary_data"} or not isinstance(binary, bool):
            raise BadInput(400, f"output {name!r} parameters {output.parameters}: only binary_data (true/false)")
    return asked


def answer(request: InferenceRequest, predictor: Predictor, probabilities: np.ndarray, asked) -> Response:
    """The inference response with the `asked` outputs: JSON, or JSON then the binary outputs' bytes (the extension)."""
    labels = [top[0]["label"] for top in predictor.top(probabilities, k=1)]
    tensors = {  # name: datatype, shape, the JSON data, the binary data
        PROBABILITIES: (
            "FP32",
            list(probabilities.shape),
            probabilities.ravel().tolist(),
            probabilities.astype("<f4").tobytes(),
        ),
        LABEL: ("BYTES", [len(labels)], labels, b"".join(map(bytes_element, labels))),
    }
    outputs, chunks = [], []
    for name, binary in asked:
        datatype, shape, data, raw = tensors[name]
        output = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            output["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            output["data"] = data
        outputs.append(output)
    head = {"model_name": served_name(predictor), "model_version": predictor.version, "id": request.id}
    text = json.dumps({key: value for key, value in head.items() if value is not None} | {"outputs": outputs}).encode()
    if not chunks:
        return Response(text, media_type="application/json")
    return Response(
        text + b"".join(chunks), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(text))}
    )


def bytes_element(text: str) -> bytes:
    """One BYTES element as binary tensor data: its UTF-8 length (uint32, little-endian), then the bytes."""
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def infer(request: Request, predictor: Predictor, body: bytes, header_length: str | None) -> Response:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise BadInput(400, f"Content-Encoding {encoding}: not supported here; send the body uncompressed")
    inference, binary = read_request(body, header_length)
    pixels = input_pixels(inference, binary, predictor.image_size, request.app.state.limits.max_batch_files)
    asked = asked_outputs(inference)  # a bad output is refused before the model runs
    probabilities, _ = score(request, predictor, pixels)
    return answer(inference, predictor, probabilities, asked)


def metadata(predictor: Predictor) -> dict:
    side, classes = predictor.image_size, len(predictor.label_names)
    return {
        "name": served_name(predictor),
        "versions": [predictor.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "UINT8", "shape": [-1, side, side, 3]}],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, classes]},
            {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"label_names": json.dumps(predictor.label_names, ensure_ascii=False)},
    }


@router.get("", response_model=ServerMetadata)
def server_metadata(request: Request):
    """The server's name (`cifarflow`), version and protocol extensions (`binary_tensor_data`), and the name of the
    model it serves in `models` ([] while none is). Always 200."""
    predictor = request.app.state.live.predictor
    served = [served_name(predictor)] if predictor else []
    return {"name": SERVER, "version": library_version("cifar-flow"), "extensions": EXTENSIONS, "models": served}


@router.get("/health/live", response_model=ServerLive)
def server_live():
    """`{"live": true}` whenever the process answers, model or not."""
    return {"live": True}


@router.get("/health/ready", response_model=ServerReady, responses=documented(503))
def server_ready(request: Request):
    """`{"ready": true}` once a model is loaded; 503 until then, saying why."""
    served_model(request)
    return {"ready": True}


@router.get("/models/{name}", response_model=ModelMetadata, responses=NAMED)
def model_metadata(request: Request, name: str):
    """The served model's tensors: input `pixels` UINT8 [N, S, S, 3], outputs `probabilities` FP32 [N, classes] and
    `label` BYTES [N], the serving version and `label_names`. 404: another name (the error names the served one);
    503: no model loaded yet."""
    return metadata(named_model(request, name))


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=NAMED)
def version_metadata(request: Request, name: str, version: str):
    """As GET /v2/models/{name}, for the version serving now only (e.g. `v3`); 404 for any other version."""
    return metadata(named_model(request, name, version))


@router.get("/models/{name}/ready", response_model=ModelReady, responses=NAMED)
def model_ready(request: Request, name: str):
    """`{"name", "ready": true}` when the model of that name serves; 404: another name; 503: no model loaded yet."""
    named_model(request, name)
    return {"name": name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=NAMED)
def version_ready(request: Request, name: str, version: str):
    """As GET /v2/models/{name}/ready, for the version serving now only; 404 for any other version."""
    named_model(request, name, version)
    return {"name": name, "ready": True}


@router.post(
    "/models/{name}/infer", response_model=InferenceResponse, responses=INFER_ANSWERS, openapi_extra=REQUEST_BODY
)
def model_infer(
    request: Request, name: str, body: bytes = Depends(raw_body), length: str | None = Header(None, alias=HEADER_LENGTH)
):
    """Classify 1 to 64 images sent as one input `pixels` UINT8 [N, S, S, 3] (S: the metadata's), as JSON `data` or
    as binary tensor data after the JSON (`Inference-Header-Content-Length`); answers `probabilities` and `label`,
    each as JSON or binary as asked. Scored and logged as /predict's are. 400: a request the model cannot take (the
    error says what it expects); 404: another name; 413: over 10 MiB; 503: no model loaded yet."""
    return infer(request, named_model(request, name), body, length)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=INFER_ANSWERS,
    openapi_extra=REQUEST_BODY,
)
def version_infer(
    request: Request,
    name: str,
    version: str,
    body: bytes = Depends(raw_body),
    length: str | None = Header(None, alias=HEADER_LENGTH),
):
    """As POST /v2/models/{name}/infer, for the version serving now only; 404 for any other version."""
    return infer(request, named_model(request, name, version), body, length)
