"""``hmem tune submit``: the same launch, as a Ray job on a remote cluster.

The job's entrypoint is ``python -m hmem.cli tune launch ... --address auto``, run on the head
node with this project as the job's working directory (``runtime_env.working_dir``, so the code
that runs is the code submitted) and, with ``--pip``, its pinned requirements installed into the
job's environment. Ray's own job client does the rest;
token authentication (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``) is picked up by it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ray.job_submission import JobSubmissionClient

PROJECT = Path(__file__).resolve().parents[1]

#: Kept out of the uploaded working directory: results, caches, environments, data.
EXCLUDES = [".git", ".venv", "results", ".cache", "**/__pycache__", "*.csv", "*.csv.gz", "*.pt",
            "tests"]


def submit(address: str, launch_args: list[str], *, pip: bool = False,
           env: dict[str, str] | None = None) -> str:
    """Submit ``hmem tune launch <launch_args> --address auto``; return the job id."""
    entrypoint = shlex.join(["python", "-m", "hmem.cli", "tune", "launch", *launch_args,
                             "--address", "auto"])
    runtime_env: dict = {"working_dir": str(PROJECT), "excludes": EXCLUDES,
                         "env_vars": dict(env or {})}
    if pip:
        runtime_env["pip"] = [line for line in (PROJECT / "requirements.txt").read_text()
                              .splitlines() if line.strip() and not line.startswith("#")]
    client = JobSubmissionClient(address)
    return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
