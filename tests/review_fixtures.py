"""Builders for the review tests: tiny random-init ViT encoders, a small labelled store, a PostgreSQL
server per session (Debian's postgresql, run as user postgres in a temp dir on a loopback port) and the
review app as a real uvicorn subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from pretextlab.models import BackboneConfig, EncoderCard, create_backbone, save_encoder
from pretextlab.storage import discover, synthetic, write_item
from pretextlab.storage.catalog import rebuild_catalog

REPO = Path(__file__).resolve().parents[1]
TINY = BackboneConfig(img_size=32, patch_size=8, in_chans=1)
API_KEY = "review-test-organiser-key-0123456789"
# distinctive names: any of them in a reviewer's page, URL or header would unblind the review
ENCODER_NAMES = ["encQdinoVX41", "encQmaeVX42", "encQsimclrVX43"]
OBJECTIVES = ["objZdinoPW7", "objZmaePW8", "objZsimclrPW9"]
FOLDERS = ["runKfolderA17", "runKfolderB18", "runKfolderC19"]
STORE_NAME = "storeWstripes"


def make_encoders(root: Path) -> list[str]:
    """Three tiny random-init ViTs (32 px, patch 8, 1 channel) saved with save_encoder."""
    out = []
    for seed, (name, objective, folder) in enumerate(zip(ENCODER_NAMES, OBJECTIVES, FOLDERS, strict=True)):
        torch.manual_seed(seed)
        model = create_backbone(TINY)
        card = EncoderCard(
            name=name,
            timm_name=TINY.timm_name,
            timm_kwargs=TINY.timm_kwargs(),
            embed_dim=model.embed_dim,
            img_size=TINY.img_size,
            patch_size=TINY.patch_size,
            in_chans=TINY.in_chans,
            objective=objective,
        )
        out.append(str(save_encoder(model, card, root / folder)))
    return out


def make_store(root: Path) -> str:
    """A labelled NPZ (MedMNIST-layout) store: stripes, 2 classes, 8 images per split, 28 px."""
    src = root / "src"
    synthetic.write_npz(src / f"{STORE_NAME}.npz", per_split=8, size=28, channels=1, seed=3)
    dest = root / "store"
    for plan in discover([str(src)]).plans:
        assert write_item(plan, str(dest)).status == "ingested"
    rebuild_catalog(str(dest))
    return str(dest)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class Postgres:
    """A throwaway PostgreSQL server: initdb + pg_ctl as user postgres, loopback only, trust auth."""

    def __init__(self, port: int):
        bindir = pg_bin()
        assert bindir is not None
        self.bin, self.port = bindir, port
        self.dir = Path(tempfile.mkdtemp(prefix="pretextlab-pg-"))
        shutil.chown(self.dir, "postgres")
        os.chmod(self.dir, 0o700)
        self._su(f"{self.bin}/initdb -D {self.dir}/data -A trust -U test --no-sync >/dev/null")
        self._su(
            f"{self.bin}/pg_ctl -D {self.dir}/data -w -o '-k {self.dir} -p {port} -c listen_addresses=127.0.0.1 "
            f"-c fsync=off -c max_connections=200' -l {self.dir}/log start >/dev/null"
        )
        self._n = 0

    def _su(self, cmd: str) -> None:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", cmd], check=True, timeout=120)

    def new_database(self) -> str:
        """A fresh empty database; its postgresql:// URL."""
        self._n += 1
        name = f"review{self._n}"
        self._su(f"{self.bin}/createdb -h 127.0.0.1 -p {self.port} -U test {name}")
        return f"postgresql://test@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            ["su", "postgres", "-s", "/bin/sh", "-c", f"{self.bin}/pg_ctl -D {self.dir}/data stop -m fast"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def can_run_postgres() -> str | None:
    """None when a server can be started here, else the reason to skip."""
    if pg_bin() is None:
        return "Debian's postgresql package is not installed (apt-get install -y postgresql; .ci/run does)"
    if os.geteuid() != 0:
        return "starting PostgreSQL as user postgres needs root"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user (the postgresql package creates it)"
    return None


class Server:
    """``python -m pretextlab.review.cli serve`` as a subprocess; restartable on the same database."""

    def __init__(self, db: str, assets: str, port: int, env: dict | None = None, extra: tuple[str, ...] = ()):
        self.db, self.assets, self.port, self.extra = db, assets, port, extra
        self.env = {**os.environ, "PRETEXTLAB_API_KEY": API_KEY, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="review-server-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pretextlab.review.cli",
                    "serve",
                    "--db",
                    self.db,
                    "--assets",
                    self.assets,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.extra,
                ],
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"review server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"review server did not come up: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
