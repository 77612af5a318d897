"""Shared fixtures: a real S3-compatible server on 127.0.0.1 (moto in server mode, with IAM
authentication on), one local Ray cluster per session, and the shared sample data when present."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared sample data not present at {SHARED_DATA}")
    return SHARED_DATA


class S3Server:
    def __init__(self, endpoint: str, key: str, secret: str):
        self.endpoint, self.key, self.secret = endpoint, key, secret

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.key, aws_secret_access_key=self.secret
        )

    def new_bucket(self) -> str:
        name = f"pretextlab-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)  # no LocationConstraint: moto rejects one with a region
        return name

    def upload(self, local: Path, bucket: str, prefix: str) -> None:
        c = self.client()
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for p in files:
            rel = p.name if local.is_file() else p.relative_to(local).as_posix()
            c.upload_file(str(p), bucket, f"{prefix}/{rel}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """moto's S3 server on a free loopback port. IAM auth is on after the first 3 calls, which
    create a user with an access key: wrong credentials are then really refused."""
    import boto3

    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="pretextlab-test")
    iam.put_user_policy(
        UserName="pretextlab-test",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="pretextlab-test")["AccessKey"]
    server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    # The standard AWS environment, as a user would set it; Ray workers inherit it.
    os.environ.update(
        AWS_ACCESS_KEY_ID=server.key,
        AWS_SECRET_ACCESS_KEY=server.secret,
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield server
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray cluster for the whole session (starting one costs ~10 s)."""
    import ray

    from pretextlab.cluster import start_local_ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # Train's fixed cost per fit: ~20 s -> ~15 s
    # its tasks and actors know its address: CLI runs started beside it (and other sessions) do not confuse them
    start_local_ray(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    """Run the installed ``pretextlab`` entry point; returns the CompletedProcess."""
    exe = Path(sys.executable).with_name("pretextlab")
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def kill_session(sid: int, timeout: float = 60.0) -> None:
    """SIGKILL every process in session ``sid`` (a driver started with ``start_new_session=True``) and
    wait until none is left. ``os.killpg`` is not enough: Ray puts each worker in its own process group,
    so after a killpg of the driver's group a worker can still write a checkpoint or an output file
    for a moment, after the test has looked at what the kill left on disk."""
    import signal

    deadline = time.time() + timeout
    while True:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of /proc/PID/stat is the session id
                alive.append(int(stat.parent.name))
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.time() < deadline, f"processes of session {sid} outlived SIGKILL: {alive}"
        time.sleep(0.05)


def closed_ray() -> dict[str, str]:
    """Environment that points Ray at a loopback port where nothing listens: a command that tries to
    reach (or start) Ray before validating its input fails differently than with the one-line error."""
    return {"RAY_ADDRESS": f"127.0.0.1:{free_port()}"}
