"""Augmentation views: output formats, determinism, HED stain maths, ultrasound geometry, cine consistency."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from pretextlab.modalities import create_views, get_modality, list_views
from pretextlab.views import (
    CineViews,
    HistopathologyViews,
    UltrasoundViews,
    hed_jitter,
    hed_to_rgb,
    normalize,
    rgb_to_hed,
    to_float,
)
from pretextlab.views.crop import resized_crop_boxes
from pretextlab.views.stain import RGB_FROM_HED

SMALL = {"size": 16, "global_size": 16, "local_size": 8, "n_global": 2, "n_local": 3}
OFF_US = {"gain": 0.0, "tgc": 0.0, "gamma": 0.0}
OFF_HISTO = {"hed_sigma": 0.0, "blur_prob": 0.0}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 4, c: int = 3, h: int = 24, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=gen(seed))


def clips(b: int = 2, c: int = 3, t: int = 10, h: int = 24, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, t, h, w), dtype=torch.uint8, generator=gen(seed))


def batch_for(recipe: str, c: int) -> dict[str, torch.Tensor]:
    return {"clips": clips(c=c)} if recipe == "clip" else {"images": images(c=c)}


def small(recipe: str, **extra) -> dict:
    out = dict(SMALL, **extra)
    if recipe == "clip":
        out.update(frames=4, strides=(1, 2))
    return out


def unnorm(x: torch.Tensor, cfg) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * torch.tensor(cfg.std).view(shape) + torch.tensor(cfg.mean).view(shape)


def flat(out: dict) -> list[torch.Tensor]:
    return [t for v in out.values() for t in (v if isinstance(v, list) else [v])]


# ---------------------------------------------------------------- formats, normalisation, determinism


def test_list_views_is_every_modality_recipe_pair():
    assert sorted(list_views()) == sorted(
        (m, r) for m in ("histopathology", "radiograph", "ultrasound") for r in ("multicrop", "pair", "single", "clip")
    )


@pytest.mark.parametrize(("modality", "recipe"), list_views())
def test_output_format_dtype_and_range(modality: str, recipe: str):
    views = create_views(modality, recipe, **small(recipe))
    out = views(batch_for(recipe, 3), gen())  # ultrasound also gets RGB-encoded frames
    c = get_modality(modality).channels
    if recipe == "multicrop":
        assert list(out) == ["global", "local"]
        assert [t.shape for t in out["global"]] == [(4, c, 16, 16)] * 2
        assert [t.shape for t in out["local"]] == [(4, c, 8, 8)] * 3
    elif recipe == "pair":
        assert list(out) == ["global"]
        assert [t.shape for t in out["global"]] == [(4, c, 16, 16)] * 2
        assert not torch.equal(out["global"][0], out["global"][1])  # independently augmented
    elif recipe == "single":
        assert list(out) == ["images"] and out["images"].shape == (4, c, 16, 16)
    else:
        assert list(out) == ["clips"] and out["clips"].shape == (2, c, 4, 16, 16)
    cfg = views.config
    lo = (0 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    hi = (1 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    for t in flat(out):
        assert t.dtype == torch.float32 and t.is_contiguous()
        per_channel = t.transpose(0, 1).reshape(c, -1)
        assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()
        assert per_channel.min() < 0 < per_channel.max()  # mean was subtracted, not left in [0, 1]


@pytest.mark.parametrize(("modality", "recipe"), list_views())
def test_same_seed_same_views_other_seed_different(modality: str, recipe: str):
    views = create_views(modality, recipe, **small(recipe))
    batch = batch_for(recipe, 3)
    a, b, other = views(batch, gen(7)), views(batch, gen(7)), views(batch, gen(8))
    assert all(torch.equal(x, y) for x, y in zip(flat(a), flat(b), strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(flat(a), flat(other), strict=True))


@pytest.mark.parametrize("modality", ["histopathology", "ultrasound"])
def test_identity_views_are_exactly_the_normalised_input(modality: str):
    off = (
        dict(OFF_HISTO, scale=(1.0, 1.0), dihedral=False)
        if modality == "histopathology"
        else dict(OFF_US, hflip_prob=0.0)
    )
    c = 3 if modality == "histopathology" else 1
    x = images(c=c, h=16, w=16)
    views = create_views(modality, "pair", size=16, **off)
    for view in views({"images": x}, gen())["global"]:
        assert torch.allclose(unnorm(view, views.config), x.float() / 255, atol=1e-6)


def test_views_pickle_for_ray_workers_and_accept_numpy_batches():
    views = create_views("ultrasound", "pair", **SMALL)
    x = images(c=1)
    again = pickle.loads(pickle.dumps(views))
    a, b = views({"images": x}, gen()), again({"images": x.numpy()}, gen())
    assert all(torch.equal(u, v) for u, v in zip(flat(a), flat(b), strict=True))


def test_to_float_and_normalize():
    assert to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]
    assert to_float(np.array([0.25], dtype=np.float64)).dtype == torch.float32
    with pytest.raises(ValueError, match="int32"):
        to_float(torch.zeros(2, dtype=torch.int32))
    x = torch.ones(2, 3, 4, 4) * torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), torch.zeros(2, 3, 4, 4))
    y = normalize(torch.full((1, 1, 2, 3, 3), 1.0), (0.5,), (0.25,))  # clips too
    assert torch.allclose(y, torch.full_like(y, 2.0))
    with pytest.raises(ValueError, match="3 values"):
        normalize(x, (0.5,), (0.25,))


# ---------------------------------------------------------------- factory and config errors


def test_factory_errors_name_the_unknown_modality_and_recipe():
    with pytest.raises(ValueError, match=r"unknown modality 'xray'.*histopathology, radiograph, ultrasound"):
        create_views("xray", "pair")
    with pytest.raises(ValueError, match=r"unknown recipe 'triplet'.*clip, multicrop, pair, single"):
        create_views("ultrasound", "triplet")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="local_size"):
        create_views("histopathology", "multicrop", global_size=32, local_size=64)
    with pytest.raises(ValueError, match="mean"):
        UltrasoundViews(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="scale"):
        HistopathologyViews(scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="hed_simga"):
        create_views("histopathology", "pair", hed_simga=0.1)
    with pytest.raises(ValueError, match="frames"):  # a cine field on a still-image recipe
        create_views("ultrasound", "pair", frames=4)
    with pytest.raises(ValueError, match="strides"):
        CineViews(strides=(0,))
    v = create_views("ultrasound", "clip", frames=3, strides=[2], size=8)
    assert v.cine == CineViews(frames=3, strides=(2,)) and v.config.size == 8


def test_batch_errors_name_the_key_and_channels():
    with pytest.raises(ValueError, match="'images'"):
        create_views("ultrasound", "pair")({"clips": clips()})
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        create_views("ultrasound", "clip")({"clips": images()})
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        create_views("histopathology", "pair", **SMALL)({"images": images(c=1)})


def test_defaults_document_their_source():
    for model in (HistopathologyViews, UltrasoundViews, CineViews):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
    h = HistopathologyViews()
    assert (h.global_size, h.local_size, h.n_global, h.hed_sigma) == (224, 96, 2, 0.05)
    assert h.mean == (0.485, 0.456, 0.406) and UltrasoundViews().mean == (0.5,) and UltrasoundViews().std == (0.25,)
    # fixed magnification: local crops get the global zoom, i.e. area shrunk by (L/G)^2
    f = (96 / 224) ** 2
    assert h.resolved_local_scale == pytest.approx((0.8 * f, 1.0 * f))


# ---------------------------------------------------------------- histopathology


def tissue(b: int = 8, h: int = 16, seed: int = 0) -> torch.Tensor:
    """H&E-like RGB from known stain densities (H, E in [0.1, 1] OD, no DAB)."""
    hed = torch.rand(b, 3, h, h, generator=gen(seed)) * 0.9 + 0.1
    hed[:, 2] = 0
    return hed_to_rgb(hed)


def test_rgb_hed_round_trip_is_exact_to_one_grey_level():
    grid = torch.stack(torch.meshgrid(*[torch.arange(0, 256, 15)] * 3, indexing="ij")).reshape(1, 3, -1, 1)
    rgb = torch.cat([grid.float() / 255, torch.rand(1, 3, 400, 1, generator=gen())], dim=2)
    back = hed_to_rgb(rgb_to_hed(rgb))
    assert (back - rgb).abs().max() <= 1 / 255
    assert (hed_jitter(rgb, 0.0, gen()) - rgb).abs().max() <= 1 / 255


def test_rgb_to_hed_uses_the_ruifrok_johnston_matrix():
    # a pixel of pure haematoxylin at 0.7 OD: intensity = exp(-0.7 * H row of rgb_from_hed)
    rgb = torch.exp(-0.7 * RGB_FROM_HED[0].float()).view(1, 3, 1, 1)
    assert torch.allclose(rgb_to_hed(rgb).flatten(), torch.tensor([0.7, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(RGB_FROM_HED[1].float(), torch.tensor([0.07, 0.99, 0.11]))


def test_hed_jitter_changes_stains_but_keeps_background_white():
    x = tissue()
    jittered = hed_jitter(x, 0.05, gen())
    h_in, h_out = rgb_to_hed(x)[:, 0], rgb_to_hed(jittered)[:, 0]
    dmean = (h_out.mean((1, 2)) - h_in.mean((1, 2))).abs()
    dstd = (h_out.std((1, 2)) / h_in.std((1, 2)) - 1).abs()
    assert (dmean > 1e-3).all() and dmean.max() > 0.02 and dstd.max() > 0.01
    assert dmean.max() < 0.05 * 1.0 + 0.05 + 1e-3  # bound |alpha - 1| * max(H) + |beta| for sigma 0.05
    white = torch.ones(64, 3, 4, 4)
    w = hed_jitter(white, 0.05, gen())
    assert w.min() > 0.85 and w.mean() > 0.95
    assert (w.mean((1, 2, 3)) < 0.999).any()  # it is perturbed, only mildly


def test_histopathology_pipeline_applies_stain_jitter_only_when_enabled():
    x = (tissue(b=4) * 255).round().to(torch.uint8)
    base = dict(size=16, scale=(1.0, 1.0), dihedral=False, blur_prob=0.0)
    plain = create_views("histopathology", "pair", hed_sigma=0.0, **base)
    jitter = create_views("histopathology", "pair", **base)  # default sigma 0.05
    p = unnorm(plain({"images": x}, gen())["global"][0], plain.config)
    j = unnorm(jitter({"images": x}, gen())["global"][0], jitter.config)
    h_p, h_j = rgb_to_hed(p)[:, 0].mean((1, 2)), rgb_to_hed(j)[:, 0].mean((1, 2))
    assert torch.allclose(p, x.float() / 255, atol=1e-6)
    assert ((h_j - h_p).abs() > 1e-3).all()


def dihedral_variants(img: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(v, k, dims=(-2, -1)) for v in (img, img.flip(-1)) for k in range(4)]


def test_histopathology_flips_and_rotations_are_exactly_the_8_dihedral_variants():
    x = images(b=64, h=12, w=12)
    views = create_views("histopathology", "pair", size=12, scale=(1.0, 1.0), hed_sigma=0.0, blur_prob=0.0)
    seen = set()
    for view in views({"images": x}, gen())["global"]:
        out = (unnorm(view, views.config) * 255).round().to(torch.uint8)
        for b in range(x.shape[0]):
            hits = [i for i, v in enumerate(dihedral_variants(x[b])) if torch.equal(out[b], v)]
            assert len(hits) == 1, f"sample {b} is not a dihedral variant of its input"
            seen.add(hits[0])
    assert seen == set(range(8))


def test_histopathology_crops_stay_near_native_magnification():
    cfg = HistopathologyViews()
    g = gen()
    glob = resized_crop_boxes(224, 224, 256, cfg.scale, cfg.ratio, g)
    loc = resized_crop_boxes(224, 224, 256, cfg.resolved_local_scale, cfg.ratio, g)
    zoom_global = cfg.global_size / glob[:, 2].double()
    zoom_local = cfg.local_size / loc[:, 2].double()
    assert (glob[:, 2] == glob[:, 3]).all()  # square: nuclei are not stretched
    assert zoom_global.min() >= 1.0 and zoom_global.max() <= 1.13  # DINO's 0.4 scale would zoom 1.58x
    assert zoom_local.min() >= 0.98 and zoom_local.max() <= 1.15  # locals match the globals' zoom
    assert abs(zoom_local.mean() - zoom_global.mean()) < 0.02
    wide = resized_crop_boxes(32, 48, 64, cfg.scale, cfg.ratio, g)  # non-square patch: still square boxes
    assert (wide[:, 2] == wide[:, 3]).all() and (wide[:, 2] <= 32).all()


def test_single_recipe_is_light_crop_and_flips_only():
    x = images(b=16, h=12, w=12)
    histo = create_views("histopathology", "single", size=12, scale=(1.0, 1.0))  # default jitter and blur
    out = (unnorm(histo({"images": x}, gen())["images"], histo.config) * 255).round().to(torch.uint8)
    for b in range(x.shape[0]):  # no stain jitter or blur: exactly a flip/rotation of the input
        assert any(torch.equal(out[b], v) for v in dihedral_variants(x[b]))
    speckle = images(b=4, c=1, h=20, w=20, seed=2)
    us = create_views("ultrasound", "single", size=12)  # default gain, TGC and gamma jitter
    out = (unnorm(us({"images": speckle}, gen())["images"], us.config) * 255).round().to(torch.uint8)
    assert all(find_window(out[b], speckle[b]) for b in range(4))


def test_blur_happens_with_its_probability():
    x = images(b=16, h=16, w=16)
    base = dict(size=16, scale=(1.0, 1.0), dihedral=False, hed_sigma=0.0)
    sharp = create_views("histopathology", "single", **base)
    always = create_views("histopathology", "pair", blur_prob=1.0, blur_sigma=(1.0, 2.0), **base)
    never = create_views("histopathology", "pair", blur_prob=0.0, **base)
    ref = sharp({"images": x}, gen())["images"]
    assert torch.equal(never({"images": x}, gen())["global"][0], ref)
    blurred = always({"images": x}, gen())["global"][0]
    assert (blurred.diff(dim=-1).abs().mean((1, 2, 3)) < 0.6 * ref.diff(dim=-1).abs().mean((1, 2, 3))).all()


# ---------------------------------------------------------------- ultrasound


def depth_gradient(b: int = 8, h: int = 40, w: int = 30) -> torch.Tensor:
    """Brightness rising 8% per row of depth (float input in [0.04, 0.8])."""
    rows = 0.04 * 1.08 ** torch.arange(h, dtype=torch.float32)
    return rows.view(1, 1, h, 1).expand(b, 1, h, w).contiguous()


def test_ultrasound_rgb_frames_become_one_luminance_channel():
    x = images(b=2, c=3, h=16, w=16)
    views = create_views("ultrasound", "single", size=16, hflip_prob=0.0)
    out = unnorm(views({"images": x}, gen())["images"], views.config)
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).float() / 255
    assert out.shape == (2, 1, 16, 16) and torch.allclose(out[:, 0], luma, atol=1e-5)


@pytest.mark.parametrize("recipe", ["multicrop", "pair", "single"])
def test_ultrasound_never_flips_depth(recipe: str):
    x = depth_gradient()
    strict = create_views("ultrasound", recipe, **dict(SMALL, **OFF_US))
    for seed in range(5):
        for view in flat(strict({"images": x}, gen(seed))):
            assert (view.diff(dim=-2) > 0).all()  # every column still brightens with depth
    noisy = create_views("ultrasound", recipe, **SMALL)  # default gain, TGC and gamma jitter
    for seed in range(5):
        for view in flat(noisy({"images": x}, gen(seed))):
            q = view.shape[-2] // 4
            assert (view[..., :q, :].mean((1, 2, 3)) < view[..., -q:, :].mean((1, 2, 3))).all()


def test_ultrasound_flips_horizontally():
    cols = torch.arange(16, dtype=torch.uint8).mul(15).view(1, 1, 1, 16).expand(32, 1, 16, 16)
    views = create_views("ultrasound", "single", size=16)
    out = views({"images": cols}, gen())["images"]
    increasing = (out.diff(dim=-1) > 0).all(dim=(1, 2, 3))
    decreasing = (out.diff(dim=-1) < 0).all(dim=(1, 2, 3))
    assert (increasing | decreasing).all() and increasing.any() and decreasing.any()


def find_window(view: torch.Tensor, image: torch.Tensor) -> bool:
    """True when ``view`` (1, s, s) equals a window of ``image`` (1, H, W) or of its mirror."""
    s = view.shape[-1]
    for img in (image, image.flip(-1)):
        windows = img[0].unfold(0, s, 1).unfold(1, s, 1)  # (H-s+1, W-s+1, s, s)
        if (windows == view[0]).all(-1).all(-1).any():
            return True
    return False


@pytest.mark.parametrize("recipe", ["multicrop", "pair"])
def test_ultrasound_crops_are_native_windows_without_resampling(recipe: str):
    speckle = images(b=3, c=1, h=30, w=26, seed=3)
    views = create_views("ultrasound", recipe, **dict(SMALL, **OFF_US))
    for view in flat(views({"images": speckle}, gen())):
        out = (unnorm(view, views.config) * 255).round().to(torch.uint8)
        assert torch.allclose(unnorm(view, views.config) * 255, out.float(), atol=1e-3)  # no new values
        for b in range(speckle.shape[0]):
            assert find_window(out[b], speckle[b])


def test_ultrasound_small_frames_are_padded_not_stretched():
    x = images(b=2, c=1, h=10, w=12, seed=4)
    views = create_views("ultrasound", "single", size=16, hflip_prob=0.0)
    out = (unnorm(views({"images": x}, gen())["images"], views.config) * 255).round().to(torch.uint8)
    assert torch.equal(out[:, :, :10, 2:14], x)  # probe surface stays the top row, centred laterally
    assert out[:, :, 10:].eq(0).all() and out[..., :2].eq(0).all() and out[..., 14:].eq(0).all()


def test_ultrasound_tgc_is_a_smooth_gain_along_depth_only():
    x = torch.full((4, 1, 64, 64), 0.5)
    views = create_views("ultrasound", "pair", size=64, gain=0.0, gamma=0.0, tgc=0.3, hflip_prob=0.0)
    gain = unnorm(views({"images": x}, gen())["global"][0], views.config) / 0.5  # (B, 1, 64, 64)
    assert torch.allclose(gain, gain[..., :1].expand_as(gain), atol=1e-5)  # constant along each row
    per_row = gain[:, 0, :, 0]
    assert (per_row.max(1).values - per_row.min(1).values > 0.01).all()  # varies with depth
    assert per_row.diff(dim=1).abs().max() < 0.06  # smoothly
    assert per_row.min() > 0.65 and per_row.max() < 1.5  # about exp(+-0.3)


# ---------------------------------------------------------------- cine


def frame_index_clip(b: int = 2, t: int = 20, c: int = 1, h: int = 12) -> torch.Tensor:
    """Frame t has value 10 * t everywhere."""
    return (torch.arange(t, dtype=torch.uint8) * 10).view(1, 1, t, 1, 1).expand(b, c, t, h, h).contiguous()


@pytest.mark.parametrize("modality", ["histopathology", "ultrasound"])
def test_cine_temporal_stride_is_respected(modality: str):
    c = 3 if modality == "histopathology" else 1
    off = dict(OFF_HISTO, dihedral=False) if modality == "histopathology" else OFF_US
    views = create_views(modality, "clip", size=12, frames=4, strides=(1, 2, 7), **off)
    seen = set()
    for seed in range(12):
        out = unnorm(views({"clips": frame_index_clip(c=c)}, gen(seed))["clips"], views.config)
        t = (out * 255 / 10).round()
        assert torch.equal(t, t[..., :1, :1].expand_as(t))  # frames are not mixed spatially
        steps = t[:, 0, :, 0, 0].diff(dim=1)  # (B, frames - 1)
        assert (steps == steps[:, :1]).all()
        seen |= set(steps[:, 0].int().tolist())
    assert seen == {1, 2}  # 7 * 3 + 1 = 22 frames do not fit in 20, so stride 7 is never drawn


def test_cine_short_clip_repeats_the_last_frame():
    views = create_views("ultrasound", "clip", size=12, frames=6, strides=(2,), **OFF_US)
    out = unnorm(views({"clips": frame_index_clip(t=4)}, gen())["clips"], views.config)
    assert (out[:, 0, :, 0, 0] * 255 / 10).round().tolist() == [[0, 1, 2, 3, 3, 3]] * 2


@pytest.mark.parametrize("modality", ["histopathology", "ultrasound"])
def test_cine_applies_one_spatial_transform_to_every_frame(modality: str):
    c = 3 if modality == "histopathology" else 1
    a, b = images(b=4, c=c, h=20, w=20, seed=5), images(b=4, c=c, h=20, w=20, seed=6)
    clip = torch.stack([a, b] * 5, dim=2)  # frames A B A B ... A B
    extra = {"blur_prob": 0.5} if modality == "ultrasound" else {}
    for strides, pattern in (((1,), [0, 1, 0, 1]), ((2,), [0, 0, 0, 0])):
        views = create_views(modality, "clip", size=12, frames=4, strides=strides, **extra)  # full jitter
        for seed in range(3):
            out = views({"clips": clip}, gen(seed))["clips"]
            for f in range(4):  # identical input frames stay identical after crop, flips, colour, blur
                same = torch.tensor([torch.equal(out[i, :, f], out[i, :, 0]) for i in range(4)])
                assert same.all() if pattern[f] == 0 else not same.any()


# ---------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize(("modality", "recipe"), list_views())
def test_cuda_views_match_cpu_views_for_the_same_cpu_generator(modality: str, recipe: str):
    views = create_views(modality, recipe, **small(recipe))
    batch = batch_for(recipe, 3)
    cpu = flat(views(batch, gen()))
    gpu = flat(views({k: v.cuda() for k, v in batch.items()}, gen()))
    for a, b in zip(cpu, gpu, strict=True):
        assert b.device.type == "cuda" and b.dtype == torch.float32
        assert torch.allclose(a, b.cpu(), atol=1e-3)
