"""The encoder registry: versions, completeness, resolve, the chosen mark, and s3 round trips."""

from __future__ import annotations

import json

import pytest
import torch

from pretextlab.models import BackboneConfig, EncoderCard, create_backbone
from pretextlab.registry import EncoderRegistry, RegistryError


def _encoder(seed: int = 0):
    torch.manual_seed(seed)
    cfg = BackboneConfig(arch="vit_tiny", img_size=32, patch_size=8, in_chans=1, depth=1)
    model = create_backbone(cfg)
    card = EncoderCard(
        name="us-ijepa",
        timm_name=cfg.timm_name,
        timm_kwargs=cfg.timm_kwargs(),
        embed_dim=model.embed_dim,
        img_size=32,
        patch_size=8,
        in_chans=1,
        modality="ultrasound",
        objective="ijepa",
    )
    return model, card


def test_register_resolve_and_load(tmp_path):
    reg = EncoderRegistry(str(tmp_path / "reg"))
    m0, card = _encoder(0)
    r0 = reg.register(m0, card)
    m1, _ = _encoder(1)
    r1 = reg.register(m1, card)
    assert r0.version != r1.version
    assert {r.version for r in reg.versions("us-ijepa")} == {r0.version, r1.version}
    assert reg.resolve(f"us-ijepa:{r0.version}").card.weights_sha256 == r0.card.weights_sha256
    model, loaded_card, ref = reg.load(f"us-ijepa:{r1.version}")
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), m1.eval()(x))
    assert loaded_card.version == r1.version
    with pytest.raises(RegistryError, match="no encoder named 'nope'.*us-ijepa"):
        reg.resolve("nope")
    with pytest.raises(RegistryError, match="no version 'v9'"):
        reg.resolve("us-ijepa:v9")
    with pytest.raises(RegistryError, match="encoder name"):
        reg.register(m0, card, name="../evil")


def test_incomplete_version_is_invisible_and_chosen_mark(tmp_path):
    reg = EncoderRegistry(str(tmp_path))
    model, card = _encoder()
    ref = reg.register(model, card)
    half = tmp_path / "encoders" / "us-ijepa" / "29990101T000000Z-aaaaaa"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")  # a crash before the card: not a version
    assert [r.version for r in reg.versions("us-ijepa")] == [ref.version]
    assert reg.resolve("us-ijepa").version == ref.version
    with pytest.raises(RegistryError, match="no encoder is chosen for modality 'ultrasound'"):
        reg.resolve("chosen:ultrasound")
    reg.choose(ref, "ultrasound", {"sweep": "s1", "metric": "knn_acc", "value": 0.9})
    assert reg.resolve("chosen:ultrasound").id == ref.id
    mark = json.loads((tmp_path / "chosen" / "ultrasound.json").read_text())
    assert mark["reason"]["sweep"] == "s1" and mark["version"] == ref.version


def test_s3_registry_roundtrip_verifies_checksum(s3_server, tmp_path):
    bucket = s3_server.new_bucket()
    reg = EncoderRegistry(f"s3://{bucket}/registry", cache_dir=tmp_path / "cache")
    model, card = _encoder(3)
    ref = reg.register(model, card)
    assert ref.uri.startswith(f"s3://{bucket}/registry/encoders/us-ijepa/")
    loaded, _, _ = reg.load("us-ijepa:latest")
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
    # a swapped weights object is refused when fetched into a fresh cache
    s3_server.client().put_object(
        Bucket=bucket, Key=f"registry/encoders/us-ijepa/{ref.version}/model.safetensors", Body=b"not weights"
    )
    fresh = EncoderRegistry(f"s3://{bucket}/registry", cache_dir=tmp_path / "cache2")
    with pytest.raises(Exception, match="sha256 does not match"):
        fresh.load("us-ijepa")
    assert not (tmp_path / "cache2" / "us-ijepa" / ref.version).exists()
