"""The deployment files, checked offline: no engine, no cluster.

- docker-compose.yml and deploy/docker-compose.boxes.yml validate with Debian's docker-compose (1.29),
  have the services and profiles the docs name, and build from Dockerfile targets.
- deploy/kubernetes/ validates against the Kubernetes schemas, strictly (unknown fields are errors), as
  files and as the kustomization's output; the shard count in each pod equals its StatefulSet's replicas.
- Every container command in all of them parses with the real soundbus CLI parser (a mistyped flag fails
  here, not at deploy time), runs on the image that has its code (classify needs torch), and every key
  file it names lies under a read-only mount.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from common.cli.main import build_parser
from tests.conftest import ROOT

COMPOSE = shutil.which("docker-compose")
KUBECTL = shutil.which("kubectl")
K8S_DIR = ROOT / "deploy" / "kubernetes"
BOXES = ROOT / "deploy" / "docker-compose.boxes.yml"
# Oldest Kubernetes the manifests support (the pod-index label of StatefulSet pods) and the newest schema shipped.
K8S_VERSIONS = ("1.28.0", None)
CURVE_FILE_FLAGS = ("--curve-secret", "--curve-server", "--curve-allow")
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="docker-compose is not installed (Debian: apt-get install docker-compose)"
)


# ---- helpers -----------------------------------------------------------------------------------


def compose_config(file: Path, *profiles: str) -> dict[str, Any]:
    """`docker-compose config` of ``file`` with ``profiles`` enabled, parsed (defaults filled in, no engine)."""
    args = [COMPOSE, "-f", str(file)]
    for p in profiles:
        args += ["--profile", p]
    r = subprocess.run(
        [*args, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/root"},  # no SOUNDBUS_* from the caller: the defaults
    )
    assert r.returncode == 0, f"docker-compose -f {file.name} config failed:\n{r.stderr}"
    return yaml.safe_load(r.stdout)


def parse_soundbus(argv: list[str], where: str):
    """Parse ``argv`` (what follows `soundbus`) with the real parser, as the image's entry point would."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        raise AssertionError(f"{where}: `soundbus {shlex.join(argv)}` does not parse (exit {e.code})") from None
    assert callable(args.func), where
    return args


def flag_values(argv: list[str], flag: str) -> list[str]:
    """Values of ``flag`` in ``argv``, written as `--flag VALUE` or `--flag=VALUE`."""
    out = []
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
    return out


def under(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def k8s_documents(paths: list[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def health_file() -> str:
    """Where the images' stages write their health (SOUNDBUS_HEALTH_FILE, set in the Dockerfile)."""
    (path,) = set(re.findall(r"SOUNDBUS_HEALTH_FILE=(\S+)", (ROOT / "Dockerfile").read_text()))
    assert path.startswith("/tmp/"), path  # the pods mount an emptyDir there
    return path


def kustomize_build() -> str:
    r = subprocess.run([KUBECTL, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"kubectl kustomize failed:\n{r.stderr}"
    return r.stdout


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def expand_k8s_args(container: dict[str, Any]) -> list[str]:
    """The container's args with $(VAR) references filled in from its env, as the kubelet does.

    Values that come from the downward API are only known in a pod: the pod index becomes 0.
    """
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "apps.kubernetes.io/pod-index" in str(e.get("valueFrom", {})):
            env[e["name"]] = "0"
    argv = [*container.get("command", [])[1:], *container.get("args", [])]

    def fill(m: re.Match) -> str:
        assert m.group(1) in env, f"{container['name']}: $({m.group(1)}) is not in its env"
        return env[m.group(1)]

    return [re.sub(r"\$\((\w+)\)", fill, a) for a in argv]


# ---- docker compose ------------------------------------------------------------------------------


@needs_compose
def test_compose_files_validate_with_the_services_and_profiles_the_docs_name() -> None:
    one_box = compose_config(ROOT / "docker-compose.yml", "mqtt", "web")["services"]
    # `docker compose up` starts the pipeline; the integrations come with their profiles.
    assert {name for name, s in one_box.items() if not s.get("profiles")} == {
        "proxy", "capture", "convert", "classify-vad", "classify-yamnet", "tail", "record"}
    assert {name: s["profiles"] for name, s in one_box.items() if s.get("profiles")} == {
        "mosquitto": ["mqtt"], "mqtt": ["mqtt"], "web": ["web"]}
    boxes = compose_config(BOXES, "inference-box", "capture-box", "capture-box-alsa")["services"]
    # Each service is in exactly one profile, so each box starts only its own services.
    profiles = {name: s.get("profiles", []) for name, s in boxes.items()}
    assert profiles == {
        **{s: ["inference-box"] for s in ("proxy", "convert", "classify-vad", "classify-yamnet", "tail", "record")},
        "capture": ["capture-box"],
        "capture-alsa": ["capture-box-alsa"],
    }


@needs_compose
@pytest.mark.parametrize("file,profiles", [
    (ROOT / "docker-compose.yml", ("mqtt", "web")),
    (BOXES, ("inference-box", "capture-box", "capture-box-alsa")),
], ids=["one-box", "boxes"])
def test_compose_commands_parse_build_from_dockerfile_targets_and_read_keys_from_read_only_mounts(
    file: Path, profiles: tuple[str, ...]
) -> None:
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    cfg = compose_config(file, *profiles)
    for name, svc in cfg["services"].items():
        if not svc["image"].startswith("soundbus:"):  # a third-party service (a broker): not ours to parse
            continue
        target = svc["build"]["target"]
        assert target in targets, f"{name}: build target {target} is not in the Dockerfile"
        assert Path(svc["build"]["context"]).resolve() == ROOT, name
        assert svc["image"] == f"soundbus:{target}", name
        argv = shlex.split(svc["command"])  # docker-compose splits a string command the same way
        # Inference needs torch; everything else stays on the slim image.
        assert target == ("torch" if argv[0] == "classify" else "slim"), name
        parse_soundbus(argv, f"{file.name}: {name}")
        read_only = [v.split(":")[1] for v in svc.get("volumes", []) if v.endswith(":ro")]
        for flag in CURVE_FILE_FLAGS:
            for path in flag_values(argv, flag):
                assert under(path, read_only), f"{name}: {flag} {path} is not on a read-only mount {read_only}"
        if file == BOXES:  # across machines every link is encrypted
            assert flag_values(argv, "--curve-secret"), f"{name} runs without CURVE"


# ---- kubernetes ----------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == [p.name for p in manifest_files()]
    stateful = {doc["metadata"]["name"] for _, doc in k8s_documents(manifest_files()) if doc["kind"] == "StatefulSet"}
    assert {r["name"] for r in kust["replicas"]} == stateful
    assert {r["source"]["name"] for r in kust["replacements"]} == stateful


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_manifests_validate_strictly_against_the_kubernetes_schemas(version: str | None) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")
    version = version or kv.utils.latest_version()
    kinds = []
    for path, doc in k8s_documents(manifest_files()):
        kinds.append(doc["kind"])
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            raise AssertionError(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {e}")
    assert {"Namespace", "Deployment", "StatefulSet", "Service"} <= set(kinds)


def test_a_manifest_with_an_unknown_field_fails_strict_validation() -> None:
    """The check above can fail: a misspelt field is an error, not ignored."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")
    doc = next(d for _, d in k8s_documents([K8S_DIR / "convert.yaml"]) if d["kind"] == "StatefulSet")
    doc["spec"]["podManagmentPolicy"] = doc["spec"].pop("podManagementPolicy")
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, kv.utils.latest_version(), strict=True)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: kustomize output not built")
def test_kustomize_output_validates_and_each_shard_count_equals_the_replicas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the test extra)")
    docs = [d for d in yaml.safe_load_all(kustomize_build()) if d]
    for doc in docs:
        kv.validate(doc, kv.utils.latest_version(), strict=True)
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "soundbus", doc["metadata"]
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    wanted = {r["name"]: r["count"] for r in kust["replicas"]}
    sets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet"}
    assert set(sets) == set(wanted)
    for name, sts in sets.items():
        assert sts["spec"]["replicas"] == wanted[name]
        (container,) = pod_containers(sts)
        argv = expand_k8s_args(container)
        assert flag_values(argv, "--shard") == [f"0/{wanted[name]}"], f"{name}: shard count is not the replicas"


def test_manifest_commands_parse_run_on_the_right_image_and_read_keys_and_health_from_mounts() -> None:
    seen = set()
    for path, doc in k8s_documents(manifest_files()):
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        metrics_port = pod["metadata"]["annotations"]["prometheus.io/port"]
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for c in pod_containers(doc):
            where = f"{path.name}: {c['name']}"
            assert not c.get("command") or c["command"][0] == "soundbus", f"{where}: not the soundbus entry point"
            argv = expand_k8s_args(c)
            args = parse_soundbus(argv, where)
            seen.add(argv[0])
            assert c["image"].split(":")[-1] == ("torch" if argv[0] == "classify" else "slim"), where
            if doc["kind"] == "StatefulSet":  # the pod index is the shard index
                assert getattr(args, "shard", None) is not None, f"{where}: a StatefulSet worker without --shard"
            # Prometheus scrapes the pod's address: the port annotated, on all interfaces.
            assert flag_values(argv, "--metrics-port") == [metrics_port], where
            assert {"name": "SOUNDBUS_METRICS_ADDR", "value": "0.0.0.0"} in c["env"], where
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            secret_mounts = [p for p, m in mounts.items() if m.get("readOnly") and "secret" in volumes[m["name"]]]
            for flag in CURVE_FILE_FLAGS:
                for value in flag_values(argv, flag):
                    assert under(value, secret_mounts), f"{where}: {flag} {value} is not on a read-only Secret mount"
            assert flag_values(argv, "--curve-secret"), f"{where}: runs without CURVE"
            # The health file (the image's SOUNDBUS_HEALTH_FILE) sits on a writable emptyDir: the root fs is read-only.
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]], where
            probe = " ".join(c["livenessProbe"]["exec"]["command"])
            assert health_file() in probe, f"{where}: the probe does not read the image's health file"
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"], where
    assert seen == {"proxy", "convert", "classify"}
