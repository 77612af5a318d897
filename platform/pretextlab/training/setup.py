"""From a :class:`PretrainConfig` to the parts of a run: the objective, its views, the data kind it
needs, and the encoder card it exports. Fills the defaults that must agree across the parts (view
sizes = the ViT input size, channels = the modality's, clip length = the objective's) and rejects
configs whose parts disagree, before any worker starts."""

from __future__ import annotations

from typing import Any, Protocol

from pretextlab.core.config import ConfigError
from pretextlab.modalities import get_modality
from pretextlab.models.encoder_io import EncoderCard
from pretextlab.objectives.base import Objective, ObjectiveConfig
from pretextlab.objectives.registry import create_objective, get_objective_class
from pretextlab.training.config import PretrainConfig
from pretextlab.training.weights import apply_weights
from pretextlab.views import RECIPES, Views


def objective_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """The objective's config with the backbone's channels defaulted from the modality."""
    kw = cfg.objective.kwargs()
    backbone = dict(kw.get("backbone") or {})
    channels = get_modality(cfg.modality).channels
    backbone.setdefault("in_chans", channels)
    if backbone["in_chans"] != channels:
        raise ConfigError(
            f"objective.backbone.in_chans: {cfg.modality} views have {channels} channel(s), got {backbone['in_chans']}"
        )
    kw["backbone"] = backbone
    return kw


def make_objective(cfg: PretrainConfig) -> Objective:
    return apply_weights(create_objective(cfg.objective.name, **objective_kwargs(cfg)), cfg.registry)


class ViewSource(Protocol):
    """What :func:`view_overrides` reads: an objective, or a stand-in built from validated configs
    (``sweep_config`` checks trial values without building models). ``frames`` is read for clip views only."""

    @property
    def cfg(self) -> ObjectiveConfig: ...

    @property
    def views(self) -> str: ...

    @property
    def frames(self) -> int: ...


def view_overrides(cfg: PretrainConfig, objective: ViewSource) -> dict[str, Any]:
    """View config: the user's overrides over sizes derived from the backbone (and clip length)."""
    bb = objective.cfg.backbone
    patch = bb.patch_size
    local = max(patch, (bb.img_size * 3 // 7) // patch * patch)
    derived: dict[str, Any] = {"size": bb.img_size, "global_size": bb.img_size, "local_size": local}
    if objective.views == "clip":
        derived["frames"] = int(objective.frames)
    return {**derived, **cfg.views}


def make_views(cfg: PretrainConfig, objective: Objective) -> Views:
    try:
        return get_modality(cfg.modality).create_views(objective.views, **view_overrides(cfg, objective))
    except ValueError as exc:
        raise ConfigError(f"views: {str(exc).splitlines()[0]}") from None


def check(cfg: PretrainConfig) -> tuple[Objective, Views]:
    """Build objective and views once (cheap: tiny CPU tensors) so mistakes surface as ConfigErrors."""
    cls = get_objective_class(cfg.objective.name)
    allowed = RECIPES.get(cls.views).kinds
    if cfg.data.kind not in allowed:
        raise ConfigError(
            f"data.kind: objective {cls.name} takes {cls.views} views of {' or '.join(allowed)}, got {cfg.data.kind!r}"
        )
    objective = make_objective(cfg)
    views = make_views(cfg, objective)
    if objective.views == "clip" and cfg.data.clip.frames < int(objective.frames):
        raise ConfigError(
            f"data.clip.frames: the objective needs clips of {objective.frames} frames, "
            f"the stream reads {cfg.data.clip.frames}"
        )
    return objective, views


def encoder_card(cfg: PretrainConfig, objective: Objective, views: Views, **extra: Any) -> EncoderCard:
    """The registry card of the run's encoder: how to rebuild, preprocess for and trace it."""
    bb = objective.cfg.backbone
    enc = objective.encoder()
    extra.setdefault("name", cfg.name)
    resolution = cfg.data.clip.resolution() if cfg.data.kind in ("frames", "clips") else None
    if resolution is not None:  # evaluation and serving bring images to the scale the views saw
        resolution["eval_fit"] = "crop" if getattr(views.config, "native", False) else "resize"
        extra.setdefault("resolution", resolution)
    extra = {**objective.provenance, **extra}  # init / teacher address and sha256 (training.weights)
    return EncoderCard(
        timm_name=bb.timm_name,
        timm_kwargs=bb.timm_kwargs(),
        embed_dim=int(enc.embed_dim),
        img_size=bb.img_size,
        patch_size=bb.patch_size,
        in_chans=bb.in_chans,
        global_pool=bb.global_pool,
        mean=list(views.config.mean),
        std=list(views.config.std),
        modality=cfg.modality,
        objective=cfg.objective.name,
        objective_config=objective.cfg.model_dump(mode="json"),
        pretrain_config=cfg.model_dump(mode="json"),
        **extra,
    )
