"""`ray job submit` as the README shows it, against a real Ray cluster (`ray start` head + a worker node on
loopback) whose Python has pretextlab's dependencies but not pretextlab itself, as a cluster built from a
plain Ray image would be.

With ``--working-dir .`` alone the four-root namespace is not importable there; with
``--runtime-env jobs/runtime_env.yaml`` (the four ``pretextlab/`` folders as py_modules) the job and its
Ray tasks import pretextlab and an ingest job writes its store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port


def _kill_cluster(marker: str) -> None:
    """Kill this test cluster's processes only (their command lines name its private temp dir): never
    `ray stop`, which would take down every Ray instance on the machine."""
    import psutil

    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid not in me and marker in " ".join(p.info["cmdline"] or []):
                procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory):
    """A head and a worker node started with `ray start` from a Python that lacks pretextlab: a fresh venv
    whose only extra path is this venv's site-packages (added by a .pth, whose own .pth files, among them
    the editable install of pretextlab, are then not processed)."""
    base = tmp_path_factory.mktemp("bare")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    site.mkdir(parents=True, exist_ok=True)
    (site / "pretextlab-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = venv / "bin" / "python"
    probe = subprocess.run(
        [
            str(py),
            "-c",
            "import ray, torch, zarr\ntry:\n import pretextlab.jobs\nexcept ImportError:\n print('NO-PRETEXTLAB')",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd="/",
    )
    assert probe.returncode == 0 and "NO-PRETEXTLAB" in probe.stdout, probe.stderr[-2000:]
    temp = base / "ray"  # short: Ray's unix sockets live under it
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)

    def ports() -> list[str]:
        return [
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "1",
            "--disable-usage-stats",
            *[
                x
                for flag in (
                    "--dashboard-agent-listen-port",
                    "--dashboard-agent-grpc-port",
                    "--runtime-env-agent-port",
                    "--metrics-export-port",
                    "--node-manager-port",
                    "--object-manager-port",
                )
                for x in (flag, str(free_port()))
            ],
        ]

    gcs, dashboard = free_port(), free_port()
    start = [str(py), "-m", "ray.scripts.scripts", "start"]
    try:
        subprocess.run(
            [
                *start,
                "--head",
                "--port",
                str(gcs),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dashboard),
                "--temp-dir",
                str(temp),
                "--include-dashboard",
                "true",
                "--ray-client-server-port",
                str(free_port()),
                *ports(),
            ],
            check=True,
            env=env,
            capture_output=True,
            timeout=180,
            cwd=str(base),
        )
        subprocess.run(
            [*start, "--address", f"127.0.0.1:{gcs}", *ports()],
            check=True,
            env=env,
            capture_output=True,
            timeout=180,
            cwd=str(base),
        )
        yield {"address": f"http://127.0.0.1:{dashboard}", "base": base, "env": env}
    finally:
        _kill_cluster(str(base))


def _submit(cluster, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    deadline = time.time() + 120
    while True:  # the job agent registers a few seconds after `ray start` returns
        out = subprocess.run(
            [str(exe), "job", "submit", "--address", cluster["address"], *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        if "No available agent" not in out.stdout + out.stderr or time.time() > deadline:
            return out
        time.sleep(2)


def test_working_dir_alone_cannot_import_the_namespace(bare_cluster):
    out = _submit(bare_cluster, "--working-dir", ".", "--", "python", "-m", "pretextlab.jobs.catalog", "--help")
    assert out.returncode != 0
    assert "No module named 'pretextlab" in out.stdout + out.stderr


def test_documented_runtime_env_runs_an_ingest_job_on_the_cluster(bare_cluster):
    from pretextlab.storage import read_catalog
    from pretextlab.storage import synthetic as syn

    base = bare_cluster["base"]
    tile = syn.write_png(base / "raw" / "tile.png", size=64)
    dest = base / "store"
    out = _submit(
        bare_cluster,
        "--runtime-env",
        "jobs/runtime_env.yaml",
        "--",
        "python",
        "-m",
        "pretextlab.jobs.ingest",
        str(tile),
        "--to",
        str(dest),
        "--quiet",
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "1 ingested, 0 skipped, 0 failed" in text
    assert list(read_catalog(str(dest))["item_id"]) == ["tile"]
