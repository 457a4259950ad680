"""deploy/ works as shipped: the KubeRay manifests validate against the KubeRay 1.7 CRDs, their
entrypoints parse with segray's own CLI and load their config, every pod gets what a GPU search
needs (/dev/shm in memory, the storage credentials, the data volume, the one image), and the
Dockerfile builds on the Ray version segray runs. The cluster lets no one else in: token
authentication on every Ray cluster, the token (never the storage keys) on the submitter, a
NetworkPolicy (validated against the Kubernetes schema) that admits the Ray ports only from the
cluster's own pods and its submitter, and no Service that takes the dashboard outside the
cluster. No Ray, no cluster: YAML and argparse only (tests/test_auth.py runs a token-protected
head).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from segray.cli import build_parser
from segray.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CRDS = Path(__file__).parent / "fixtures" / "kuberay-1.7"
CRD_FILES = {
    "RayJob": "kuberay-1.7-ray.io_rayjobs.yaml",
    "RayCluster": "kuberay-1.7-ray.io_rayclusters.yaml",
}
KINDS = {*CRD_FILES, "Secret", "NetworkPolicy"}
# The Kubernetes API's io.k8s.api.networking.v1.NetworkPolicy as a self-contained JSON schema.
NETWORK_POLICY_SCHEMA = (
    Path(__file__).parent / "fixtures" / "kubernetes" / "networkpolicy-networking.k8s.io-v1.json"
)
RAY_VERSION = version("ray")  # = ray.__version__, without importing Ray
SECRET = "segray-storage"
TOKEN_SECRET = "segray-ray-token"  # the Ray cluster's token, key auth_token (authOptions)
CLUSTER_LABEL = "segray.io/ray-cluster"  # on the head and worker pods: what the policy selects
CLIENT_LABEL = {"segray.io/ray-client": "true"}  # the submitter and other admitted clients
SUBMITTER_PORTS = {8265, 10001}  # the job API and the Ray Client: all a submitter may reach
# Text a user must replace. Any line holding one must say so with a trailing `# EDIT` comment.
PLACEHOLDER = re.compile(
    r"YOUR[-_]|REGISTRY/|my-(registry|bucket|org)\b|example\.(com|org)|CHANGE-?ME|<[a-z-]+>|\bTODO\b",
    re.I,
)
# In the RayJob manifests only these may be edited: the image, the storage URI (entrypoint) and
# the data claim; everything else must work as shipped.
EDITABLE_KEYS = ("image:", "entrypoint:", "claimName:")

MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2 MB of YAML


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _ray_manifests() -> list[Path]:
    return [p for p in MANIFESTS if any(d.get("kind") in CRD_FILES for d in _docs(p))]


def _strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever it lists properties: an unknown or
    misspelt field fails, as `kubectl apply` (strict field validation) rejects it. A CRD leaves
    it out, so plain jsonschema would let ``sizelimit: 8Gi`` through."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for item in schema:
            _strict(item)
    return schema


@cache
def crd_validator(kind: str, api_version: str) -> jsonschema.Draft7Validator:
    """A validator for ``kind`` at ``api_version`` (``ray.io/v1``) from the vendored CRD."""
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=YAML_LOADER)
    assert crd["spec"]["names"]["kind"] == kind, f"{CRD_FILES[kind]} is not the {kind} CRD"
    group, _, ver = api_version.partition("/")
    assert group == crd["spec"]["group"], f"{kind}: apiVersion {api_version} is not {group}/..."
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served", True)}
    assert ver in served, f"{kind}: apiVersion {api_version}; KubeRay 1.7 serves {sorted(served)}"
    schema = _strict(copy.deepcopy(served[ver]["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _rayjob(path: Path) -> dict[str, Any]:
    jobs = [d for d in _docs(path) if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, f"{path.name}: expected one RayJob, found {len(jobs)}"
    return jobs[0]


def _pods(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, pod spec) of the head and of every worker group."""
    cluster = job["spec"]["rayClusterSpec"]
    pods = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    return pods


def _entrypoint(job: dict[str, Any]) -> tuple[str, list[str]]:
    """(subcommand, its arguments) of ``python jobs/X.py ARGS``, the way jobs/X.py calls main."""
    tokens = shlex.split(job["spec"]["entrypoint"])
    assert tokens[0] == "python", f"entrypoint must run `python jobs/X.py ...`: {tokens}"
    m = re.fullmatch(r"jobs/(\w+)\.py", tokens[1])
    assert m, f"entrypoint runs {tokens[1]!r}, not one of jobs/*.py"
    script, command = ROOT / tokens[1], m.group(1)
    assert script.is_file(), f"entrypoint script {tokens[1]} does not exist"
    assert f'main(["{command}", *sys.argv[1:]])' in script.read_text(), (
        f"{tokens[1]} does not call main([{command!r}, *argv]): parse it another way"
    )
    return command, tokens[2:]


def _quantity(value: str | int) -> float:
    """A Kubernetes CPU/GPU quantity as a number ("500m" -> 0.5)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _dockerfile() -> str:
    path = DEPLOY / "Dockerfile"
    assert path.is_file(), "deploy/Dockerfile is missing: the manifests need an image with segray"
    return path.read_text()


def _workdir() -> str:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", _dockerfile(), re.M)
    assert workdirs, "deploy/Dockerfile sets no WORKDIR for jobs/ and configs/"
    return workdirs[-1]


# --------------------------------------------------------------------------- the manifests
def test_deploy_ships_both_rayjobs_and_the_secret_example():
    names = {p.name for p in MANIFESTS}
    assert {"kuberay-rayjob.yaml", "kuberay-rayjob-autoscaling.yaml"} <= names
    assert "storage-secret.example.yaml" in names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_a_kind_this_test_checks(path: Path):
    kinds = [d.get("kind") for d in _docs(path)]
    assert kinds and set(kinds) <= KINDS, (
        f"{path.name}: kinds {kinds}; tests/test_deploy.py checks only {sorted(KINDS)}: add a check"
    )


@pytest.mark.parametrize("path", _ray_manifests(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kuberay_crd(path: Path):
    for doc in _docs(path):
        kind = doc.get("kind")
        if kind not in CRD_FILES:
            continue
        errors = _errors(crd_validator(kind, doc.get("apiVersion", "")), doc)
        assert not errors, f"{path.name}: {kind} fails the KubeRay 1.7 CRD:\n" + "\n".join(errors)
        if kind == "RayJob":  # its cluster, against the RayCluster CRD of the same release too
            cluster = {"apiVersion": doc["apiVersion"], "kind": "RayCluster"}
            cluster |= {"metadata": {"name": "x"}, "spec": doc["spec"]["rayClusterSpec"]}
            errors = _errors(crd_validator("RayCluster", doc["apiVersion"]), cluster)
            assert not errors, (
                f"{path.name}: rayClusterSpec fails the RayCluster CRD:\n" + "\n".join(errors)
            )


def test_crd_validation_rejects_typos_and_wrong_types():
    """The validator is not vacuous: an unknown field and a wrong type both fail."""
    job = _rayjob(DEPLOY / "kuberay-rayjob.yaml")
    validator = crd_validator("RayJob", job["apiVersion"])
    assert not _errors(validator, job)

    typo = copy.deepcopy(job)
    head = typo["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["resources"]["limitz"] = {"cpu": "1"}
    assert any("limitz" in e for e in _errors(validator, typo))

    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["backoffLimit"] = "2"
    assert any(e.startswith("spec.backoffLimit") for e in _errors(validator, wrong_type))


@pytest.mark.parametrize("path", _ray_manifests(), ids=lambda p: p.name)
def test_entrypoint_parses_with_segray_and_loads_its_config(path: Path):
    job = _rayjob(path)
    spec = job["spec"]
    command, argv = _entrypoint(job)
    try:
        args = build_parser().parse_args([command, *argv])
    except SystemExit:
        pytest.fail(f"{path.name}: `segray {command} {shlex.join(argv)}` does not parse")
    assert args.config, f"{path.name}: the entrypoint names no --config"
    cfg = load_config(ROOT / args.config, args.overrides)  # a bad key or value raises here
    assert args.resume_or_start, (
        f"{path.name}: without --resume-or-start a retried or re-applied RayJob stops at its "
        "own earlier output instead of continuing it"
    )
    assert re.match(r"(s3|gs|abfss?)://", args.output), (
        f"{path.name}: --output {args.output} must be object storage every pod reaches"
    )
    assert "working_dir" not in spec.get("runtimeEnvYAML", ""), (
        f"{path.name}: the image holds the code; a working_dir upload replaces it"
    )

    # The dataset must be where every pod of the cluster reads it.
    pods = _pods(job)
    if cfg.data.source != "synthetic" and cfg.data.root and "://" not in cfg.data.root:
        root = Path(cfg.data.root)
        assert root.is_absolute(), f"{path.name}: data.root {root} must be absolute on the pods"
        for group, pod in pods:
            for c in pod["containers"]:
                mounts = [Path(m["mountPath"]) for m in c.get("volumeMounts", [])]
                assert any(root.is_relative_to(m) and m != Path("/") for m in mounts), (
                    f"{path.name}: data.root {root} is not on a volume mounted in {group}/"
                    f"{c['name']} (mounts: {', '.join(map(str, mounts))})"
                )

    # One trial (train.num_workers DDP workers) fits in one worker pod: the unit the cluster grows by.
    cluster = spec["rayClusterSpec"]
    per_trial = {
        "cpu": cfg.train.num_workers * cfg.train.cpus_per_worker,
        "nvidia.com/gpu": cfg.train.num_workers * cfg.train.gpus_per_worker * cfg.train.use_gpu,
    }
    capacity = 0
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        fits = min(
            int(_quantity(limits.get(k, 0)) // need) for k, need in per_trial.items() if need
        )
        assert fits >= 1, (
            f"{path.name}: a {group['groupName']} pod ({limits}) cannot hold one trial ({per_trial})"
        )
        if cluster.get("enableInTreeAutoscaling"):
            # segray checks at start that one trial fits the cluster as it is, without waiting.
            assert group["minReplicas"] >= 1, f"{path.name}: minReplicas 0: no trial could start"
            capacity += group["maxReplicas"] * fits
        else:
            assert group["replicas"] == group["minReplicas"] == group["maxReplicas"], (
                f"{path.name}: without autoscaling replicas, minReplicas and maxReplicas are one size"
            )
    if cluster.get("enableInTreeAutoscaling"):
        # By default segray runs as many trials as the cluster holds at the start (minReplicas):
        # none would wait, so the autoscaler would never add a pod.
        assert cfg.tune.max_concurrent_trials == capacity, (
            f"{path.name}: tune.max_concurrent_trials={cfg.tune.max_concurrent_trials}; set it to "
            f"{capacity} (maxReplicas x trials per pod) on the entrypoint"
        )


@pytest.mark.parametrize("path", _ray_manifests(), ids=lambda p: p.name)
def test_every_container_gets_shm_credentials_and_the_one_image(path: Path):
    job = _rayjob(path)
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION, (
        f"{path.name}: rayVersion {cluster['rayVersion']}, segray runs Ray {RAY_VERSION}"
    )
    images, workdir = set(), _workdir()
    for group, pod in _pods(job):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            where = f"{path.name}: {group}/{c['name']}"
            images.add(c["image"])
            shm = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            assert shm, (
                f"{where}: no /dev/shm mount (the default 64 MiB breaks NCCL and DataLoader)"
            )
            empty_dir = volumes.get(shm[0]["name"], {}).get("emptyDir", {})
            assert empty_dir.get("medium") == "Memory" and empty_dir.get("sizeLimit"), (
                f"{where}: /dev/shm must be an emptyDir with medium: Memory and a sizeLimit"
            )
            refs = [e.get("secretRef", {}).get("name") for e in c.get("envFrom", [])]
            assert SECRET in refs, f"{where}: no envFrom secretRef {SECRET} (storage credentials)"
            assert c.get("workingDir", workdir) == workdir, (
                f"{where}: workingDir {c.get('workingDir')} is not the image's WORKDIR {workdir}"
            )
    assert len(images) == 1, f"{path.name}: head and workers run different images: {images}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_placeholders_only_on_lines_marked_edit(path: Path):
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    unmarked = [
        line.strip()
        for line in lines
        if PLACEHOLDER.search(line.split(" #", 1)[0]) and "# EDIT" not in line
    ]
    assert not unmarked, f"{path.name}: placeholders on lines not marked # EDIT:\n" + "\n".join(
        unmarked
    )
    if path in _ray_manifests():
        edits = [line.strip() for line in lines if "# EDIT" in line]
        others = [line for line in edits if not any(k in line for k in EDITABLE_KEYS)]
        assert not others, f"{path.name}: only image, entrypoint, claimName are edits: {others}"
        assert any("image:" in e for e in edits) and any("entrypoint:" in e for e in edits), (
            f"{path.name}: mark the image and the entrypoint's storage URI with # EDIT"
        )


def test_secret_example_matches_the_secret_the_pods_read():
    refs = {
        e["secretRef"]["name"]
        for p in _ray_manifests()
        for _, pod in _pods(_rayjob(p))
        for c in pod["containers"]
        for e in c.get("envFrom", [])
        if "secretRef" in e
    }
    assert refs == {SECRET}, f"the RayJobs read secrets {refs or 'none'}, expected {SECRET}"
    secrets = [d for p in MANIFESTS for d in _docs(p) if d.get("kind") == "Secret"]
    assert [s["metadata"]["name"] for s in secrets] == [SECRET]
    (secret,) = secrets
    assert secret["apiVersion"] == "v1" and secret.get("type", "Opaque") == "Opaque"
    data = secret["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(data)
    assert all(isinstance(v, str) for v in data.values()), "stringData values must be strings"
    assert "AWS_ENDPOINT_URL" in (DEPLOY / "storage-secret.example.yaml").read_text()


# --------------------------------------------------------------------------- the image
def test_dockerfile_builds_on_the_ray_segray_runs():
    text = _dockerfile()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms, "deploy/Dockerfile has no FROM"
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[\w.]+)-py(?P<py>\d+)-gpu", froms[-1])
    assert m, f"deploy/Dockerfile: FROM {froms[-1]}, expected rayproject/ray:VERSION-pyXY-gpu"
    assert m["ray"] == RAY_VERSION, f"deploy/Dockerfile: Ray {m['ray']}, segray runs {RAY_VERSION}"
    copied = " ".join(re.findall(r"^COPY\s+(.+)$", text, re.M))
    for needed in ("pyproject.toml", "segray", "jobs", "configs"):
        assert re.search(rf"(^|\s){needed}(\s|$)", copied), f"deploy/Dockerfile copies no {needed}"
    joined = text.replace("\\\n", " ")  # continuation lines as one
    assert re.search(r"pip install --no-cache-dir\b[^\n]*\s\.(\s|$)", joined, re.M), (
        "deploy/Dockerfile does not `pip install --no-cache-dir .` the project"
    )
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git/", ".venv/", "runs/", "benchmarks/results/"):
        assert path in ignored, f".dockerignore does not keep {path} out of the build context"


# --------------------------------------------------------------------------- who gets in
def _ray_clusters(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, RayCluster spec) of every RayJob's cluster and every RayCluster in ``path``."""
    found = []
    for doc in _docs(path):
        if doc.get("kind") == "RayJob":
            found.append((doc["metadata"]["name"], doc["spec"]["rayClusterSpec"]))
        elif doc.get("kind") == "RayCluster":
            found.append((doc["metadata"]["name"], doc["spec"]))
    return found


def _network_policies() -> list[dict[str, Any]]:
    return [d for p in MANIFESTS for d in _docs(p) if d.get("kind") == "NetworkPolicy"]


@cache
def network_policy_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(NETWORK_POLICY_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector of matchLabels only selects a pod with ``labels``."""
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is checked here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("path", _ray_manifests(), ids=lambda p: p.name)
def test_every_ray_cluster_requires_the_token_from_its_secret(path: Path):
    clusters = _ray_clusters(path)
    assert clusters
    for name, spec in clusters:
        auth = spec.get("authOptions", {})
        assert auth.get("mode") == "token", (
            f"{path.name}: {name} runs without token authentication: any pod that reaches it "
            "can `ray job submit` code (set rayClusterSpec.authOptions.mode: token)"
        )
        assert auth.get("secretName") == TOKEN_SECRET, (
            f"{path.name}: {name} takes its token from {auth.get('secretName')!r}, the README "
            f"creates {TOKEN_SECRET}"
        )
        for group, pod in _pods({"spec": {"rayClusterSpec": spec}}):
            for c in pod["containers"]:
                mode = _env(c).get("RAY_AUTH_MODE", {}).get("value", "token")
                assert mode == "token", f"{path.name}: {group}/{c['name']} turns auth {mode}"


@pytest.mark.parametrize("path", _ray_manifests(), ids=lambda p: p.name)
def test_the_submitter_holds_the_token_and_no_storage_credentials(path: Path):
    job = _rayjob(path)
    assert job["spec"].get("submissionMode", "K8sJobMode") == "K8sJobMode"
    template = job["spec"]["submitterPodTemplate"]
    assert CLIENT_LABEL.items() <= template["metadata"]["labels"].items(), (
        f"{path.name}: the submitter lacks the label the NetworkPolicy admits: {CLIENT_LABEL}"
    )
    assert template["spec"]["restartPolicy"] == "Never"  # a Job's pod; KubeRay retries the job
    (submitter,) = template["spec"]["containers"]
    env = _env(submitter)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (TOKEN_SECRET, "auth_token")
    # Only the pods that read or write the bucket (the head: the driver; the workers: trials)
    # get the storage Secret; the submitter runs no user code against the bucket.
    refs = [e.get("secretRef", {}).get("name") for e in submitter.get("envFrom", [])]
    refs += [e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for e in env.values()]
    assert SECRET not in refs, f"{path.name}: the submitter holds the storage credentials"
    assert "command" not in submitter, "KubeRay fills in the `ray job submit` command"
    images = {c["image"] for _, pod in _pods(job) for c in pod["containers"]}
    assert images == {submitter["image"]}, f"{path.name}: the submitter runs another image"


@pytest.mark.parametrize("path", _ray_manifests(), ids=lambda p: p.name)
def test_no_service_takes_the_dashboard_outside_the_cluster(path: Path):
    for name, spec in _ray_clusters(path):
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", (
            f"{path.name}: {name}'s head Service is {head['serviceType']}: reachable from outside"
        )
        assert not head.get("enableIngress"), f"{path.name}: {name} enables an Ingress"
    exposing = {"Service", "Ingress", "Route", "Gateway", "HTTPRoute"}
    kinds = {d.get("kind") for p in MANIFESTS for d in _docs(p)}
    assert not kinds & exposing, f"deploy/ ships {kinds & exposing}: the dashboard stays inside"


def test_the_network_policy_validates_against_the_kubernetes_schema():
    policies = _network_policies()
    assert policies, "deploy/ ships no NetworkPolicy: every pod can reach the Ray ports"
    validator = network_policy_validator()
    for policy in policies:
        errors = _errors(validator, policy)
        assert not errors, "the NetworkPolicy fails the Kubernetes schema:\n" + "\n".join(errors)

    # The validator is not vacuous: a misspelt field, a wrong type and a bad enum all fail.
    (policy,) = policies
    typo = copy.deepcopy(policy)
    typo["spec"]["ingress"][0]["form"] = typo["spec"]["ingress"][0].pop("from")
    assert any("form" in e for e in _errors(validator, typo))
    wrong = copy.deepcopy(policy)
    wrong["spec"]["policyTypes"] = ["Inbound"]
    assert any(e.startswith("spec.policyTypes.0") for e in _errors(validator, wrong))
    port = copy.deepcopy(policy)
    port["spec"]["ingress"][1]["ports"][0]["port"] = [8265]
    assert any(e.startswith("spec.ingress.1.ports.0.port") for e in _errors(validator, port))


def test_the_network_policy_admits_ray_ports_only_from_the_cluster_and_its_submitter():
    (policy,) = _network_policies()
    spec = policy["spec"]
    assert "Ingress" in spec.get("policyTypes", []), "the policy must police ingress"
    selected = spec["podSelector"]
    assert selected.get("matchLabels"), "an empty podSelector would police every pod"
    # It selects every pod of every shipped cluster (the head and each worker group) ...
    for path in _ray_manifests():
        job = _rayjob(path)
        cluster = job["spec"]["rayClusterSpec"]
        groups = [("head", cluster["headGroupSpec"])]
        groups += [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
        for group, spec_ in groups:
            labels = spec_["template"].get("metadata", {}).get("labels", {})
            assert CLUSTER_LABEL in labels and _selects(selected, labels), (
                f"{path.name}: the NetworkPolicy does not select the {group} pods ({labels})"
            )
        submitter = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
        assert not _selects(selected, submitter), "the submitter must not pass as a Ray pod"

    # ... and each rule admits: the cluster's own pods (every port), the labelled submitter
    # (job API + Ray Client only) or the KubeRay operator (the dashboard only). No IP block, no
    # rule without a source (which would admit everyone).
    sources = []
    for rule in spec["ingress"]:
        assert rule.get("from"), f"a rule without `from` admits every pod: {rule}"
        ports = {p["port"] for p in rule.get("ports", [])}
        assert all(p.get("protocol", "TCP") == "TCP" for p in rule.get("ports", []))
        for peer in rule["from"]:
            assert "ipBlock" not in peer, f"an ipBlock admits addresses, not pods: {peer}"
            pods = peer.get("podSelector")
            assert pods and pods.get("matchLabels"), f"a peer of every pod: {peer}"
            if pods == selected and "namespaceSelector" not in peer:
                sources.append("cluster")
            elif _selects(pods, CLIENT_LABEL) and "namespaceSelector" not in peer:
                assert ports and ports <= SUBMITTER_PORTS, f"the submitter reaches {ports}"
                sources.append("submitter")
            elif pods["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}:
                assert ports == {8265}, f"the operator reaches {ports}"
                sources.append("operator")
            else:
                pytest.fail(f"the NetworkPolicy admits an unexpected peer: {peer}")
    assert sorted(sources) == ["cluster", "operator", "submitter"], sources


def test_the_image_turns_token_auth_on_by_default():
    """A pod of the image started without KubeRay's authOptions refuses to run open."""
    assert re.search(r"^ENV\s+RAY_AUTH_MODE=token\b", _dockerfile(), re.M), (
        "deploy/Dockerfile does not set ENV RAY_AUTH_MODE=token"
    )
