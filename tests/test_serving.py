"""The embedding service over real HTTP against a local Ray Serve: parity with in-process embeddings, the
API key, regions from registered stores only, 4xx JSON for every bad input, a bounded load with zero
errors, a killed replica replaced under load; the deployable config and the app builder's validation."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import free_port
from pretextlab.evaluate.features import embed_images
from pretextlab.models import BackboneConfig, EncoderCard, create_backbone
from pretextlab.registry import EncoderRegistry
from pretextlab.serving.config import ServingConfigError, parse_serve_args

APP = "pretextlab-embeddings"  # the application name `pretextlab serve` deploys
KEY_ENV = "PRETEXTLAB_TEST_API_KEY"
KEY = "test-key-0123456789abcdef"
MAX_PIXELS = 300 * 300
MAX_BODY = 1 << 20
MAX_IMAGES = 64


def _encoder(name: str, in_chans: int, modality: str, seed: int):
    torch.manual_seed(seed)
    cfg = BackboneConfig(arch="vit_tiny", img_size=32, patch_size=8, in_chans=in_chans, depth=1)
    model = create_backbone(cfg).eval()
    mean, std = ([0.7, 0.5, 0.6], [0.2, 0.25, 0.15]) if in_chans == 3 else ([0.3], [0.2])
    card = EncoderCard(
        name=name,
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=in_chans,
        mean=mean,
        std=std,
        modality=modality,
    )
    return model, card


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _png(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(ray_session, tmp_path_factory):
    """A registry (hist by name, us by its chosen mark), a store (a slide and a cine loop), and the models."""
    from pretextlab.jobs.ingest import IngestConfig, run_ingest
    from pretextlab.storage import synthetic as syn

    base = tmp_path_factory.mktemp("serving")
    reg = EncoderRegistry(str(base / "registry"))
    hist_model, hist_card = _encoder("hist", 3, "histopathology", 0)
    hist_ref = reg.register(hist_model, hist_card)
    us_model, us_card = _encoder("us-enc", 1, "ultrasound", 1)
    us_ref = reg.register(us_model, us_card)
    reg.choose(us_ref, "ultrasound", {"why": "test"})
    cxr_model, cxr_card = _encoder("cxr-enc", 1, "radiograph", 2)
    cxr_ref = reg.register(cxr_model, cxr_card)
    reg.choose(cxr_ref, "radiograph", {"why": "test"})
    raw = base / "raw"
    syn.write_slide_tiff(raw / "slide-a.tif", 512, 768, tile=256, levels=2, seed=3)
    dcm = syn.write_us_dicom(raw / "liver-a.dcm", frames=6, rows=48, cols=64, seed=4)
    rep = run_ingest(IngestConfig(sources=[str(raw)], dest=str(base / "store"), zarr={"chunk": 256}), progress=False)
    assert rep.ok, rep.render()
    return {
        "base": base,
        "registry": str(base / "registry"),
        "store": str(base / "store"),
        "dcm": dcm,
        "hist": (hist_model, hist_ref.card, hist_ref),
        "us": (us_model, us_ref.card, us_ref),
        "cxr": (cxr_model, cxr_ref.card, cxr_ref),
    }


def _args(world, **extra):
    args = {
        "registry": world["registry"],
        "models": [
            {
                "name": "hist",
                "spec": "hist",
                "num_cpus": 0.5,
                "max_batch_images": 32,
                "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            },
            {
                "name": "us",
                "spec": "chosen:ultrasound",
                "num_cpus": 0.25,
                "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            },
            {
                "name": "cxr",
                "spec": "chosen:radiograph",
                "num_cpus": 0.25,
                "autoscaling": {"min_replicas": 1, "max_replicas": 1},
            },
        ],
        "stores": {"lake": world["store"]},
        "api_key_env": KEY_ENV,
        "limits": {
            "max_body_bytes": MAX_BODY,
            "max_images": MAX_IMAGES,
            "max_image_pixels": MAX_PIXELS,
            "max_total_pixels": 64 * MAX_PIXELS,
            "max_region_size": 256,
        },
        "ingress": {"num_cpus": 0.25, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
    }
    args.update(extra)
    return args


@pytest.fixture(scope="module")
def server(world, ray_session, tmp_path_factory):
    """`pretextlab serve` on the session's Ray cluster (a subprocess), with the test's args file."""
    folder = tmp_path_factory.mktemp("serve-cli")
    args_file = folder / "args.yaml"
    args_file.write_text(yaml.safe_dump(_args(world)))
    port = free_port()
    log_path = folder / "serve.log"
    log = open(log_path, "wb")
    exe = Path(sys.executable).with_name("pretextlab")
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            "--config",
            str(args_file),
            "--port",
            str(port),
            "--address",
            ray_session.get_runtime_context().gcs_address,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, KEY_ENV: KEY},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while "Ctrl-C stops the service" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, "pretextlab serve exited:\n" + log_path.read_text(errors="replace")[-3000:]
            assert time.time() < deadline, "pretextlab serve did not come up:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        printed = log_path.read_text(errors="replace")
        assert f"at {url}" in printed and f"{url}/docs" in printed
        assert f'curl -s -H "X-API-Key: ${KEY_ENV}" -F model=hist -F images=@tile.png {url}/v1/embeddings' in printed
        assert KEY not in printed  # the key is never printed or logged
        with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": KEY}) as client:
            while client.get("/readyz").status_code != 200:
                assert time.time() < deadline, "service never became ready"
                time.sleep(0.5)
            client.process = proc  # the SIGTERM test stops it itself
            client.log_path = log_path
            yield client
    finally:
        proc.send_signal(signal.SIGINT)  # the CLI shuts Serve down on Ctrl-C (a no-op if already stopped)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        assert KEY not in log_path.read_text(errors="replace")
        from ray import serve

        serve.shutdown()


def _emb(resp: httpx.Response) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    if resp.headers["content-type"].startswith("application/x-npy"):
        return np.load(io.BytesIO(resp.content))
    return np.asarray(resp.json()["embeddings"], dtype=np.float32)


def _local(world, name: str, images: np.ndarray) -> np.ndarray:
    model, card, _ = world[name]
    return embed_images(model, card, images, device="cpu").numpy()


# -- parity ------------------------------------------------------------------------------------------------
def test_embeddings_match_in_process(world, server):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)  # resized to 32 by preprocess, as in training
    r = server.post("/v1/embeddings?model=hist", content=_npy(batch), headers={"content-type": "application/x-npy"})
    body = r.json()
    assert body["model"] == "hist" and body["model_id"] == world["hist"][2].id and body["dim"] == 192
    assert np.abs(_emb(r) - _local(world, "hist", batch)).max() <= 1e-5

    # the binary fast path gives the same numbers
    r = server.post(
        "/v1/embeddings?model=hist&format=npy", content=_npy(batch), headers={"content-type": "application/x-npy"}
    )
    assert r.headers["x-model-id"] == world["hist"][2].id and r.headers["x-embedding-dim"] == "192"
    assert np.abs(_emb(r) - _local(world, "hist", batch)).max() <= 1e-5

    # multipart: PNG, JPEG and TIFF files of different sizes in one request, order preserved
    imgs = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (32, 48, 32)]
    jpeg = io.BytesIO()
    Image.fromarray(imgs[1]).save(jpeg, format="JPEG", quality=90)
    tiff = io.BytesIO()
    Image.fromarray(imgs[2]).save(tiff, format="TIFF")
    files = [
        ("images", ("a.png", _png(imgs[0]), "image/png")),
        ("images", ("b.jpg", jpeg.getvalue(), "image/jpeg")),
        ("images", ("c.tif", tiff.getvalue(), "image/tiff")),
    ]
    r = server.post("/v1/embeddings", data={"model": "hist"}, files=files, headers={"accept": "application/x-npy"})
    got = _emb(r)
    decoded = [np.array(Image.open(io.BytesIO(f[1][1])).convert("RGB")) for f in files]
    want = np.concatenate([_local(world, "hist", d[None]) for d in decoded])
    assert got.shape == (3, 192) and np.abs(got - want).max() <= 1e-5

    # a DICOM cine loop: every frame, on the 1-channel encoder chosen for ultrasound
    import pydicom

    frames = pydicom.dcmread(world["dcm"]).pixel_array[..., None]
    r = server.post(
        "/v1/embeddings",
        data={"model": "us"},
        files=[("images", ("loop.dcm", world["dcm"].read_bytes(), "application/dicom"))],
    )
    assert r.json()["model_id"] == world["us"][2].id
    assert np.abs(_emb(r) - _local(world, "us", frames)).max() <= 1e-5


def test_radiograph_dicom_embeds_on_the_encoder_chosen_for_radiographs(world, server, tmp_path):
    """The third modality served with no serving change: a DX upload, windowed and preprocessed from the
    card of the encoder marked chosen:radiograph."""
    import pydicom

    from test_radiograph import chest, write_dx

    dx = write_dx(tmp_path / "chest.dcm", chest(48, 1, seed=5), photometric="MONOCHROME1")
    r = server.post(
        "/v1/embeddings", data={"model": "cxr"}, files=[("images", ("chest.dcm", dx.read_bytes(), "application/dicom"))]
    )
    assert r.json()["model_id"] == world["cxr"][2].id
    pixels = 255 - pydicom.dcmread(dx).pixel_array  # MONOCHROME1 shown inverted, as ingest stores it
    assert np.abs(_emb(r) - _local(world, "cxr", pixels[None, ..., None])).max() <= 1e-5


def test_regions_match_in_process(world, server):
    from pretextlab.storage import open_item

    slide = open_item(world["store"], "slide-a")
    patches = [
        {"level": 0, "x": 0, "y": 0, "size": 64},
        {"level": 1, "x": 32, "y": 16, "size": 48},
        {"level": 0, "x": 256, "y": 128, "size": 64},
    ]
    r = server.post(
        "/v1/embeddings/regions", json={"model": "hist", "store": "lake", "item_id": "slide-a", "patches": patches}
    )
    assert r.json()["regions"] == patches
    want = np.concatenate(
        [
            _local(world, "hist", slide.read_region(p["level"], p["x"], p["y"], p["size"], p["size"])[None])
            for p in patches
        ]
    )
    assert np.abs(_emb(r) - want).max() <= 1e-5

    cine = open_item(world["store"], "liver-a")
    r = server.post(
        "/v1/embeddings/regions?format=npy",
        json={"model": "us", "store": "lake", "item_id": "liver-a", "frames": [5, 0, 5]},
    )
    assert np.abs(_emb(r) - _local(world, "us", cine.frames()[[5, 0, 5]])).max() <= 1e-5


def test_models_health_ready_and_docs(world, server):
    models = server.get("/v1/models").json()
    by_name = {m["name"]: m for m in models["models"]}
    assert set(by_name) == {"hist", "us", "cxr"} and models["stores"] == ["lake"]
    assert by_name["us"]["spec"] == "chosen:ultrasound" and by_name["us"]["id"] == world["us"][2].id
    assert by_name["hist"]["card"]["in_chans"] == 3 and by_name["hist"]["card"]["mean"] == [0.7, 0.5, 0.6]
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.get("/readyz").json()["models"] == {"hist": True, "us": True, "cxr": True}
    assert "swagger" in server.get("/docs").text.lower()
    spec = server.get("/openapi.json").json()
    assert {"/v1/embeddings", "/v1/embeddings/regions", "/v1/models"} <= set(spec["paths"])
    # both key headers work
    bare = httpx.Client(base_url=str(server.base_url), timeout=30)
    assert bare.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert bare.get("/v1/models").status_code == 401


# -- bad inputs ----------------------------------------------------------------------------------------------
def _bad_cases():
    rng = np.random.default_rng(1)
    good = _npy(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
    npy_h = {"content-type": "application/x-npy"}
    png16 = io.BytesIO()
    Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)).save(png16, format="PNG")
    fake_dicom = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 8
    big_png = _png(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8))

    def chunks():
        for _ in range(MAX_BODY // 65536 + 4):
            yield b"\x93NUMPY" + b"\0" * 65530

    region = {"model": "hist", "store": "lake", "item_id": "slide-a"}
    cases = [
        # (name, method, path, kwargs, status, code)
        (
            "missing key",
            "POST",
            "/v1/embeddings",
            {"content": good, "headers": {**npy_h, "X-API-Key": ""}},
            401,
            "unauthorized",
        ),
        (
            "wrong key",
            "POST",
            "/v1/embeddings",
            {"content": good, "headers": {**npy_h, "X-API-Key": "nope" * 8}},
            401,
            "unauthorized",
        ),
        (
            "wrong bearer",
            "GET",
            "/v1/models",
            {"headers": {"X-API-Key": None, "Authorization": "Bearer x"}},
            401,
            "unauthorized",
        ),
        ("empty body", "POST", "/v1/embeddings?model=hist", {"content": b"", "headers": npy_h}, 400, "bad_request"),
        (
            "garbage bytes",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": os.urandom(300), "headers": npy_h},
            422,
            "invalid_input",
        ),
        (
            "garbage file",
            "POST",
            "/v1/embeddings",
            {"data": {"model": "hist"}, "files": [("images", ("x.png", b"\x89PNG\r\n\x1a\nxx", "image/png"))]},
            422,
            "invalid_input",
        ),
        (
            "truncated png",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": _png(np.zeros((32, 32, 3), np.uint8))[:60], "headers": {"content-type": "image/png"}},
            422,
            "invalid_input",
        ),
        (
            "1-d array",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": _npy(np.zeros(10, np.uint8)), "headers": npy_h},
            422,
            "invalid_input",
        ),
        (
            "float array",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": _npy(np.zeros((32, 32, 3), np.float32)), "headers": npy_h},
            422,
            "invalid_input",
        ),
        (
            "2 channels",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": _npy(np.zeros((1, 32, 32, 2), np.uint8)), "headers": npy_h},
            422,
            "invalid_input",
        ),
        (
            "pickled object array",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": _npy_object(), "headers": npy_h},
            422,
            "invalid_input",
        ),
        (
            "zero-size image",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": _npy(np.zeros((1, 0, 32, 3), np.uint8)), "headers": npy_h},
            422,
            "invalid_input",
        ),
        (
            "corrupt npy header",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": b"\x93NUMPY\x01\x00\x10\x00{'descr': ??}    \n", "headers": npy_h},
            400,
            "bad_request",
        ),
        (
            "16-bit png",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": png16.getvalue(), "headers": {"content-type": "image/png"}},
            422,
            "invalid_input",
        ),
        (
            "broken dicom",
            "POST",
            "/v1/embeddings?model=us",
            {"content": fake_dicom, "headers": {"content-type": "application/dicom"}},
            422,
            "invalid_input",
        ),
        (
            "declared oversize",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": b"\0" * (MAX_BODY + 10), "headers": npy_h},
            413,
            "too_large",
        ),
        (
            "streamed oversize",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": chunks(), "headers": npy_h},
            413,
            "too_large",
        ),
        (
            "too many images",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": _npy(np.zeros((MAX_IMAGES + 1, 8, 8, 3), np.uint8)), "headers": npy_h},
            413,
            "too_large",
        ),
        (
            "too many files",
            "POST",
            "/v1/embeddings",
            {
                "data": {"model": "hist"},
                "files": [
                    ("images", (f"{i}.npy", _npy(np.zeros((4, 4, 3), np.uint8)), "application/x-npy"))
                    for i in range(MAX_IMAGES + 1)
                ],
            },
            413,
            "too_large",
        ),
        (
            "too many pixels",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": big_png, "headers": {"content-type": "image/png"}},
            413,
            "too_large",
        ),
        (
            "unknown model",
            "POST",
            "/v1/embeddings?model=nope",
            {"content": good, "headers": npy_h},
            404,
            "unknown_model",
        ),
        ("model missing", "POST", "/v1/embeddings", {"content": good, "headers": npy_h}, 422, "invalid_input"),
        (
            "text body",
            "POST",
            "/v1/embeddings?model=hist",
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            "multipart without files",
            "POST",
            "/v1/embeddings",
            {"data": {"model": "hist"}, "files": [("images", ("", b"", ""))]},
            400,
            "bad_request",
        ),
        (
            "broken multipart",
            "POST",
            "/v1/embeddings",
            {
                "content": b'--xx\r\nContent-Disposition: form-data; name="a"\r\n\r\nunterminated',
                "headers": {"content-type": "multipart/form-data; boundary=yy"},
            },
            400,
            "bad_request",
        ),
        (
            "bad format",
            "POST",
            "/v1/embeddings?model=hist&format=xml",
            {"content": good, "headers": npy_h},
            422,
            "invalid_input",
        ),
        (
            "path traversal",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "item_id": "../../etc/passwd", "frames": [0]}},
            422,
            "invalid_input",
        ),
        (
            "url item",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "item_id": "s3://bucket/x", "frames": [0]}},
            422,
            "invalid_input",
        ),
        (
            "unregistered store",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "store": "/etc", "frames": [0]}},
            404,
            "unknown_store",
        ),
        (
            "unknown item",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "item_id": "slide-zz", "frames": [0]}},
            404,
            "unknown_item",
        ),
        (
            "region outside",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "patches": [{"x": 700, "y": 0, "size": 128}]}},
            422,
            "invalid_input",
        ),
        (
            "missing level",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "patches": [{"level": 9, "x": 0, "y": 0, "size": 32}]}},
            422,
            "invalid_input",
        ),
        (
            "frames of a slide",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "frames": [0]}},
            422,
            "invalid_input",
        ),
        (
            "frame out of range",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "model": "us", "item_id": "liver-a", "frames": [6]}},
            422,
            "invalid_input",
        ),
        (
            "patches and frames",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "frames": [0], "patches": [{"x": 0, "y": 0, "size": 8}]}},
            422,
            "invalid_input",
        ),
        (
            "oversized region",
            "POST",
            "/v1/embeddings/regions",
            {"json": {**region, "patches": [{"x": 0, "y": 0, "size": 512}]}},
            413,
            "too_large",
        ),
        (
            "invalid json",
            "POST",
            "/v1/embeddings/regions",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        ("unknown route", "GET", "/v2/everything", {}, 404, "not_found"),
        ("wrong method", "GET", "/v1/embeddings", {}, 405, "method_not_allowed"),
    ]
    return cases


def _npy_object() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_bad_inputs_get_4xx_json_and_service_stays_healthy(world, server):
    good = _npy(np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    cases = _bad_cases()
    assert len({c[0] for c in cases}) >= 20
    failures = []
    bare = httpx.Client(base_url=str(server.base_url), timeout=60)  # no default key header
    for name, method, path, kwargs, status, code in cases:
        headers = {k: v for k, v in {"X-API-Key": KEY, **kwargs.pop("headers", {})}.items() if v is not None}
        try:
            r = bare.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:  # the server may close a connection it refused mid-stream
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        try:
            body = r.json()
        except ValueError:
            body = {"raw": r.text[:200]}
        if r.status_code != status or body.get("error") != code or not body.get("detail"):
            failures.append(f"{name}: got {r.status_code} {body}, want {status} {code}")
        assert server.get("/healthz").status_code == 200, f"unhealthy after {name}"
    assert not failures, "\n".join(failures)
    r = server.post("/v1/embeddings?model=hist", content=good, headers={"content-type": "application/x-npy"})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 2


# -- load and failure -------------------------------------------------------------------------------------
async def _hammer(
    url: str,
    n: int,
    clients: int,
    payload: bytes,
    stop: threading.Event | None = None,
    times: list[float] | None = None,
):
    """``n`` requests from ``clients`` concurrent connections; their status codes (-1: a 200 without an
    .npy body, -2: a connection error), and in ``times`` when each answer came (time.monotonic)."""
    codes: list[int] = []
    todo = iter(range(n))
    headers = {"X-API-Key": KEY, "content-type": "application/x-npy", "accept": "application/x-npy"}

    async def client(c: httpx.AsyncClient):
        for _ in todo:
            if stop is not None and stop.is_set():
                return
            try:
                r = await c.post("/v1/embeddings?model=hist", content=payload, headers=headers)
                codes.append(r.status_code if r.content[:6] == b"\x93NUMPY" or r.status_code != 200 else -1)
            except httpx.HTTPError:
                codes.append(-2)
            if times is not None:
                times.append(time.monotonic())

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    return codes


@pytest.mark.slow
def test_bounded_load_has_zero_errors(server):
    payload = _npy(np.random.default_rng(3).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
    t0 = time.perf_counter()
    codes = asyncio.run(_hammer(str(server.base_url), 2000, 16, payload))
    seconds = time.perf_counter() - t0
    assert len(codes) == 2000
    errors = {c: codes.count(c) for c in set(codes) if c != 200}
    assert not errors, f"non-200 responses: {errors} ({seconds:.1f} s)"


def _replica_pid() -> int:
    from ray import serve

    return serve.get_deployment_handle("encoder-hist", app_name=APP).info.remote().result(timeout_s=30)["pid"]


@pytest.mark.slow
def test_killed_replica_is_replaced_under_load(server):
    import ray

    pid = _replica_pid()
    actors = {a["Pid"]: a for a in ray._private.state.actors().values() if a["State"] == "ALIVE"}
    assert actors[pid]["ActorClassName"].endswith("encoder-hist"), "the PID is the hist replica's actor"
    payload = _npy(np.zeros((2, 32, 32, 3), np.uint8))
    stop = threading.Event()
    result: dict[str, list[int]] = {}
    times: list[float] = []
    clients = 8
    loader = threading.Thread(
        target=lambda: result.setdefault(
            "codes", asyncio.run(_hammer(str(server.base_url), 100000, clients, payload, stop, times))
        )
    )
    loader.start()
    try:
        deadline = time.time() + 60
        while len(times) < 20:  # load before the kill, measured rather than slept for
            assert time.time() < deadline and loader.is_alive(), "no load built up"
            time.sleep(0.1)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 90
        new_pid = None
        while time.time() < deadline:
            try:
                new_pid = _replica_pid()
                if new_pid != pid:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        assert new_pid is not None and new_pid != pid, "Serve did not replace the killed replica"
        replaced = time.monotonic()
        n_at_replace = len(times)
        deadline = time.time() + 60
        while len(times) < n_at_replace + 20:  # load after the new replica is up
            assert time.time() < deadline and loader.is_alive(), "no load after the replacement"
            time.sleep(0.1)
    finally:
        stop.set()
        loader.join(120)
    codes = result["codes"]
    answers = list(zip(times, codes, strict=True))
    assert sum(c == 200 for t, c in answers if t < killed) >= 10, "no successful load before the kill"
    assert sum(c == 200 for t, c in answers if t > replaced) >= 10, "no successes from the new replica"
    assert 500 not in codes and -1 not in codes, {c: codes.count(c) for c in set(codes)}
    # in-flight requests are retried by the ingress (within the request timeout) while the replica is
    # replaced: fewer failures than requests in flight at the kill
    assert sum(c != 200 for c in codes) < clients, {c: codes.count(c) for c in set(codes)}
    after = [
        server.post(
            "/v1/embeddings?model=hist", content=payload, headers={"content-type": "application/x-npy"}
        ).status_code
        for _ in range(20)
    ]
    assert after == [200] * 20


# -- config and builder -----------------------------------------------------------------------------------
def test_serve_config_file_is_a_valid_serve_config(repo_root: Path, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((repo_root / "serving" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "pretextlab.serving.app:build_app" and app.route_prefix == "/"
    for var in ("PRETEXTLAB_REGISTRY", "PRETEXTLAB_STORE"):
        monkeypatch.delenv(var, raising=False)
    args = parse_serve_args(app.args)
    assert args.registry.startswith("s3://") and args.stores["lake"].startswith("s3://")
    assert {m.spec for m in args.models} == {"chosen:histopathology", "chosen:ultrasound"}
    monkeypatch.setenv("PRETEXTLAB_REGISTRY", "s3://real-bucket/reg")
    assert parse_serve_args(app.args).registry == "s3://real-bucket/reg"
    text = (repo_root / "serving" / "serve_config.yaml").read_text()
    assert "/home/" not in text and "/tmp/" not in text and "AWS_SECRET_ACCESS_KEY:" not in text
    import importlib

    module, _, attr = app.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


@pytest.mark.parametrize(
    "args, message",
    [
        ({"models": [{"name": "a", "spec": "a"}]}, "registry: Field required"),
        ({"registry": "/r", "models": []}, "models: List should have at least 1 item"),
        ({"registry": "/r", "models": [{"name": "A B", "spec": "a"}]}, "models.0.name"),
        ({"registry": "/r", "models": [{"name": "a", "spec": "../x"}]}, "models.0.spec"),
        ({"registry": "/r", "models": [{"name": "a", "spec": "a"}, {"name": "a", "spec": "b"}]}, "repeated: a"),
        (
            {"registry": "${PRETEXTLAB_NOT_SET_ANYWHERE}", "models": [{"name": "a", "spec": "a"}]},
            "PRETEXTLAB_NOT_SET_ANYWHERE is not set",
        ),
        ({"registry": "/r", "models": [{"name": "a", "spec": "a"}], "stores": {"x": "http://evil/"}}, "stores"),
        (
            {
                "registry": "/r",
                "models": [{"name": "a", "spec": "a", "autoscaling": {"min_replicas": 3, "max_replicas": 1}}],
            },
            "min_replicas",
        ),
        ({"registry": "/r", "models": [{"name": "a", "spec": "a"}], "typo": 1}, "typo: unknown field"),
    ],
)
def test_bad_serve_args_name_the_field(args, message):
    with pytest.raises(
        ServingConfigError,
        match=message.replace("$", r"\$").replace("{", r"\{").replace("}", r"\}").replace(".", r"\."),
    ):
        parse_serve_args(args)


def test_build_app_refuses_a_missing_key_and_unknown_models(world, monkeypatch):
    from pretextlab.serving.app import build_app

    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ServingConfigError, match=f"{KEY_ENV} is not set"):
        build_app(_args(world))
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ServingConfigError, match="too short"):
        build_app(_args(world))
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(Exception, match="no encoder is chosen for modality 'dermatology'"):
        build_app(_args(world, models=[{"name": "d", "spec": "chosen:dermatology"}]))


def test_serve_cli_errors_are_one_line(world, capsys, monkeypatch):
    from pretextlab.cli import main

    monkeypatch.delenv("PRETEXTLAB_API_KEY", raising=False)
    assert main(["serve", "--registry", world["registry"], "--models", "hist"]) == 2
    err = capsys.readouterr().err
    assert "PRETEXTLAB_API_KEY is not set" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", "--registry", world["registry"], "--models", "nope", "--insecure-local"]) == 2
    assert "no encoder named 'nope'" in capsys.readouterr().err
    assert main(["serve", "--models", "hist"]) == 2
    assert "--registry ROOT is required" in capsys.readouterr().err


def test_sigterm_drains_in_flight_requests_and_exits_zero(server):
    """What systemd, `docker stop` and Kubernetes send: under load, `pretextlab serve` stops taking work
    (503 shutting_down with Retry-After, never a reset or a 5xx of another kind), lets the requests it took
    finish with 200 and exits 0, as on Ctrl-C. Runs last: it stops the module's server."""
    proc, url = server.process, str(server.base_url)
    payload = _npy(np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    headers = {"X-API-Key": KEY, "content-type": "application/x-npy", "accept": "application/x-npy"}
    stop = threading.Event()
    # (sent, answered, status or exception name, error code, Retry-After)
    events: list[tuple[float, float, int | str, str | None, str | None]] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/v1/embeddings?model=hist", content=payload, headers=headers)
                    code = r.json().get("error") if r.status_code != 200 else None
                    events.append((sent, time.monotonic(), r.status_code, code, r.headers.get("retry-after")))
                    if r.status_code == 503:
                        time.sleep(0.05)
                except httpx.HTTPError as exc:
                    events.append((sent, time.monotonic(), type(exc).__name__, None, None))
                    time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while sum(e[2] == 200 for e in events) < 20:
        assert time.time() < deadline, f"no load built up: {events[-5:]}"
        time.sleep(0.1)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    exited = time.monotonic()
    stop.set()
    for t in threads:
        t.join(90)
    log = server.log_path.read_text(errors="replace")
    assert code == 0, log[-3000:]
    # the CLI's own ending (Ray forwards the replicas' logs, which hold the earlier replica-kill test's traces)
    assert "stopping" in log and 'bin/pretextlab", line' not in log
    assert re.search(r"drained [1-9][0-9]* ingress replica\(s\) in [0-9.]+ s; shutting down", log), log[-3000:]
    statuses = [s for _, _, s, _, _ in events if isinstance(s, int)]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    refused = [e for e in events if e[2] == 503]
    assert all(e[3] == "shutting_down" and e[4] == "1" for e in refused), refused[:3]
    assert all(e[1] > signalled for e in refused), "refused before the signal"
    # the drain: requests taken before the drain finished with 200 after the signal, none was cut
    finished = [e for e in events if e[2] == 200 and e[1] > signalled]
    assert finished, "no request completed after the signal (drain)"
    cut = [e for e in events if isinstance(e[2], str) and e[0] < signalled]
    assert cut == [], f"requests in flight at the signal were cut, not drained: {cut}"
    assert all(not isinstance(s, int) for _, t, s, _, _ in events if t > exited + 1), "served after exit?"
