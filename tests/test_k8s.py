"""KubeRay manifests, container images and the laptop-to-cluster path, checked without a cluster.

Every kustomization under k8s/ is rendered with the `kubectl` on PATH (or $KUBECTL), e.g. Debian 12's
kubectl 1.20 (kustomize v2.0.3) in CI and kubectl >= 1.27 (kustomize v5) on a workstation. Rendered
RayCluster / RayJob / RayService objects are validated against the KubeRay CRD schemas in
../shared/schemas/kuberay, strictly (an unknown field is an error, as with `kubectl apply
--validate=strict`). The entrypoints the manifests name run `--help` in the project's venv, the Serve
import paths import, and the versions, images, credentials, probes and Dockerfiles are checked.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
DOCS = REPO / "docs" / "kubernetes.md"
VENV_PY = REPO / ".venv" / "bin" / "python"
PY = str(VENV_PY) if VENV_PY.exists() else sys.executable

KUSTOMIZATIONS = sorted(p.parent.relative_to(REPO).as_posix() for p in K8S.rglob("kustomization.yaml"))
JOBS = ["ingest", "pretrain", "sweep", "study", "evaluate", "embed"]
RAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
SECRETS = {
    "pretextlab-s3",
    "pretextlab-api",
    "pretextlab-review-db",
}  # created by the user (docs/kubernetes.md), never rendered
PROJECT_IMAGES = {"pretextlab", "pretextlab-cuda"}
JOBS_MOUNT = "/etc/pretextlab/jobs"
SERVE_CONFIG = REPO / "serving" / "serve_config.yaml"
# kustomize v2.0.3 (kubectl 1.20) knows none of these kustomization fields.
V2_UNKNOWN_FIELDS = {
    "labels",
    "patches",
    "components",
    "replacements",
    "sortOptions",
    "buildMetadata",
    "openapi",
    "helmCharts",
    "helmGlobals",
}


# -- helpers ------------------------------------------------------------------------------------------
def pins() -> dict[str, str]:
    """Exact pins of pyproject.toml's dependencies (name -> version), extras stripped."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^;\s]+)", dep)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def ray_pin() -> str:
    return pins()["ray"]


def constraint(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\[[^]]*\])?==(\S+)", line.strip(), re.IGNORECASE)
        if m:
            return m.group(1)
    raise AssertionError(f"constraints.txt pins no {name}")


def kubectl() -> str:
    exe = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not exe:
        pytest.skip("no kubectl on PATH (.ci/run installs Debian's kubernetes-client; or set KUBECTL)")
    return exe


@functools.cache
def _render(kdir: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run([kubectl(), "kustomize", str(REPO / kdir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {kdir} failed:\n{out.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(out.stdout) if d)
    assert docs, f"kubectl kustomize {kdir} rendered nothing"
    return docs


def render(kdir: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_render(kdir)))


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def cluster_specs(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The RayClusterSpec inside a RayCluster, RayJob or RayService."""
    spec = doc.get("spec") or {}
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}.get(
        doc["kind"]
    )


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, role, pod spec) of every pod template an object holds; role: head|worker|submitter|deployment."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in RAY_KINDS:
        rc = cluster_specs(doc) or {}
        if rc.get("headGroupSpec"):
            yield f"{name} head", "head", rc["headGroupSpec"]["template"]["spec"]
        for g in rc.get("workerGroupSpecs") or []:
            yield f"{name} worker group {g['groupName']}", "worker", g["template"]["spec"]
        sub = (doc["spec"].get("submitterPodTemplate") or {}).get("spec")
        if sub:
            yield f"{name} submitter", "submitter", sub
    elif doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield name, "deployment", doc["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for c in pod.get("initContainers") or []:
        yield "init", c
    for c in pod.get("containers") or []:
        yield "main", c


def all_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        for where, role, pod in pod_specs(doc):
            for kind, c in containers(pod):
                yield f"{where} {kind} container {c.get('name')}", role, pod, c


def split_image(image: str) -> tuple[str, str | None]:
    """(repository without registry, tag) of an image reference."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    repo, _, tag = last.partition(":")
    return repo, tag or None


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: Any) -> float:
    m = _QUANTITY.match(str(value))
    assert m and m.group(2) in _SUFFIX, f"not a Kubernetes quantity: {value!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def entrypoint_words(doc: dict[str, Any]) -> list[str]:
    return shlex.split(doc["spec"]["entrypoint"])


def job_module(doc: dict[str, Any]) -> str:
    words = entrypoint_words(doc)
    assert words[:2] == ["python", "-m"] and len(words) >= 3, f"{doc['metadata']['name']}: entrypoint {words}"
    return words[2]


# -- schemas ------------------------------------------------------------------------------------------
def _strict(node: Any) -> Any:
    """An OpenAPI (structural) schema where objects with declared properties refuse unknown fields."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    path = SCHEMAS / f"ray.io_{RAY_KINDS[kind]}.yaml"
    if not path.is_file():
        pytest.skip(f"KubeRay CRD schemas not present at {SCHEMAS}")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # ~1 MB each
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


@functools.cache
def pod_template_schema() -> dict[str, Any]:
    """The core/v1 PodTemplateSpec schema, as embedded (fully expanded) in the RayCluster CRD."""
    return crd_schema("RayCluster")["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]["template"]


def schema_errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(schema)
    return sorted(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in validator.iter_errors(doc)
    )


# -- rendering ------------------------------------------------------------------------------------------
def test_the_expected_kustomizations_exist():
    assert KUSTOMIZATIONS == ["k8s/base", "k8s/overlays/dev", "k8s/overlays/prod"]


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_kustomization_uses_only_what_kustomize_v2_0_3_knows(kdir: str):
    """CI renders with kubectl 1.20 (kustomize v2.0.3): no newer fields, directories only under bases."""
    k = yaml.safe_load((REPO / kdir / "kustomization.yaml").read_text())
    assert not (set(k) & V2_UNKNOWN_FIELDS), f"{kdir}: kustomize v2.0.3 lacks {sorted(set(k) & V2_UNKNOWN_FIELDS)}"
    for entry in k.get("resources") or []:
        assert (REPO / kdir / entry).is_file(), f"{kdir}: resources entry {entry} must be a file (use bases: for dirs)"
    for entry in k.get("bases") or []:
        assert (REPO / kdir / entry / "kustomization.yaml").is_file(), f"{kdir}: base {entry} is not a kustomization"
    for entry in k.get("patchesJson6902") or []:
        assert "path" in entry and "patch" not in entry, f"{kdir}: kustomize v2.0.3 needs patchesJson6902 path:"
        assert set(entry["target"]) <= {"group", "version", "kind", "name", "namespace"}, entry["target"]
    for name in [*(k.get("patchesStrategicMerge") or []), *(e["path"] for e in k.get("patchesJson6902") or [])]:
        assert (REPO / kdir / name).is_file(), f"{kdir}: patch {name} missing"


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_every_kustomization_renders(kdir: str):
    docs = render(kdir)
    seen = set()
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), d
        key = (d["kind"], d["metadata"]["name"])
        assert key not in seen, f"{kdir}: {key} rendered twice"
        seen.add(key)
    assert set(by_kind(docs, "RayCluster")) == {"pretextlab"}
    assert set(by_kind(docs, "RayService")) == {"pretextlab-serve"}
    assert set(by_kind(docs, "RayJob")) == {f"pretextlab-{j}" for j in JOBS}
    assert {"pretextlab-tensorboard"} <= set(by_kind(docs, "Deployment"))
    assert {"pretextlab-tensorboard", "pretextlab-dashboard"} <= set(by_kind(docs, "Service"))
    assert {"pretextlab-jobs", "pretextlab-env"} <= set(by_kind(docs, "ConfigMap"))
    assert not by_kind(docs, "Secret"), f"{kdir}: Secrets are created by the user, never rendered"
    assert not by_kind(docs, "Ingress"), f"{kdir}: the dashboard Ingress stays commented out"
    if kdir != "k8s/base":
        assert set(by_kind(docs, "Namespace")) == {"pretextlab"}
        for d in docs:
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == "pretextlab", f"{kdir}: {d['kind']} {d['metadata']['name']}"
    for d in docs:
        assert d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "pretextlab", d["metadata"]


# -- custom resources against the KubeRay CRDs ------------------------------------------------------------
@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_ray_objects_validate_against_the_kuberay_crds(kdir: str):
    docs = [d for d in render(kdir) if d["kind"] in RAY_KINDS]
    assert len(docs) == 2 + len(JOBS)  # RayCluster, RayService, a RayJob per job
    for d in docs:
        errors = schema_errors(crd_schema(d["kind"]), d)
        assert not errors, f"{kdir}: {d['kind']}/{d['metadata']['name']}:\n" + "\n".join(errors[:20])
    # The check is strict: a misspelt field or a wrong type in a pod template is an error.
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "RayJob"))
    head = broken["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["imagePulPolicy"] = head.pop("imagePullPolicy", "IfNotPresent")
    broken["spec"]["ttlSecondsAfterFinished"] = "ten minutes"
    errors = schema_errors(crd_schema("RayJob"), broken)
    assert any("imagePulPolicy" in e for e in errors) and any("ttlSecondsAfterFinished" in e for e in errors), errors


# -- core kinds -----------------------------------------------------------------------------------------
def _pod_labels(docs: list[dict[str, Any]]) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
    """(labels, containers) of every pod the objects create, with the labels KubeRay adds to Ray pods."""
    out = []
    for d in docs:
        if d["kind"] == "Deployment":
            out.append((d["spec"]["template"]["metadata"]["labels"], d["spec"]["template"]["spec"]["containers"]))
        elif d["kind"] == "RayCluster":  # KubeRay labels: ray.io/cluster, ray.io/node-type
            rc = d["spec"]
            head = rc["headGroupSpec"]["template"]
            out.append(
                (
                    {
                        **head["metadata"].get("labels", {}),
                        "ray.io/cluster": d["metadata"]["name"],
                        "ray.io/node-type": "head",
                    },
                    head["spec"]["containers"],
                )
            )
    return out


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_core_objects_have_their_required_fields_and_references_resolve(kdir: str):
    docs = render(kdir)
    configmaps = by_kind(docs, "ConfigMap")
    for name, cm in configmaps.items():
        assert cm["data"] and all(isinstance(k, str) and isinstance(v, str) for k, v in cm["data"].items()), name
    for name, dep in by_kind(docs, "Deployment").items():
        sel = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert sel and sel.items() <= labels.items(), f"Deployment {name}: selector {sel} does not match {labels}"
        assert isinstance(dep["spec"].get("replicas", 1), int)
        if SCHEMAS.is_dir():  # the core/v1 PodTemplateSpec schema KubeRay embeds
            errors = schema_errors(pod_template_schema(), dep["spec"]["template"])
            assert not errors, f"Deployment {name}:\n" + "\n".join(errors[:20])
        for c in dep["spec"]["template"]["spec"]["containers"]:
            assert c.get("name") and c.get("image"), f"Deployment {name}: container without name/image"
    pods = _pod_labels(docs)
    for name, svc in by_kind(docs, "Service").items():
        sel = svc["spec"].get("selector")
        assert sel, f"Service {name}: no selector"
        matched = [cs for labels, cs in pods if sel.items() <= labels.items()]
        assert matched, f"Service {name}: selector {sel} matches no pod of this render"
        ports = {p.get("name"): p.get("containerPort") for cs in matched for c in cs for p in c.get("ports") or []}
        for p in svc["spec"]["ports"]:
            assert isinstance(p["port"], int), f"Service {name}: port {p}"
            target = p.get("targetPort", p["port"])
            assert target in ports or target in ports.values(), f"Service {name}: targetPort {target} not on {ports}"
    # Every ConfigMap / Secret a pod reads exists (ConfigMaps rendered here, Secrets documented).
    for where, _, pod, c in all_containers(docs):
        for ref in c.get("envFrom") or []:
            if "configMapRef" in ref:
                assert ref["configMapRef"]["name"] in configmaps, f"{where}: no ConfigMap {ref['configMapRef']}"
            if "secretRef" in ref:
                assert ref["secretRef"]["name"] in SECRETS, f"{where}: undocumented Secret {ref['secretRef']}"
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                assert ref["name"] in SECRETS, f"{where}: undocumented Secret {ref}"
        mounts = {m["name"] for m in c.get("volumeMounts") or []}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        assert mounts <= set(volumes), f"{where}: mounts {mounts - set(volumes)} have no volume"
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, f"{where}: volume of missing ConfigMap {v}"
    docs_text = DOCS.read_text() if DOCS.is_file() else ""
    for secret in SECRETS:
        assert f"create secret generic {secret}" in docs_text, f"docs/kubernetes.md must show how to create {secret}"


def test_the_commented_dashboard_ingress_is_a_valid_ingress_for_the_dashboard_service():
    lines = (K8S / "base" / "dashboard-ingress.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# apiVersion:"))
    body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines[start:])
    ingress = yaml.safe_load(body)
    assert ingress["apiVersion"] == "networking.k8s.io/v1" and ingress["kind"] == "Ingress"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    svc = yaml.safe_load((K8S / "base" / "dashboard-service.yaml").read_text())
    assert backend["name"] == svc["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ingress["spec"].get("tls"), "the dashboard runs code: the example Ingress must use TLS"
    kust = (K8S / "base" / "kustomization.yaml").read_text()
    assert re.search(r"^\s*#\s*- dashboard-ingress.yaml", kust, re.M), "keep it listed, commented, in the base"


# -- pods: non-root, resources, probes --------------------------------------------------------------------
@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_containers_run_as_non_root_with_requests_limits_and_probes(kdir: str):
    docs = render(kdir)
    checked = 0
    for where, role, pod, c in all_containers(docs):
        checked += 1
        psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, (
            f"{where}: runAsUser {uid!r} (numeric, non-zero: runAsNonRoot cannot verify a named image USER)"
        )
        assert csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert "ALL" in (csc.get("capabilities") or {}).get("drop", []), f"{where}: capabilities.drop ALL"
        assert not csc.get("privileged"), f"{where}: privileged"
        res = c.get("resources") or {}
        for key in ("cpu", "memory"):
            req, lim = (res.get("requests") or {}).get(key), (res.get("limits") or {}).get(key)
            assert req is not None and lim is not None, f"{where}: {key} requests and limits"
            assert quantity(req) <= quantity(lim), f"{where}: {key} request {req} > limit {lim}"
        gpus = (res.get("limits") or {}).get("nvidia.com/gpu")
        if gpus is not None:
            assert (res.get("requests") or {}).get("nvidia.com/gpu", gpus) == gpus, f"{where}: GPU request != limit"
            assert split_image(c["image"])[0] == "pretextlab-cuda", f"{where}: a GPU container needs the CUDA image"
        if role in ("head", "worker", "deployment") and c in pod["containers"]:
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{where}: readiness and liveness probes"
        if role in ("head", "worker") and c is pod["containers"][0]:
            assert c["name"].startswith("ray-"), f"{where}: the Ray container comes first"
            shm = [v for v in pod.get("volumes") or [] if (v.get("emptyDir") or {}).get("medium") == "Memory"]
            assert shm and any(m["mountPath"] == "/dev/shm" for m in c.get("volumeMounts") or []), (
                f"{where}: /dev/shm from a memory emptyDir (object store, DataLoader workers)"
            )
    assert checked >= 20
    # The embedding endpoint: a Serve worker is ready when the application answers /readyz on port 8000,
    # and every Serve pod has the API key from the pretextlab-api Secret.
    svc = by_kind(docs, "RayService")["pretextlab-serve"]
    rc = svc["spec"]["rayClusterConfig"]
    for g in rc["workerGroupSpecs"]:
        probe = g["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/readyz", 8000), probe
    for pod in [rc["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in rc["workerGroupSpecs"])]:
        refs = [r["secretRef"]["name"] for r in pod["containers"][0].get("envFrom") or [] if "secretRef" in r]
        assert "pretextlab-api" in refs, "PRETEXTLAB_API_KEY must reach every Serve pod (head builds the app)"
    # dev is CPU-only and fixed-size; prod has GPU groups and the autoscaler on every Ray cluster.
    ray_docs = [d for d in docs if d["kind"] in RAY_KINDS]
    gpu_groups = [
        g
        for d in ray_docs
        for g in cluster_specs(d).get("workerGroupSpecs") or []
        if "nvidia.com/gpu" in (g["template"]["spec"]["containers"][0].get("resources", {}).get("limits") or {})
    ]
    if kdir.endswith("prod"):
        assert all(
            cluster_specs(d).get("enableInTreeAutoscaling") is True
            for d in ray_docs
            if cluster_specs(d).get("workerGroupSpecs")
        ), "prod autoscales every cluster with workers"
        assert {g["groupName"] for g in gpu_groups} == {"gpu"} and len(gpu_groups) >= 4
        assert all(g["minReplicas"] == 0 for g in gpu_groups), "GPU groups scale from zero"
        assert any(g in gpu_groups for g in by_kind(docs, "RayCluster")["pretextlab"]["spec"]["workerGroupSpecs"])
    else:
        assert not gpu_groups, f"{kdir} is CPU-only"


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_ray_pods_keep_idle_workers_for_the_half_cpu_read_tasks(kdir: str):
    """Every Ray container's raylet keeps 2 idle workers per CPU (RAY_num_workers_soft_limit), as a local
    cluster does (pretextlab.cluster.worker_pool_config): Ray's default keeps one per free CPU and
    restarts the workers of the stream's half-CPU read tasks on every burst."""
    from pretextlab.cluster import IDLE_WORKERS_PER_CPU

    docs = render(kdir)
    maps = {name: d.get("data") or {} for name, d in by_kind(docs, "ConfigMap").items()}
    checked = 0
    for where, role, pod, c in all_containers(docs):
        if role not in ("head", "worker") or c is not pod["containers"][0]:
            continue
        env = {e["name"]: e.get("value") for e in c.get("env") or []}
        for ref in c.get("envFrom") or []:
            if "configMapRef" in ref:
                env = {**maps[ref["configMapRef"]["name"]], **env}
        cpus = quantity(((c.get("resources") or {}).get("limits") or {})["cpu"])
        limit = env.get("RAY_num_workers_soft_limit")
        assert limit is not None, f"{where}: no RAY_num_workers_soft_limit in its environment"
        assert int(limit) >= IDLE_WORKERS_PER_CPU * cpus, f"{where}: soft limit {limit} for {cpus:g} CPUs"
        checked += 1
    assert checked >= 4


# -- RayJobs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_rayjobs_are_templates_with_lifecycle_limits_and_plain_entrypoints(kdir: str):
    docs = render(kdir)
    configmaps = by_kind(docs, "ConfigMap")
    for name, job in by_kind(docs, "RayJob").items():
        spec = job["spec"]
        label = job["metadata"]["labels"]["pretextlab.io/job"]
        assert name == f"pretextlab-{label}"
        assert spec["suspend"] is True, f"{name}: a template is created suspended; the docs start it"
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert 0 < spec["ttlSecondsAfterFinished"] <= 3600, name
        assert 0 < spec["activeDeadlineSeconds"] <= 7 * 86400, name
        # The K8sJobMode submitter runs `ray job submit -- <entrypoint>` through a shell: plain words only.
        assert re.fullmatch(r"[A-Za-z0-9_./:=,@+-]+( [A-Za-z0-9_./:=,@+-]+)*", spec["entrypoint"]), (
            f"{name}: entrypoint needs no shell quoting, expansion or operators: {spec['entrypoint']!r}"
        )
        assert job_module(job) == f"pretextlab.jobs.{label}", f"{name}: entrypoint {spec['entrypoint']!r}"
        assert not spec.get("runtimeEnvYAML"), f"{name}: workers import pretextlab from the image, no runtime_env"
        # Files the entrypoint names under the jobs mount are keys of the ConfigMap mounted there on the head.
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mount = next((m for m in head["containers"][0].get("volumeMounts") or [] if m["mountPath"] == JOBS_MOUNT), None)
        assert mount, f"{name}: the head mounts the job configs at {JOBS_MOUNT}"
        volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
        keys = set(configmaps[volume["configMap"]["name"]]["data"])
        for word in entrypoint_words(job):
            if word.startswith(JOBS_MOUNT + "/"):
                assert word.rsplit("/", 1)[1] in keys, f"{name}: {word} is not in ConfigMap {sorted(keys)}"
    # The interactive cluster mounts the same configs, for `ray job submit` through its dashboard.
    head = by_kind(docs, "RayCluster")["pretextlab"]["spec"]["headGroupSpec"]["template"]["spec"]
    assert any(m["mountPath"] == JOBS_MOUNT for m in head["containers"][0]["volumeMounts"])


def _entrypoints() -> dict[str, list[str]]:
    """job module -> argv, from every RayJob of every kustomization (skips when kubectl is absent)."""
    out: dict[str, list[str]] = {}
    for kdir in KUSTOMIZATIONS:
        for job in by_kind(render(kdir), "RayJob").values():
            words = entrypoint_words(job)
            out.setdefault(job_module(job), words[3:])
    return out


def test_the_manifests_name_exactly_the_five_job_entrypoints():
    assert set(_entrypoints()) == {f"pretextlab.jobs.{j}" for j in JOBS}


@pytest.fixture(scope="module")
def help_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """`python -m <module> --help` in the venv for the five jobs, in parallel."""
    procs = {
        j: subprocess.Popen(
            [PY, "-m", f"pretextlab.jobs.{j}", "--help"],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for j in JOBS
    }
    out = {}
    for j, p in procs.items():
        stdout, stderr = p.communicate(timeout=240)
        out[j] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("job", JOBS)
def test_every_job_entrypoint_runs_help(job: str, help_runs):
    run = help_runs[job]
    assert run.returncode == 0, f"python -m pretextlab.jobs.{job} --help failed:\n{run.stderr[-2000:]}"
    assert "usage:" in run.stdout and f"pretextlab.jobs.{job}" in run.stdout, run.stdout[:500]


@pytest.mark.parametrize("job", JOBS)
def test_every_job_entrypoint_parses_the_arguments_of_its_rayjob(job: str):
    """The arguments a RayJob passes are accepted by the job's own parser (no unknown flag, no missing arg)."""
    import argparse
    import importlib

    argv = _entrypoints().get(f"pretextlab.jobs.{job}")
    assert argv is not None, f"no RayJob runs pretextlab.jobs.{job}"
    try:
        mod = importlib.import_module(f"pretextlab.jobs.{job}")
    except ImportError as exc:
        pytest.fail(f"pretextlab.jobs.{job} does not import: {exc}")
    parser = argparse.ArgumentParser(prog=f"python -m pretextlab.jobs.{job}", exit_on_error=False)
    mod.add_arguments(parser)
    try:
        parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"pretextlab.jobs.{job} rejects its RayJob arguments {argv}: {exc}")


# -- job configs --------------------------------------------------------------------------------------------
def _ray_cpus_gpus(rc: dict[str, Any]) -> tuple[float, float]:
    """Logical CPUs and GPUs of the worker groups at their maximum size (KubeRay: from the limits)."""
    cpus = gpus = 0.0
    for g in rc.get("workerGroupSpecs") or []:
        lim = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        n = g["maxReplicas"]
        cpus += n * float(g.get("rayStartParams", {}).get("num-cpus", quantity(lim["cpu"])))
        gpus += n * float(lim.get("nvidia.com/gpu", 0))
    return cpus, gpus


def _config_models() -> dict[str, Any]:
    from pretextlab.evaluate import EvaluateConfig
    from pretextlab.jobs.ingest import IngestConfig
    from pretextlab.training.config import PretrainConfig

    return {"ingest.yaml": IngestConfig, "pretrain.yaml": PretrainConfig, "evaluate.yaml": EvaluateConfig}


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_job_configs_validate_and_fit_their_clusters(kdir: str, tmp_path: Path):
    from pretextlab.core.config import load_config

    docs = render(kdir)
    data = by_kind(docs, "ConfigMap")["pretextlab-jobs"]["data"]
    assert set(data) == {"ingest.yaml", "pretrain.yaml", "sweep.yaml", "study.yaml", "evaluate.yaml", "embed.yaml"}
    cfgs = {}
    for key, model in _config_models().items():
        path = tmp_path / key
        path.write_text(data[key])
        cfgs[key] = load_config(model, path)  # raises ConfigError naming the field
    # embed.yaml tunes the run; ENCODER, CATALOG, --to and --registry come from the RayJob's entrypoint.
    from pretextlab.jobs.embed_batch import EmbedConfig

    (tmp_path / "embed.yaml").write_text(data["embed.yaml"])
    words = entrypoint_words(by_kind(docs, "RayJob")["pretextlab-embed"])
    flags = {
        "encoder": words[3],
        "catalog": words[4],
        "dest": words[words.index("--to") + 1],
        "registry": words[words.index("--registry") + 1],
    }
    load_config(EmbedConfig, tmp_path / "embed.yaml", flags=flags)
    pre, ing = cfgs["pretrain.yaml"], cfgs["ingest.yaml"]
    # The cluster cannot read a laptop path: every location is in object storage.
    for uri in [pre.storage, pre.registry, *(s.uri for s in pre.data.sources), ing.dest, *ing.sources]:
        assert uri.startswith("s3://"), f"{kdir}: {uri} is not in object storage"
    assert ing.dest in {s.uri for s in pre.data.sources}, "pretrain reads what ingest writes"
    env = by_kind(docs, "ConfigMap")["pretextlab-env"]["data"]
    assert env["PRETEXTLAB_STORE"] == ing.dest, "Serve's region store is what ingest writes"
    assert env["PRETEXTLAB_REGISTRY"] == pre.registry, "Serve loads encoders from where pretraining exports them"
    embed = entrypoint_words(by_kind(docs, "RayJob")["pretextlab-embed"])
    assert embed[embed.index("--registry") + 1] == pre.registry and embed[4] == ing.dest, embed
    # The pretraining run fits the job's Ray cluster at full size.
    rc = by_kind(docs, "RayJob")["pretextlab-pretrain"]["spec"]["rayClusterSpec"]
    cpus, gpus = _ray_cpus_gpus(rc)
    need = pre.train.num_workers * pre.train.cpus_per_worker + pre.train.data_cpus
    assert cpus >= need, f"{kdir}: pretrain needs {need} CPUs, its cluster has {cpus}"
    if pre.train.use_gpu:
        assert gpus >= pre.train.num_workers, f"{kdir}: {pre.train.num_workers} GPU workers, {gpus} GPUs"
    # The sweep (its own loader: pretrain base resolved next to it, space and scheduler checked) trains
    # this pretraining config, reports its metric, and writes where TensorBoard reads.
    from pretextlab.training.sweep_config import known_metrics, load_sweep_config

    (tmp_path / "sweep.yaml").write_text(data["sweep.yaml"])
    sweep = load_sweep_config(tmp_path / "sweep.yaml")
    assert sweep.pretrain.model_dump(exclude={"validation"}) == pre.model_dump(exclude={"validation"}), (
        f"{kdir}: the sweep must train jobs/pretrain.yaml"
    )
    assert sweep.space(), f"{kdir}: an explicit search space (configs/sweep defaults are not in the image)"
    assert sweep.tune.metric in known_metrics(sweep.trial_base()), f"{kdir}: trials never report {sweep.tune.metric}"
    assert sweep.storage_root.startswith("s3://")
    tb = by_kind(docs, "Deployment")["pretextlab-tensorboard"]["spec"]["template"]["spec"]["containers"][0]
    logdir = next(a.split("=", 1)[1] for a in tb["args"] if a.startswith("--logdir="))
    assert logdir.rstrip("/") == sweep.storage_root.rstrip("/"), (
        f"{kdir}: TensorBoard reads {logdir}, the sweep writes under {sweep.storage_root}"
    )
    cpus, gpus = _ray_cpus_gpus(by_kind(docs, "RayJob")["pretextlab-sweep"]["spec"]["rayClusterSpec"])
    trial = sweep.trial_base().train
    assert cpus >= trial.num_workers * trial.cpus_per_worker + trial.data_cpus, f"{kdir}: one trial does not fit"
    assert not trial.use_gpu or gpus >= trial.num_workers, f"{kdir}: one GPU trial does not fit"
    # The study: every cell's pretraining config builds, reads the store ingest writes, exports where Serve
    # loads from, writes its report to object storage, and one cell fits the study's Ray cluster.
    from pretextlab.study import load_study, plan_cells
    from pretextlab.training.config import PretrainConfig
    from pretextlab.training.setup import check

    (tmp_path / "study.yaml").write_text(data["study.yaml"])
    study = load_study(tmp_path / "study.yaml")
    assert study.storage.startswith("s3://") and study.registry == pre.registry, kdir
    assert {d.store for d in study.datasets} <= {ing.dest}, f"{kdir}: the study reads what ingest writes"
    cpus, gpus = _ray_cpus_gpus(by_kind(docs, "RayJob")["pretextlab-study"]["spec"]["rayClusterSpec"])
    for cell in plan_cells(study, f"{study.storage}/runs"):
        cfg = PretrainConfig.model_validate(cell.pretrain)
        check(cfg)
        t = cfg.train
        assert cpus >= t.num_workers * t.cpus_per_worker + t.data_cpus, f"{kdir}: study cell {cell.id} does not fit"
        assert not t.use_gpu or gpus >= t.num_workers, f"{kdir}: study cell {cell.id} does not fit the GPUs"


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# -- Serve ----------------------------------------------------------------------------------------------
def test_serve_config_v2_is_the_applications_section_of_serving_serve_config():
    assert SERVE_CONFIG.is_file(), "serving/serve_config.yaml (the `serve deploy` config) is missing"
    run = subprocess.run(
        [PY, str(K8S / "render_serve_config.py"), "--check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    source = yaml.safe_load(SERVE_CONFIG.read_text())
    for kdir in KUSTOMIZATIONS:
        rs = by_kind(render(kdir), "RayService")["pretextlab-serve"]
        assert yaml.safe_load(rs["spec"]["serveConfigV2"]) == {"applications": source["applications"]}, kdir


def test_render_serve_config_refuses_code_in_runtime_env(tmp_path: Path):
    bad = tmp_path / "serve_config.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    {
                        "name": "a",
                        "import_path": "pretextlab.serving.app:build_app",
                        "runtime_env": {"working_dir": "."},
                    }
                ]
            }
        )
    )
    run = subprocess.run(
        [PY, str(K8S / "render_serve_config.py"), "--source", str(bad), "--target", str(tmp_path / "out.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "runtime_env.working_dir" in run.stderr, run.stderr
    assert not (tmp_path / "out.yaml").exists()


def test_every_serve_import_path_imports():
    paths = set()
    for kdir in KUSTOMIZATIONS:
        for rs in by_kind(render(kdir), "RayService").values():
            paths |= {a["import_path"] for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]}
    assert "pretextlab.serving.app:build_app" in paths
    code = (
        "import importlib, sys\nfor p in sys.argv[1:]:\n    m, _, a = p.partition(':')\n"
        "    obj = getattr(importlib.import_module(m), a)\n    assert callable(obj), p\nprint('ok')"
    )
    run = subprocess.run([PY, "-c", code, *sorted(paths)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


def test_the_serve_cluster_fits_the_replicas_the_serve_config_starts():
    """Every deployment's minimum replicas fit the RayService's workers (else Serve waits forever)."""
    assert SERVE_CONFIG.is_file(), "serving/serve_config.yaml is missing"
    cpus = gpus = 0.0
    for app in yaml.safe_load(SERVE_CONFIG.read_text())["applications"]:
        args = app.get("args") or {}
        for m in args.get("models") or []:
            n = (m.get("autoscaling") or {}).get("min_replicas", 1)
            cpus += n * float(m.get("num_cpus", 1.0))
            gpus += n * float(m.get("num_gpus", 0.0))
        ingress = args.get("ingress") or {}
        cpus += (ingress.get("autoscaling") or {}).get("min_replicas", 1) * float(ingress.get("num_cpus", 0.5))
    for kdir in KUSTOMIZATIONS:
        rc = by_kind(render(kdir), "RayService")["pretextlab-serve"]["spec"]["rayClusterConfig"]
        have_cpus, have_gpus = _ray_cpus_gpus(rc)
        assert have_cpus >= cpus and have_gpus >= gpus, (
            f"{kdir}: Serve replicas need {cpus} CPUs / {gpus} GPUs, its workers have {have_cpus} / {have_gpus}"
        )


def test_serve_pods_provide_every_environment_variable_the_serve_config_needs():
    assert SERVE_CONFIG.is_file(), "serving/serve_config.yaml is missing"
    text = yaml.safe_dump(yaml.safe_load(SERVE_CONFIG.read_text())["applications"])  # not the comments
    # ${VAR} and ${VAR:-placeholder} alike: the placeholders name buckets that are not this deployment's.
    required = {m.group(1) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}", text)}
    apps = yaml.safe_load(text)
    required |= {
        (a.get("args") or {}).get("api_key_env", "PRETEXTLAB_API_KEY")
        for a in apps
        if not (a.get("args") or {}).get("insecure_local")
    }
    secret_keys = {
        "pretextlab-api": {"PRETEXTLAB_API_KEY"},
        "pretextlab-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    }
    for kdir in KUSTOMIZATIONS:
        docs = render(kdir)
        env_cm = by_kind(docs, "ConfigMap")
        rc = by_kind(docs, "RayService")["pretextlab-serve"]["spec"]["rayClusterConfig"]
        for pod in [rc["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in rc["workerGroupSpecs"])]:
            c = pod["containers"][0]
            have = {e["name"] for e in c.get("env") or []}
            for ref in c.get("envFrom") or []:
                if "configMapRef" in ref:
                    have |= set(env_cm[ref["configMapRef"]["name"]]["data"])
                if "secretRef" in ref:
                    have |= secret_keys.get(ref["secretRef"]["name"], set())
            assert required <= have, f"{kdir}: Serve pods lack {sorted(required - have)}"


# -- versions and images ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_ray_versions_and_image_tags_equal_the_pinned_ray_version(kdir: str):
    ray = ray_pin()
    docs = render(kdir)
    for d in docs:
        if d["kind"] in RAY_KINDS:
            assert cluster_specs(d)["rayVersion"] == ray, f"{d['kind']}/{d['metadata']['name']}: rayVersion"
    for where, role, _, c in all_containers(docs):
        repo, tag = split_image(c["image"])
        assert "@sha256:" in c["image"] or (tag and tag != "latest"), f"{where}: unpinned image {c['image']}"
        if repo in PROJECT_IMAGES:
            assert tag == ray, f"{where}: {c['image']} is not tagged with Ray {ray}"
        elif repo == "moto":
            assert tag == constraint("moto"), f"{where}: moto image {tag} != the tests' moto {constraint('moto')}"
        else:
            pytest.fail(f"{where}: unexpected image {c['image']}")
        if role in ("head", "worker", "submitter"):
            assert repo in PROJECT_IMAGES, f"{where}: Ray pods run the project image, not {c['image']}"


def _dockerfile(variant: str) -> str:
    return (REPO / "docker" / f"Dockerfile.{variant}").read_text()


def _stages(text: str) -> list[list[str]]:
    """Instructions (continuations joined) grouped by FROM stage; ARGs before the first FROM in stage 0."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf = f"{buf} {line[:-1]}" if line.endswith("\\") else f"{buf} {line}"
        if not line.endswith("\\"):
            lines.append(buf.strip())
            buf = ""
    stages: list[list[str]] = [[]]
    for ins in lines:
        if ins.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(ins)
    return stages


@pytest.mark.parametrize("variant,suffix", [("cpu", "cpu"), ("cuda", "gpu")])
def test_dockerfile_builds_the_wheel_and_installs_it_pinned_as_non_root(variant: str, suffix: str):
    text = _dockerfile(variant)
    pre, builder, runtime = _stages(text)
    args = dict(re.match(r"ARG (\w+)=?(.*)", a).groups() for a in pre if a.startswith("ARG "))
    assert args["RAY_VERSION"] == ray_pin()
    assert args["BASE_IMAGE"] == f"rayproject/ray:${{RAY_VERSION}}-py311-{suffix}"
    assert "3.11" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert builder[0] == "FROM ${BASE_IMAGE} AS wheel" and runtime[0] == "FROM ${BASE_IMAGE}"
    # Stage 1 builds the wheel from the wheel's inputs only: the source roots pyproject.toml packages.
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    roots = {p.split("/")[0] for p in wheel["packages"]} | set(wheel.get("force-include", {}))
    copied = {
        ins.split()[-2].rstrip("/")
        for ins in builder
        if ins.startswith("COPY ") and "./" in ins.split()[-1] and not ins.split()[-1] == "./"
    }
    assert copied == roots, f"the wheel stage copies {copied}, pyproject.toml packages {roots}"
    assert any(re.search(r"pip wheel --no-deps .*\.$", ins) for ins in builder)
    # Stage 2: the wheel, pinned by constraints.txt; no source tree, no editable install; numeric non-root user.
    install = next(ins for ins in runtime if "pip install" in ins)
    assert "-c /tmp/constraints.txt" in install and "/tmp/wheels/pretextlab-*.whl" in install
    assert " -e " not in install
    for ins in runtime:
        if ins.startswith("COPY "):
            assert "--from=wheel" in ins or ins.split()[-2] == "constraints.txt", f"runtime stage copies source: {ins}"
    smoke = re.search(r"for job in ([\w ]+); do python -m pretextlab\.jobs\.\$job --help", install)
    assert smoke and smoke.group(1).split() == JOBS, "the build checks every job entrypoint"
    users = [ins for ins in runtime if ins.startswith("USER ")]
    assert users and users[-1].split()[1].isdigit() and int(users[-1].split()[1]) > 0, users
    assert "ENV PRETEXTLAB_GIT_COMMIT=${GIT_COMMIT}" in runtime
    if variant == "cpu":
        assert "download.pytorch.org/whl/cpu" in text, "the CPU image takes torch's CPU build"


def test_dockerignore_lets_in_only_the_wheel_inputs():
    lines = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    roots = {"platform", "storage", "jobs", "serving", "configs/sweep"}
    assert allowed == roots | {"pyproject.toml", "README.md", "constraints.txt"}
    assert "**/__pycache__" in lines


def _tool_dir(tmp_path: Path, tools: list[str]) -> Path:
    """A PATH folder holding only links to ``tools`` (so a missing command really is missing)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    return bindir


def test_make_image_fails_clearly_without_docker(tmp_path: Path):
    bindir = _tool_dir(tmp_path, ["make", "sh", "bash", "sed", "git", "test", "env"])
    run = subprocess.run(
        ["make", "-s", "image"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(bindir), "HOME": str(tmp_path)},
    )
    assert run.returncode != 0 and "make image needs Docker" in run.stderr, run.stderr
    # A docker client without an engine (as on this machine) gets its own message.
    (bindir / "docker").write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    (bindir / "docker").chmod(0o755)
    run = subprocess.run(
        ["make", "-s", "image"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(bindir), "HOME": str(tmp_path)},
    )
    assert run.returncode != 0 and "running Docker engine" in run.stderr, run.stderr


def test_make_image_builds_each_variant_tagged_with_the_ray_pin(tmp_path: Path):
    bindir = _tool_dir(tmp_path, ["make", "sh", "bash", "sed", "git", "test", "env"])
    log = tmp_path / "docker.log"
    (bindir / "docker").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')  # records the calls, builds nothing
    (bindir / "docker").chmod(0o755)
    run = subprocess.run(
        ["make", "-s", "image", "VARIANT=cpu cuda", "IMAGE=reg.example.com/team/pretextlab"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(bindir), "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr
    builds = [ln.split() for ln in log.read_text().splitlines() if ln.startswith("build ")]
    ray = ray_pin()
    assert len(builds) == 2
    for words, (variant, name) in zip(builds, [("cpu", "pretextlab"), ("cuda", "pretextlab-cuda")], strict=True):
        assert words[words.index("-f") + 1] == f"docker/Dockerfile.{variant}"
        assert f"RAY_VERSION={ray}" in words and words[-1] == "."
        tags = [words[i + 1] for i, w in enumerate(words) if w == "-t"]
        assert f"reg.example.com/team/{name}:{ray}" in tags
    assert not any(ln.startswith("push ") for ln in log.read_text().splitlines()), "no push without PUSH=1"


# -- credentials ------------------------------------------------------------------------------------------
_CREDENTIAL_PATTERNS = [
    (re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b"), "an AWS access key id"),
    (
        re.compile(r"(?i)\b(?:aws_)?secret_?access_?key\b\s*[:=]\s*[\"']?(?![\"']?\s*$)(?!\$|<|\.\.\.)[^\s\"']{8,}"),
        "a secret access key value",
    ),
    (re.compile(r"(?i)\bsecretAccessKey\b\s*:\s*\S"), "secretAccessKey"),
    (re.compile(r"(?i)\bpassword\s*:\s*\S"), "a password"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"(?i)\b(?:api[_-]?key|auth_token|token)\b\s*[:=]\s*[\"']?[A-Za-z0-9+/_-]{24,}"), "a token"),
]
_SENSITIVE_ENV = re.compile(r"(?i)(SECRET|PASSWORD|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL)")


def credential_findings(text: str, docs: list[dict[str, Any]] | None = None) -> list[str]:
    """Literal credentials in a text (and its parsed objects): patterns, Secret data, sensitive env values."""
    found = [f"{what}: {m.group(0)[:40]}" for rx, what in _CREDENTIAL_PATTERNS for m in rx.finditer(text)]
    for d in docs or []:
        if not isinstance(d, dict):
            continue
        if d.get("kind") == "Secret" and (d.get("data") or d.get("stringData")):
            found.append(f"Secret {d.get('metadata', {}).get('name')} holds data")
        for key, value in _walk(d):
            if key in ("env", "literals") and isinstance(value, list):
                for e in value:
                    name, val = (e.get("name"), e.get("value")) if isinstance(e, dict) else (str(e).partition("=")[::2])
                    if name and val and _SENSITIVE_ENV.search(name):
                        found.append(f"literal value for {name}")
    return found


def test_the_credential_scan_catches_planted_credentials():
    key_id = "AKIA" + "Q" * 16
    planted = [
        f"aws_access_key_id: {key_id}",
        "AWS_SECRET_ACCESS_KEY=" + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",
        "  password: hunter2hunter2",
        "-----BEGIN RSA PRIVATE KEY-----",
    ]
    for text in planted:
        assert credential_findings(text), text
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "c2VjcmV0"}}
    env = {"kind": "Deployment", "spec": {"env": [{"name": "PRETEXTLAB_API_KEY", "value": "x" * 20}]}}
    assert credential_findings("", [secret]) and credential_findings("", [env])
    assert not credential_findings("envFrom:\n  - secretRef:\n      name: pretextlab-s3\n")


def test_no_manifest_image_file_or_doc_holds_a_literal_credential():
    files = [p for p in K8S.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [*(REPO / "docker").glob("*"), REPO / ".dockerignore", DOCS, REPO / ".ci" / "run"]
    findings = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        docs = list(yaml.safe_load_all(text)) if path.suffix == ".yaml" else None
        findings += [f"{path.relative_to(REPO)}: {f}" for f in credential_findings(text, docs)]
    if shutil.which(os.environ.get("KUBECTL") or "kubectl"):
        for kdir in KUSTOMIZATIONS:
            docs = render(kdir)
            findings += [f"{kdir} (rendered): {f}" for f in credential_findings(yaml.safe_dump_all(docs), docs)]
    assert not findings, "\n".join(findings)


# -- CI and docs ------------------------------------------------------------------------------------------
def _ci_sandbox(tmp_path: Path, with_kubectl: bool) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    bindir = _tool_dir(tmp_path, ["bash", "id", "env", "dirname", "python3.11"])
    log = tmp_path / "calls.log"
    for tool in ["apt-get", "make", "sudo"] + (["kubectl"] if with_kubectl else []):
        (bindir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (bindir / tool).chmod(0o755)
    return repo, {"PATH": str(bindir), "HOME": str(tmp_path), "LOG": str(log)}


@pytest.mark.parametrize("with_kubectl", [False, True])
def test_ci_installs_kubectl_from_debian_only_when_missing(tmp_path: Path, with_kubectl: bool):
    repo, env = _ci_sandbox(tmp_path, with_kubectl)
    run = subprocess.run(
        ["bash", str(repo / ".ci" / "run")], cwd=repo, capture_output=True, text=True, timeout=60, env=env
    )
    assert run.returncode == 0, run.stderr
    calls = Path(env["LOG"]).read_text().splitlines()
    assert calls[-1] == "make test", calls
    installs = [c for c in calls if "apt-get" in c and "install" in c and "chromium" not in c and "postgresql" not in c]
    if with_kubectl:
        assert not installs, calls
    else:
        assert installs and "kubernetes-client" in installs[0], calls
        assert all("kubernetes-client" in c for c in installs) and "-y" in installs[0]


def test_docs_walk_the_laptop_to_cluster_path_with_names_that_exist():
    assert DOCS.is_file(), "docs/kubernetes.md is missing"
    text = DOCS.read_text()
    for needle in [
        "make image",
        "kubectl apply -k k8s/overlays/dev",
        "ray job submit",
        "port-forward",
        "RAY_AUTH_TOKEN",
        "tensorboard",
        "curl",
        "/v1/embeddings",
        "X-API-Key",
        "suspend",
    ]:
        assert needle in text, f"docs/kubernetes.md does not mention {needle!r}"
    if SCHEMAS.is_dir():
        assert "controller-gen" in text and "feeaf72" in text, "say which KubeRay CRDs the manifests match"
    for path in re.findall(r"-k (k8s/[\w/]+)", text):
        assert (REPO / path / "kustomization.yaml").is_file(), f"docs name {path}"
    # Objects the commands name exist in the dev render (or are the ones KubeRay creates from them).
    docs = render("k8s/overlays/dev")
    names = {d["metadata"]["name"] for d in docs}
    rayjobs, rayclusters = set(by_kind(docs, "RayJob")), set(by_kind(docs, "RayCluster"))
    generated = (
        {f"{n}-head-svc" for n in rayclusters | rayjobs}
        | {f"{n}-{s}" for n in by_kind(docs, "RayService") for s in ("serve-svc", "head-svc")}
        | rayjobs
        | rayclusters
    )
    for kind, name in re.findall(
        r"\b(svc|rayjob|rayservice|raycluster|deployment|job|secret)[/ ]"
        r"(pretextlab[\w-]*|s3-dev)\b",
        text,
    ):
        if kind == "secret":
            assert name in SECRETS | set(by_kind(docs, "RayCluster")), f"docs name secret {name}"
        else:
            assert name in names | generated, f"docs name {kind}/{name}, which the dev overlay does not create"
