"""The Open Inference Protocol (KServe v2 REST) as a client that no one here wrote speaks it: tritonclient.http
against a real `python serving/app.py` on a real registry (v1 and v2, champion v2). Its answers are held to
/predict's for the same pixels; bad requests to the protocol's JSON errors; every inference to the prediction log."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from cifarflow.layout import DataLayout
from tests.registry_helpers import copy_data_dir
from tests.serving_helpers import ServingProcess, encode, serving_process, wait_until
from tests.synthetic import CLASSES, class_images

pytestmark = pytest.mark.server  # starts a real uvicorn process on a registry of two versions

NAME = "classifier"  # model_name(None): the fixture's versions predate keeping their data set
SIDE, MOST = 32, 64  # the fixture's image size; GET /limits' max_batch_files
PIXELS = class_images(np.arange(64) % len(CLASSES), np.random.default_rng(7)).reshape(64, 3, SIDE, SIDE)
PIXELS = PIXELS.transpose(0, 2, 3, 1).copy()  # (64, S, S, 3) uint8, as the test set's images are


@dataclass(frozen=True)
class Service:
    server: ServingProcess
    data_dir: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, timeout=60)

    def triton(self):
        import tritonclient.http as triton

        return triton.InferenceServerClient(self.server.url.removeprefix("http://"), network_timeout=60)


@pytest.fixture(scope="module")
def service(two_versions, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v2")
    copy_data_dir(two_versions, tmp / "data")
    with serving_process(tmp / "data", tmp / "serving.log") as server:
        yield Service(server, tmp / "data")


def request_json(pixels: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {"name": "pixels", "shape": list(pixels.shape), "datatype": "UINT8", "data": pixels.ravel().tolist()}
        ],
        **extra,
    }


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    """The protocol's error: `status`, JSON {"error": "…"} naming each of `fragments`."""
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert all(fragment in error for fragment in fragments), error


def test_tritonclient_finds_the_server_the_model_and_its_metadata(service):
    client = service.triton()
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "cifarflow" and "binary_tensor_data" in server["extensions"] and server["models"] == [NAME]
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, "v2")
    assert not client.is_model_ready(NAME, "v1") and not client.is_model_ready("cifar-10")
    want = {
        "name": NAME,
        "versions": ["v2"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [-1, SIDE, SIDE, 3]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASSES)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"label_names": json.dumps(CLASSES)},
    }
    assert client.get_model_metadata(NAME) == want
    assert client.get_model_metadata(NAME, "v2") == want


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_inference_on_64_images_answers_what_predict_answers(service, binary):
    """64 images in one inference (binary: tritonclient's default, every tensor as binary data; json: every tensor
    in the JSON): each top class is /predict's for the same pixels sent as PNG, each probability /predict's."""
    import tritonclient.http as triton

    tensor = triton.InferInput("pixels", list(PIXELS.shape), "UINT8").set_data_from_numpy(PIXELS, binary_data=binary)
    asked = (
        None
        if binary
        else [triton.InferRequestedOutput(name, binary_data=False) for name in ("probabilities", "label")]
    )
    result = service.triton().infer(NAME, [tensor], outputs=asked, request_id="batch-64")
    with service.client() as client:
        files = [("file", (f"{i}.png", encode(image), "image/png")) for i, image in enumerate(PIXELS)]
        predicted = client.post("/predict/batch", files=files).json()
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (NAME, "v2", "batch-64")
    assert all(("parameters" in output) == binary for output in response["outputs"])  # binary: no `data`
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probabilities.dtype == np.float32 and probabilities.shape == (64, len(CLASSES))
    labels = [label.decode() if binary else label for label in labels]  # tritonclient: binary BYTES stay bytes
    assert labels == [p["label"] for p in predicted]
    assert [CLASSES[i] for i in probabilities.argmax(axis=1)] == [p["label"] for p in predicted]
    assert probabilities.max(axis=1) == pytest.approx([p["probability"] for p in predicted], abs=1e-6)
    assert probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-5)


def test_version_qualified_routes_answer_for_the_served_version_only(service):
    with service.client() as client:
        assert client.get(f"/v2/models/{NAME}/versions/v2").json() == client.get(f"/v2/models/{NAME}").json()
        assert client.get(f"/v2/models/{NAME}/versions/v2/ready").json() == {"name": NAME, "ready": True}
        answer = client.post(f"/v2/models/{NAME}/versions/v2/infer", json=request_json(PIXELS[:2]))
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        outputs = {output["name"]: output for output in answer.json()["outputs"]}
        assert answer.json()["model_version"] == "v2" and outputs["probabilities"]["shape"] == [2, len(CLASSES)]
        assert outputs["label"]["data"] == [
            CLASSES[i] for i in np.argmax(np.reshape(outputs["probabilities"]["data"], (2, -1)), 1)
        ]
        for path in ("", "/ready", "/infer"):
            method = client.post if path == "/infer" else client.get
            assert_error(method(f"/v2/models/{NAME}/versions/v1{path}"), 404, "'v1'", "v2")
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.head("/v2/health/ready").status_code == 200


GOOD = request_json(PIXELS[:1])
BAD_JSON_REQUESTS = {
    "not JSON": (b'{"inputs": [', "not an inference request"),
    "no inputs": (json.dumps({"id": "x"}).encode(), "inputs"),
    "a wrong tensor name": (json.dumps(GOOD | {"inputs": [GOOD["inputs"][0] | {"name": "image"}]}).encode(), "'image'"),
    "a wrong datatype": (json.dumps(GOOD | {"inputs": [GOOD["inputs"][0] | {"datatype": "FP32"}]}).encode(), "UINT8"),
    "a wrong size S": (json.dumps(request_json(PIXELS[:1, :16, :16])).encode(), f"[N, {SIDE}, {SIDE}, 3]"),
    "too few values": (
        json.dumps(GOOD | {"inputs": [GOOD["inputs"][0] | {"data": [0, 1, 2]}]}).encode(),
        "integers 0 to 255",
    ),
    "a value over 255": (
        json.dumps(GOOD | {"inputs": [GOOD["inputs"][0] | {"data": [256] * SIDE * SIDE * 3}]}).encode(),
        "0 to 255",
    ),
    "too many images": (
        json.dumps(request_json(np.zeros((MOST + 1, SIDE, SIDE, 3), np.uint8))).encode(),
        f"at most {MOST}",
    ),
    "a shape of floats": (
        json.dumps(GOOD | {"inputs": [GOOD["inputs"][0] | {"shape": [1.0, SIDE, SIDE, 3]}]}).encode(),
        "not an inference request",
    ),
    "nested data of another shape (NCHW)": (
        json.dumps(
            GOOD | {"inputs": [GOOD["inputs"][0] | {"data": np.zeros((1, 3, SIDE, SIDE), int).tolist()}]}
        ).encode(),
        f"nested as its shape [1, {SIDE}, {SIDE}, 3]",
    ),
    "binary_data_output not a boolean": (
        json.dumps(GOOD | {"parameters": {"binary_data_output": "yes"}}).encode(),
        "true or false",
    ),
    "an unknown output": (json.dumps(GOOD | {"outputs": [{"name": "logits"}]}).encode(), "'probabilities'"),
    "the classification extension": (
        json.dumps(GOOD | {"outputs": [{"name": "label", "parameters": {"classification": 3}}]}).encode(),
        "binary_data",
    ),
}


@pytest.mark.parametrize("case", BAD_JSON_REQUESTS, ids=list(BAD_JSON_REQUESTS))
def test_a_bad_inference_request_is_a_400_saying_what_is_expected(service, case):
    body, fragment = BAD_JSON_REQUESTS[case]
    with service.client() as client:
        assert_error(client.post(f"/v2/models/{NAME}/infer", content=body), 400, fragment)


def binary_request(pixels: np.ndarray, size: int | None = None) -> bytes:
    """The JSON head of a binary request for `pixels` (its binary_data_size `size`, default the pixels' bytes)."""
    tensor = {"name": "pixels", "shape": list(pixels.shape), "datatype": "UINT8"}
    return json.dumps({"inputs": [tensor | {"parameters": {"binary_data_size": size or pixels.nbytes}}]}).encode()


def test_bad_binary_tensor_data_is_a_400_and_good_binary_data_scores(service):
    head, data = binary_request(PIXELS[:2]), PIXELS[:2].tobytes()
    url = f"/v2/models/{NAME}/infer"
    with service.client() as client:
        for length in ("abc", str(len(head) + len(data) + 1), "0", "9" * 5000):
            answer = client.post(url, content=head + data, headers={"Inference-Header-Content-Length": length})
            assert_error(answer, 400, "Inference-Header-Content-Length", "length in bytes of the JSON")
        short = client.post(url, content=head + data[:-1], headers={"Inference-Header-Content-Length": str(len(head))})
        assert_error(short, 400, "binary_data_size", f"{len(data) - 1:,} bytes")
        unannounced = client.post(url, content=head + data)  # no header: the whole body is read as JSON
        assert_error(unannounced, 400, "not an inference request")
        floated = binary_request(PIXELS[:2], float(len(data)))  # 6144.0 bytes: not a count
        answer = client.post(
            url, content=floated + data, headers={"Inference-Header-Content-Length": str(len(floated))}
        )
        assert_error(answer, 400, "binary_data_size 6144.0")
        gzipped = client.post(url, content=gzip.compress(head + data), headers={"Content-Encoding": "gzip"})
        assert_error(gzipped, 400, "Content-Encoding gzip", "uncompressed")
        good = client.post(url, content=head + data, headers={"Inference-Header-Content-Length": str(len(head))})
        assert good.status_code == 200 and good.headers["content-type"] == "application/json"  # no binary output asked
        assert good.json()["outputs"][0]["shape"] == [2, len(CLASSES)]


def test_unknown_model_names_the_served_one_and_an_oversized_body_is_413(service):
    with service.client() as client:
        for answer in (client.get("/v2/models/cifar-10"), client.post("/v2/models/cifar-10/infer", json=GOOD)):
            assert_error(answer, 404, "'cifar-10'", f"GET /v2/models/{NAME}")
        assert_error(client.post(f"/v2/models/{NAME}/infer", content=b"0" * (11 * 2**20)), 413, "MiB limit")


def test_every_v2_inference_is_in_the_prediction_log(service):
    from cifarflow.data.shards import pixel_digest
    from cifarflow.monitoring.log import last_seq, read_window, window_keys

    log = DataLayout(service.data_dir).prediction_log
    before = last_seq(log)
    pixels = np.flip(PIXELS[:3], axis=1).copy()  # images no other test sends
    with service.client() as client:
        answer = client.post(f"/v2/models/{NAME}/infer", json=request_json(pixels))
    probabilities = np.reshape(answer.json()["outputs"][0]["data"], (3, -1))

    def logged_rows() -> list[int]:
        seqs = window_keys(log, after_seq=before)[0].tolist()
        return seqs if len(seqs) == 3 else []

    rows = read_window(log, wait_until(logged_rows, 15, what="the 3 rows in the log"))
    assert [pixel_digest(row.pixels) for row in rows] == [pixel_digest(image) for image in pixels]
    assert {(row.source, row.model_version) for row in rows} == {("service", "v2")}
    assert np.stack([row.probabilities for row in rows]) == pytest.approx(probabilities, abs=1e-7)


def test_without_a_model_ready_and_inference_are_503_and_live_is_200(tmp_path):
    with (
        serving_process(tmp_path / "data", tmp_path / "serving.log") as server,
        httpx.Client(base_url=server.url) as client,
    ):
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2").json()["models"] == []
        for answer in (
            client.get("/v2/health/ready"),
            client.get(f"/v2/models/{NAME}/ready"),
            client.post(f"/v2/models/{NAME}/infer", json=GOOD),
        ):
            assert_error(answer, 503, "no champion")
