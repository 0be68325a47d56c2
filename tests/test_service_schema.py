"""The service's OpenAPI schema (/openapi.json) held to the service: schemathesis generates requests for
every operation from the schema, valid and invalid (random bytes as images, text where the file
belongs, missing fields, wrong types, /v2 inference requests with random tensors and binary bodies),
and sends them in-process to the ASGI app on a real registry (two versions built as a promotion builds
them, champion v2). No answer may be a 5xx, and each answer's status, content type and body must be
the ones the schema documents for that operation."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from serving.access import Reviewer
from serving.app import create_app
from tests.registry_helpers import copy_data_dir

pytestmark = pytest.mark.server  # loads the registry's model into this process (seconds)

V2_MODEL = {"name": "classifier", "version": "v2"}  # the champion's v2 name (model_name(None)) and version
EXAMPLES = 100  # per operation, fuzzing phase: about 80 requests per POST operation, a few seconds in all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,  # a method the path lacks: 405 with an Allow header
]

# schemathesis parametrizes at collection, so the app and its schema exist then. Building them starts
# and reads nothing: the app reads its registry when its lifespan starts, on the first request, after
# the `registry` fixture has put one at DATA_DIR. (`schemathesis.pytest.from_fixture` would avoid this,
# but it fails under pytest 9: it reads `request.node._nodeid`, which pytest 9 removed.)
DATA_DIR = Path(tempfile.gettempdir()) / f"cifarflow-schema-test-{os.getpid()}" / "data"
TOKEN = "schema-fuzzing-token-0123456789"
APP = create_app(DATA_DIR, reviewers=[Reviewer("fuzz", TOKEN)])  # every request carries it: the checks are reached
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP  # requests go to the app in-process (ASGI), as `from_asgi` would send them


@pytest.fixture(scope="module")
def registry(two_versions):
    """The two-version registry at DATA_DIR while this module runs; then the app's lifespan is ended
    (its model watcher and micro-batcher stop) and the copy removed."""
    from schemathesis.python.asgi import shutdown_lifespans

    copy_data_dir(two_versions, DATA_DIR)
    yield DATA_DIR
    shutdown_lifespans()
    shutil.rmtree(DATA_DIR.parent, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_only_documented_statuses_and_bodies(case, registry):
    if case.operation.path.startswith("/v2/models/"):  # the served model's name and version: the body is read
        case.path_parameters = {**case.path_parameters, **V2_MODEL}
    case.call_and_validate(checks=CHECKS, headers={"Authorization": f"Bearer {TOKEN}"})


V2_VERSION = ("", "/versions/{version}")  # each /v2/models route, and its version-qualified form
V2_MODEL_PATHS = (*V2_VERSION, *(f"{path}/ready" for path in V2_VERSION))


def test_every_error_status_is_documented_with_the_error_body():
    """What each operation can answer, from the code's point of view, is in its schema entry; every
    error entry is an ErrorBody; the success bodies have their own models."""
    openapi = APP.openapi()
    paths = openapi["paths"]
    answers = {
        ("get", "/health"): {"200", "413", "503"},
        ("get", "/model"): {"200", "413", "503"},
        ("get", "/limits"): {"200", "413"},
        ("post", "/predict"): {"200", "400", "413", "415", "422", "503"},
        ("post", "/predict/batch"): {"200", "400", "413", "415", "422", "503"},
        ("post", "/feedback"): {"200", "400", "401", "403", "404", "413", "422", "503"},
        ("get", "/review/queue"): {"200", "401", "403", "413", "422", "503"},
        ("get", "/review/image/{prediction_id}.png"): {"200", "401", "403", "404", "413", "422", "503"},
        ("get", "/v2"): {"200", "413"},
        ("get", "/v2/health/live"): {"200", "413"},
        ("get", "/v2/health/ready"): {"200", "413", "503"},
        **{("get", f"/v2/models/{{name}}{path}"): {"200", "404", "413", "422", "503"} for path in V2_MODEL_PATHS},
        **{
            ("post", f"/v2/models/{{name}}{path}/infer"): {"200", "400", "404", "413", "422", "503"}
            for path in V2_VERSION
        },
    }
    assert {(method, path) for path, item in paths.items() for method in item} == set(answers)
    for (method, path), statuses in answers.items():
        responses = paths[path][method]["responses"]
        assert set(responses) == statuses, (method, path)
        for status in statuses - {"200"} - ({"503"} if path == "/health" else set()):
            body = responses[status]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert paths["/predict"]["post"]["responses"]["503"]["headers"]["Retry-After"]
    assert paths["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Prediction"
    }
    assert openapi["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}  # binary extension
    assert infer["requestBody"]["content"]["application/json"]["schema"]["required"] == ["inputs"]
    for status in ("404", "405"):  # no operation answers these (the path or the method does not exist)
        assert f"{status}: " in openapi["info"]["description"]
