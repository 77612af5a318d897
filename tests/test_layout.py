"""The namespace layout: `pretextlab` spans four source roots, and `platform/` never shadows stdlib."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOTS = {"platform": ["core", "models", "objectives", "views", "evaluate", "training", "registry"], "storage": ["storage"], "jobs": ["jobs"], "serving": ["serving"]}
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def test_no_init_files_that_would_break_the_namespace(repo_root: Path):
    assert not (repo_root / "platform" / "__init__.py").exists(), "platform/ must never be a package"
    assert not (repo_root / "pretextlab").exists(), "no top-level pretextlab/ folder"
    for root, subs in ROOTS.items():
        ns = repo_root / root / "pretextlab"
        assert ns.is_dir(), f"{root}/pretextlab missing"
        assert not (ns / "__init__.py").exists(), f"{ns}/__init__.py would end the PEP 420 namespace"
        for sub in subs:
            assert (ns / sub / "__init__.py").is_file(), f"{root}/pretextlab/{sub} is not a package"


def test_pytest_from_repo_root_imports_stdlib_platform(repo_root: Path, tmp_path: Path):
    """`python -m pytest` puts the repo root on sys.path; `platform` must still be the stdlib's."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(textwrap.dedent("""
        import platform, sys
        from pathlib import Path
        def test_probe():
            assert "" in sys.path or %r in sys.path  # python -m puts the cwd (repo root) first
            assert Path(platform.__file__).resolve().parent == Path(%r)
            assert platform.python_version().startswith("3.")
            import pretextlab.storage, pretextlab.jobs, pretextlab.serving, pretextlab.core
    """ % (str(repo_root), str(STDLIB))))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout


def test_ray_task_with_repo_as_working_dir_imports_stdlib_platform(ray_session, repo_root: Path):
    """A driver whose job-level runtime_env working_dir is the repo root (as `ray job submit
    --working-dir .` makes it) runs a task: the task's cwd holds platform/, yet `import platform`
    is the stdlib's."""
    address = ray_session.get_runtime_context().gcs_address
    driver = textwrap.dedent(f"""
        import json, ray
        ray.init(address={address!r}, logging_level="ERROR", runtime_env={{
            "working_dir": {str(repo_root)!r},
            "excludes": [".venv", ".git", "demo-data", "runs", ".bench", "**/__pycache__"]}})

        @ray.remote(num_cpus=0.1)
        def probe():
            import os, platform
            import pretextlab.storage
            return platform.__file__, platform.system(), sorted(os.listdir("."))

        print("RESULT " + json.dumps(ray.get(probe.remote(), timeout=180)))
    """)
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    platform_file, system, listing = json.loads(line[len("RESULT "):])
    assert "platform" in listing and "storage" in listing, listing  # the task really ran in the repo copy
    assert Path(platform_file).resolve().parent == STDLIB
    assert system == "Linux"


def test_wheel_holds_one_namespace_without_init(repo_root: Path, tmp_path: Path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(repo_root)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("pretextlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pretextlab/__init__.py" not in names
    assert not any(n.startswith("platform/") for n in names)
    for needed in ("pretextlab/core/config.py", "pretextlab/storage/writer.py", "pretextlab/cli/__init__.py",
                   "pretextlab/serving/__init__.py"):
        assert needed in names, needed
    # Installed from the wheel alone (no editable paths), every portion imports.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    code = "import pretextlab.storage, pretextlab.cli, pretextlab.core, platform; " \
           "print(pretextlab.storage.__file__); print(platform.__file__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    storage_file, platform_file = res.stdout.split()
    assert storage_file.startswith(str(target))
    assert Path(platform_file).resolve().parent == STDLIB


@pytest.mark.parametrize("args", [["--help"], ["ingest", "--help"], ["catalog", "--help"], ["demo", "--help"]])
def test_cli_help(args):
    from conftest import run_cli

    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_job_modules_are_entrypoints(repo_root: Path):
    out = subprocess.run([sys.executable, "-m", "pretextlab.jobs.ingest", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=repo_root)
    assert out.returncode == 0 and "--to" in out.stdout


def test_pure_computation_has_no_ray_imports(repo_root: Path):
    """platform/ (objectives, masks, metrics, views, evaluation) is pure PyTorch: no Ray imports."""
    offenders = []
    for py in (repo_root / "platform").rglob("*.py"):
        for line in py.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import ray", "from ray")):
                offenders.append(f"{py.relative_to(repo_root)}: {s}")
    assert offenders == []
