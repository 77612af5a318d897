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

ROOTS = {
    "platform": ["core", "models", "objectives", "views", "modalities", "evaluate", "training", "registry", "study"],
    "storage": ["storage"],
    "jobs": ["jobs", "cluster", "cli"],
    "serving": ["serving", "review"],
}
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
    probe.write_text(
        textwrap.dedent(
            """
        import platform, sys
        from pathlib import Path
        def test_probe():
            assert "" in sys.path or %r in sys.path  # python -m puts the cwd (repo root) first
            assert Path(platform.__file__).resolve().parent == Path(%r)
            assert platform.python_version().startswith("3.")
            import pretextlab.storage, pretextlab.jobs, pretextlab.serving, pretextlab.core
    """
            % (str(repo_root), str(STDLIB))
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
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
    platform_file, system, listing = json.loads(line[len("RESULT ") :])
    assert "platform" in listing and "storage" in listing, listing  # the task really ran in the repo copy
    assert Path(platform_file).resolve().parent == STDLIB
    assert system == "Linux"


def test_wheel_holds_one_namespace_without_init(repo_root: Path, tmp_path: Path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(repo_root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("pretextlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pretextlab/__init__.py" not in names
    assert not any(n.startswith("platform/") for n in names)
    for needed in (
        "pretextlab/core/config.py",
        "pretextlab/storage/writer.py",
        "pretextlab/cli/__init__.py",
        "pretextlab/serving/__init__.py",
    ):
        assert needed in names, needed
    # Installed from the wheel alone (no editable paths), every portion imports.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "import pretextlab.storage, pretextlab.cli, pretextlab.core, platform; "
        "print(pretextlab.storage.__file__); print(platform.__file__)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
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
    out = subprocess.run(
        [sys.executable, "-m", "pretextlab.jobs.ingest", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=repo_root,
    )
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


# --------------------------------------------------------------------------- the import graph
#: package -> layer. A module may import from its own layer's package or any lower layer, never higher;
#: packages on one layer do not import each other unless listed in SAME_LAYER_OK.
LAYERS = {
    "core": 0,
    "models": 1,
    "objectives": 1,
    "views": 1,
    "phantoms": 1,
    "modalities": 2,
    "storage": 3,
    "training": 4,
    "evaluate": 4,
    "registry": 4,
    "profile": 4,
    "study": 5,
    "cluster": 6,
    "jobs": 7,
    "serving": 7,
    "review": 7,
    "cli": 8,
}
#: same-layer arrows that are part of the design (objectives build on models, training on registry
#: for weights, the study on both evaluate and training)
SAME_LAYER_OK = {
    ("objectives", "models"),
    ("training", "evaluate"),
    ("training", "registry"),
    ("evaluate", "registry"),
    ("profile", "evaluate"),
    ("serving", "review"),
}
NEVER = {("jobs", "serving"), ("serving", "jobs")}
SOURCE_ROOTS = ("platform", "storage", "jobs", "serving")


def _imports(py: Path) -> list[tuple[int, str]]:
    import ast

    tree = ast.parse(py.read_text(), str(py))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "pretextlab"]
    return out


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pretextlab" and len(parts) > 1 else None


def import_graph(repo_root: Path) -> list[tuple[str, int, str, str]]:
    """(file, line, from package, to package) for every pretextlab import, function-level ones included."""
    edges = []
    for root in SOURCE_ROOTS:
        for py in sorted((repo_root / root / "pretextlab").rglob("*.py")):
            src = _package(".".join(py.relative_to(repo_root / root).with_suffix("").parts))
            for line, module in _imports(py):
                dst = _package(module)
                if src and dst and dst != src:
                    edges.append((str(py.relative_to(repo_root)), line, src, dst))
    return edges


def layer_violations(edges: list[tuple[str, int, str, str]]) -> list[str]:
    bad = []
    for file, line, src, dst in edges:
        if src not in LAYERS or dst not in LAYERS:
            bad.append(
                f"{file}:{line}: {src} -> {dst}: package not in the layer table (add it to ARCHITECTURE.md and LAYERS)"
            )
        elif (
            (src, dst) in NEVER
            or LAYERS[dst] > LAYERS[src]
            or (LAYERS[dst] == LAYERS[src] and (src, dst) not in SAME_LAYER_OK)
        ):
            bad.append(f"{file}:{line}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})")
    return bad


def test_import_graph_follows_the_layers(repo_root: Path):
    """core -> (models, objectives, views) -> modalities -> storage -> (training, evaluate, registry) ->
    cluster -> (jobs | serving) -> cli, read from the AST of every module (no import, no Ray)."""
    edges = import_graph(repo_root)
    assert len(edges) > 50, "the graph walk found almost nothing: the layout changed?"
    assert layer_violations(edges) == []


def test_import_graph_check_catches_upward_and_sideways_arrows():
    """The checker itself: an upward arrow, jobs <-> serving and an unknown package are each reported."""
    edges = [
        ("platform/pretextlab/core/x.py", 3, "core", "storage"),
        ("jobs/pretextlab/jobs/y.py", 5, "jobs", "serving"),
        ("serving/pretextlab/serving/z.py", 7, "serving", "jobs"),
        ("platform/pretextlab/views/w.py", 9, "views", "objectives"),
        ("platform/pretextlab/newpkg/v.py", 1, "newpkg", "core"),
        ("storage/pretextlab/storage/ok.py", 2, "storage", "modalities"),
    ]
    bad = layer_violations(edges)
    assert len(bad) == 5 and not any("ok.py" in b for b in bad), bad


def test_training_config_does_not_import_the_writer():
    """Loading a pretraining config stays light: no ingest writer, readers or dask behind it."""
    code = (
        "import sys, pretextlab.training.config; "
        "print(sorted(m for m in ('pretextlab.storage.writer', 'pretextlab.storage.readers', 'dask') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
