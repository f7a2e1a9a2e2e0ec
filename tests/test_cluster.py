"""A real two-node Ray cluster on loopback with token authentication: a search launched by
address runs on both nodes with the shared artefacts, ``hmem tune submit`` with the cluster's
token runs the quickstart to completion, and a client with no token or a wrong one is refused.

Ray 2.60 swaps 127.0.0.1 (in ``--node-ip-address`` and ``--address``) for the machine's outward
address whenever multi-node support is on, which joining a second node needs. Other loopback
addresses are kept, so the head runs on 127.0.0.2 and the second node on 127.0.0.3: every byte
stays on loopback, and the two nodes are told apart by address. Each node's agent listens on a
free port rather than Ray's default, which another Ray on this machine may hold, and keeps its
files in a temp dir of its own. Everything
started here is stopped through the process groups this module holds, never by name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from processes import stop_ray_node

from hmem.spaces import Cell

REPO = Path(__file__).resolve().parents[1]
HMEM = [sys.executable, "-m", "hmem.cli"]
RAY = str(Path(sys.executable).with_name("ray"))
HEAD, SECOND = "127.0.0.2", "127.0.0.3"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HEAD, 0))
        return sock.getsockname()[1]


def _client_env(tmp_path: Path, token: str | None) -> dict[str, str]:
    """A client's environment: with ``token``, or with none at all (no variable, no file)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    if token is None:
        home = tmp_path / "tokenless-home"
        home.mkdir(exist_ok=True)
        return {**env, "HOME": str(home)}  # no ~/.ray/auth_token either
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


class Cluster:
    def __init__(self, gcs: str, dashboard: str, token: str, env: dict[str, str]):
        self.gcs, self.dashboard, self.token, self.env = gcs, dashboard, token, env

    def alive_nodes(self) -> int:
        status = subprocess.run([RAY, "status", "--address", self.gcs], env=self.env,
                                capture_output=True, text=True, timeout=60)
        active = status.stdout.split("Active:")[-1].split("Pending:")[0]
        return len(re.findall(r"^\s*1 node_", active, flags=re.M))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("cluster-logs")
    port, dash_port = _free_port(), _free_port()
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
           # a submitted job's `python` is this environment's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    # Each node its own temp dir, as on separate machines: nodes sharing one would delete each
    # other's runtime-env files (a finished trial on one node removes the job's working dir).
    temp = {node: tempfile.mkdtemp(prefix=f"ray-{node}-", dir="/tmp") for node in ("head",
                                                                                 "second")}
    processes = [subprocess.Popen(
        [RAY, "start", "--head", f"--node-ip-address={HEAD}", f"--port={port}", "--num-cpus=1",
         f"--dashboard-agent-listen-port={_free_port()}", f"--temp-dir={temp['head']}",
         "--include-dashboard=true", f"--dashboard-host={HEAD}", f"--dashboard-port={dash_port}",
         "--disable-usage-stats", "--block"],
        stdout=(logs / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env=env)]
    handle = Cluster(f"{HEAD}:{port}", f"http://{HEAD}:{dash_port}", token, env)
    try:
        deadline = time.monotonic() + 120
        while handle.alive_nodes() < 1:
            assert time.monotonic() < deadline, (logs / "head.log").read_text()[-3000:]
            time.sleep(1)
        processes.append(subprocess.Popen(
            [RAY, "start", f"--address={handle.gcs}", f"--node-ip-address={SECOND}",
             "--num-cpus=1", f"--dashboard-agent-listen-port={_free_port()}",
             f"--temp-dir={temp['second']}",
             "--disable-usage-stats", "--block"],
            stdout=(logs / "worker.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True, env=env))
        while handle.alive_nodes() < 2:
            assert time.monotonic() < deadline, (logs / "worker.log").read_text()[-3000:]
            time.sleep(1)
        while subprocess.run([RAY, "job", "list", "--address", handle.dashboard], env=env,
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the job API never came up"
            time.sleep(1)
        yield handle
    finally:
        for process in reversed(processes):  # the worker first: it drains through the head
            stop_ray_node(process)
        for folder in temp.values():
            shutil.rmtree(folder, ignore_errors=True)


def _trials(experiment: Path) -> dict[str, Path]:
    return {Cell(**json.loads((f / "params.json").read_text())["cell"]).label(): f
            for f in experiment.iterdir() if (f / "params.json").exists()}


def _node_ips(folder: Path) -> set[str]:
    lines = (folder / "result.json").read_text().splitlines()
    return {json.loads(line)["node_ip"] for line in lines if line.strip()}


SMALL = """name: twonodes
base:
  data: {dataset: synthetic, seq_len: 48, horizon: 12, max_val_windows: 100,
         max_test_windows: 1000, synthetic: {rows: 4000, variables: 3}}
  backbone: {kind: nlinear}
  pretrain: {epochs: 2}
  chrc: {feature_dim: 32, hidden_dim: 64, refiner_dim: 64, memory: {capacity: 200}}
  online: {lr: 1.0e-4}
datasets: {synthetic: {}}
variants: {p2p7p8_frozen: {}, online_slow: {chrc: {enabled: false}, backbone: {online_lr_scale: 0.1}}}
seeds: [0, 1]
"""


def test_a_search_by_address_runs_on_both_nodes_with_shared_artefacts(cluster, tmp_path,
                                                                          cache_dir):
    space = tmp_path / "twonodes.yaml"
    space.write_text(SMALL)
    driver = subprocess.run(
        [*HMEM, "tune", "launch", str(space), "--storage", str(tmp_path / "out"),
         "--cache-dir", str(cache_dir), "--address", cluster.gcs],
        cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=400)
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
    trials = _trials(tmp_path / "out" / "twonodes")
    metrics = [json.loads((f / "metrics.json").read_text()) for f in trials.values()]
    assert len(metrics) == 4
    assert set().union(*map(_node_ips, trials.values())) == {HEAD, SECOND}  # both nodes ran trials
    assert {m["backbone_source"] for m in metrics} == {"object_store"}  # none pretrained
    assert len({m["backbone_key"] for m in metrics}) == 1


def test_submit_with_the_token_runs_a_quickstart_selection_on_both_nodes(cluster, tmp_path, cache_dir):
    out = tmp_path / "out"
    # the selection and the overrides travel with the job: one trial per node (8 would only
    # take longer), on the first 750 windows of the test stream
    submitted = subprocess.run(
        [*HMEM, "tune", "submit", "search_spaces/quickstart.yaml", "--address", cluster.dashboard,
         "--storage", str(out), "--cache-dir", str(cache_dir), "--variants", "p2p7p8",
         "--seeds", "0,1", "--set", "data.max_test_windows=750", "--wait"],
        cwd=REPO, env=_client_env(tmp_path, cluster.token), capture_output=True, text=True,
        timeout=600)
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-3000:]
    job = re.search(r"submitted job (\S+)", submitted.stdout).group(1)
    assert f"job {job} SUCCEEDED" in submitted.stdout

    trials = _trials(out / "quickstart")
    assert sorted(trials) == ["p2p7p8-synthetic-s0", "p2p7p8-synthetic-s1"]
    for label, folder in trials.items():
        metrics = json.loads((folder / "metrics.json").read_text())
        assert label == f"{metrics['variant']}-synthetic-s{metrics['seed']}"
        assert metrics["steps"] == 750 and metrics["backbone_source"] == "object_store"
    assert set().union(*map(_node_ips, trials.values())) == {HEAD, SECOND}

    listed = subprocess.run([RAY, "job", "list", "--address", cluster.dashboard],
                            env=_client_env(tmp_path, cluster.token), capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and job in listed.stdout


@pytest.mark.parametrize("token", [None, "0" * 64], ids=["no-token", "wrong-token"])
def test_a_client_without_the_token_is_refused(cluster, tmp_path, token):
    env = _client_env(tmp_path, token)
    submitted = subprocess.run(
        [*HMEM, "tune", "submit", "search_spaces/quickstart.yaml", "--address", cluster.dashboard],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 2
    assert f"the cluster at {cluster.dashboard} refused the request" in submitted.stderr
    assert "RAY_AUTH_TOKEN" in submitted.stderr and "Traceback" not in submitted.stderr

    listed = subprocess.run([RAY, "job", "list", "--address", cluster.dashboard], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode != 0
    assert "Authentication" in listed.stdout + listed.stderr
