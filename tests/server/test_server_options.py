"""Every bound of every request option of ``POST /segment``, both sides, as a query parameter and
as a multipart field, generated from the options' schema (``SegmentOptions``): an option added
later is tested by the same cases, or the generator fails until it knows how to test it.

Also the service's own limits at their edges: a body of exactly ``max_body_bytes`` and an
image of exactly ``max_pixels`` are served, one byte or one pixel more is refused.
"""
from __future__ import annotations

import math
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import annotated_types
import pytest
import torch
from fastapi.testclient import TestClient

from anzoo.server.app import create_app
from anzoo.server.schemas import SegmentOptions
from anzoo.testing import confident_model

from helpers.pictures import noise_png

MODEL_ID = "r50-bn"
SCALE = (96, 64)

pytestmark = pytest.mark.usefixtures("one_thread", "no_api_key")



IMAGE = noise_png(60, 80)


@dataclass(frozen=True)
class Case:
    option: str
    value: str  # as sent
    accepted: bool
    why: str

    @property
    def id(self) -> str:
        return f"{self.option}={self.value}"


def _bounds(metadata: list[Any]) -> tuple[Any, bool, Any, bool, bool]:
    """(lower, lower inclusive, upper, upper inclusive, inf/nan allowed) of a field."""
    low = high = None
    low_in = high_in = True
    finite = False
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low, low_in = m.ge, True
        elif isinstance(m, annotated_types.Gt):
            low, low_in = m.gt, False
        elif isinstance(m, annotated_types.Le):
            high, high_in = m.le, True
        elif isinstance(m, annotated_types.Lt):
            high, high_in = m.lt, False
        elif getattr(m, "allow_inf_nan", None) is False:
            finite = True
    return low, low_in, high, high_in, not finite


def option_cases() -> list[Case]:
    """Both sides of every bound of every option, every choice and a wrong one."""
    cases: list[Case] = []
    for name, field in SegmentOptions.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) is typing.Literal:
            cases += [Case(name, str(choice), True, "a choice") for choice in typing.get_args(annotation)]
            cases.append(Case(name, f"no-such-{name}", False, "not a choice"))
        elif annotation in (int, float):
            low, low_in, high, high_in, inf_nan = _bounds(field.metadata)
            # a client picks these: every number needs both bounds
            assert low is not None and high is not None, f"option {name} is unbounded"
            step = 1 if annotation is int else 1e-6
            cases.append(Case(name, str(low), low_in, "lower bound"))
            cases.append(Case(name, str(low - step), False, "just below"))
            cases.append(Case(name, str(high), high_in, "upper bound"))
            cases.append(Case(name, str(high + step), False, "just above"))
            if annotation is float:  # the values of the issue that found these untested
                cases += [Case(name, str(low - 0.1), False, "below"), Case(name, str(high + 0.5), False, "above")]
                if not inf_nan:
                    cases += [Case(name, v, False, "not finite") for v in ("nan", "inf", "-inf")]
            else:
                cases.append(Case(name, str(low + 0.5), False, "not an integer"))
            cases.append(Case(name, "many", False, "not a number"))
        elif name == "model":  # an id of a loaded model, checked against the running models
            cases += [Case(name, MODEL_ID, True, "a loaded model"), Case(name, "r50-nope", False, "not loaded")]
        else:
            raise AssertionError(f"no test cases for the option {name!r} ({annotation}): teach option_cases")
    return cases


CASES = option_cases()


def test_the_generator_covers_every_option_and_the_known_bounds() -> None:
    assert {c.option for c in CASES} == set(SegmentOptions.model_fields)
    refused = {(c.option, c.value) for c in CASES if not c.accepted}
    assert {("score_thr", "-0.1"), ("score_thr", "1.5"), ("max_instances", "0"), ("max_instances", "1001"),
            ("mask_format", "no-such-mask_format")} <= refused
    accepted = {(c.option, c.value) for c in CASES if c.accepted}
    assert {("score_thr", "0.0"), ("score_thr", "1.0"), ("max_instances", "1"), ("max_instances", "1000")} <= accepted


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    model = confident_model(MODEL_ID, proposals=8, max_per_img=3)
    app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", max_wait_ms=0, warmup=False)
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def wait_ready(c: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.02)


def send(client: TestClient, case: Case, where: str):
    if where == "query":
        return client.post("/segment", params={case.option: case.value}, content=IMAGE,
                           headers={"Content-Type": "image/png"})
    return client.post("/segment", files={"image": ("a.png", IMAGE, "image/png")}, data={case.option: case.value})


@pytest.mark.parametrize("where", ["query", "form"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_option_bound(client: TestClient, case: Case, where: str) -> None:
    response = send(client, case, where)
    body = response.json()
    if not case.accepted:
        status, kind = (400, "unknown_model") if case.option == "model" else (422, "bad_option")
        assert (response.status_code, body["error"]) == (status, kind), (case, body)
        assert case.option in body["message"] or case.value in body["message"], body["message"]
        return
    assert response.status_code == 200, (case, body)
    instances = body["instances"]
    if case.option == "score_thr":
        assert all(i["score"] >= float(case.value) for i in instances)
        if float(case.value) == 0.0:
            assert instances  # the model finds something
    elif case.option == "max_instances":
        assert 1 <= len(instances) <= int(case.value)
    elif case.option == "mask_format":
        assert body["mask_format"] == case.value
        assert all(isinstance(i["mask"], dict if case.value == "rle" else list) for i in instances)
    elif case.option == "model":
        assert body["model"] == case.value


# --------------------------------------------------------------------------- the service's limits
@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    m = confident_model(MODEL_ID, proposals=8, max_per_img=1)
    return m


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "streamed"])
def test_body_of_exactly_max_body_bytes_is_served(model: torch.nn.Module, streamed: bool) -> None:
    size = len(IMAGE)

    def body() -> Any:
        if not streamed:
            return IMAGE
        return iter([IMAGE[i:i + 1000] for i in range(0, size, 1000)])  # no Content-Length

    for limit, status in ((size, 200), (size - 1, 413)):
        app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_body_bytes=limit)
        with TestClient(app) as c:
            wait_ready(c)
            response = c.post("/segment", content=body(), headers={"Content-Type": "image/png"})
        assert response.status_code == status, (limit, response.text)
        if status == 413:
            assert response.json()["error"] == "body_too_large" and str(limit) in response.json()["message"]


def test_image_of_exactly_max_pixels_is_served(model: torch.nn.Module) -> None:
    pixels = 60 * 80
    for limit, status in ((pixels, 200), (pixels - 1, 413)):
        app = create_app({MODEL_ID: model}, scale=SCALE, api_key="", warmup=False, max_pixels=limit)
        with TestClient(app) as c:
            wait_ready(c)
            response = c.post("/segment", content=IMAGE, headers={"Content-Type": "image/png"})
        assert response.status_code == status, (limit, response.text)
        if status == 413:
            assert response.json()["error"] == "too_many_pixels"


def test_max_instances_keeps_the_best(client: TestClient) -> None:
    everything = client.post("/segment?score_thr=0", content=IMAGE, headers={"Content-Type": "image/png"}).json()
    top = client.post("/segment?score_thr=0&max_instances=1", content=IMAGE,
                      headers={"Content-Type": "image/png"}).json()
    assert len(everything["instances"]) > 1
    assert top["instances"] == everything["instances"][:1]
    assert not math.isnan(top["instances"][0]["score"])


def test_score_thr_keeps_an_instance_scoring_exactly_it(client: TestClient) -> None:
    """score_thr means "at least": an instance scoring exactly the threshold is kept, by
    /segment and by /segment/render (its X-Instances count and its drawing)."""
    everything = client.post("/segment?score_thr=0", content=IMAGE, headers={"Content-Type": "image/png"}).json()
    top = everything["instances"][0]["score"]
    at = client.post("/segment", params={"score_thr": repr(top)}, content=IMAGE,
                     headers={"Content-Type": "image/png"}).json()
    assert [i["score"] for i in at["instances"]] == [s for s in (i["score"] for i in everything["instances"])
                                                      if s >= top]
    assert at["instances"][0]["score"] == top
    rendered = client.post("/segment/render", params={"score_thr": repr(top)}, content=IMAGE,
                           headers={"Content-Type": "image/png"})
    assert rendered.status_code == 200 and int(rendered.headers["x-instances"]) == len(at["instances"])
