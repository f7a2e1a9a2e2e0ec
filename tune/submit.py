"""``hmem tune submit``: the same launch, as a Ray job on a remote cluster.

The job's entrypoint is ``python -m hmem.cli tune launch ... --address auto``, run on the head
node with this project as the job's working directory (``runtime_env.working_dir``, so the code
that runs is the code submitted) and, with ``--pip``, its pinned requirements installed into the
job's environment. Ray's own job client does the rest.

Token authentication: a cluster started with ``RAY_AUTH_MODE=token`` refuses every request
without its token. The client side reads the same variables Ray does (``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN``, or ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``); a refusal is reported
as a :class:`SubmitError` that says which of them to set, never as a traceback.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from pathlib import Path

from hmem.errors import HmemError
from tune.ray_api import AuthenticationError, JobSubmissionClient

PROJECT = Path(__file__).resolve().parents[1]

#: Kept out of the uploaded working directory: results, caches, environments, data, secrets.
EXCLUDES = [".git", ".venv", "results", "runs", ".cache", "**/__pycache__", "*.csv", "*.csv.gz",
            "*.pt", "*.pth", "tests", "docker/secrets", "*.token", ".env"]

#: How long a submission waits for a freshly started head's job agent.
AGENT_WAIT_S = 120

#: A job in one of these states will not change any more.
FINAL_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(HmemError):
    """The cluster refused the submission or could not be reached."""


def _client(address: str) -> JobSubmissionClient:
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise SubmitError(_auth_hint(address, err)) from None
    except ConnectionError as err:
        raise SubmitError(f"cannot reach the Ray job API at {address}: {err}. Is the head's "
                          "dashboard running, and the port forwarded?") from None


def _auth_hint(address: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0]
    return (f"the cluster at {address} refused the request ({first}). Set RAY_AUTH_MODE=token and "
            "the cluster's token in RAY_AUTH_TOKEN or a file named by RAY_AUTH_TOKEN_PATH.")


def _space_argument(space: str) -> str:
    """The space as the job sees it: a path inside the uploaded project."""
    path = Path(space).resolve()
    try:
        return str(path.relative_to(PROJECT))
    except ValueError:
        raise SubmitError(f"{space}: a submitted space must lie inside the project ({PROJECT}), "
                          "which is uploaded as the job's working directory") from None


def submit(address: str, space: str, launch_args: list[str], *, pip: bool = False,
           env: dict[str, str] | None = None) -> str:
    """Submit ``hmem tune launch SPACE <launch_args> --address auto``; return the job id."""
    entrypoint = shlex.join(["python", "-m", "hmem.cli", "tune", "launch",
                             _space_argument(space), *launch_args, "--address", "auto"])
    runtime_env: dict = {"working_dir": str(PROJECT), "excludes": EXCLUDES,
                         "env_vars": dict(env or {})}
    if pip:
        runtime_env["pip"] = [line for line in (PROJECT / "requirements.txt").read_text()
                              .splitlines() if line.strip() and not line.startswith("#")]
    client = _client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except AuthenticationError as err:
            raise SubmitError(_auth_hint(address, err)) from None
        except RuntimeError as err:
            # A head that has just started answers before its job agent is up; Ray asks to
            # try again later, so we do, for a while.
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise SubmitError(f"the cluster at {address} did not accept the job: "
                                  f"{err}") from None
            time.sleep(2)


def wait(address: str, job_id: str, *, poll_s: float = 2.0, timeout_s: float | None = None,
         echo=print) -> str:
    """Follow a job until it ends, echoing its new log lines; return its final status."""
    client = _client(address)
    shown = 0
    began = time.monotonic()
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in FINAL_STATES:
            return status
        if timeout_s is not None and time.monotonic() - began > timeout_s:
            raise SubmitError(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def write_token(path: Path, *, force: bool = False) -> Path:
    """Write a new random cluster token to ``path`` (mode 0600) for ``RAY_AUTH_TOKEN_PATH``."""
    path = Path(path)
    if path.exists() and not force:
        raise SubmitError(f"{path} exists; a cluster may be using it (pass --force to replace)")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    return path
