"""Objectives by name, as timm's ``create_model``: ``create_objective("dino", backbone={...})``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pretextlab.core.config import ConfigError, format_validation_error
from pretextlab.core.registry import Registry
from pretextlab.objectives.base import Objective

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: register ``cls`` under ``cls.name`` (empty and duplicate names are refused)."""
    return OBJECTIVES.register(cls.name, cls)


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


def get_objective_class(name: str) -> type[Objective]:
    """The objective class called ``name``; UnknownName (a ConfigError) listing the known ones otherwise."""
    return OBJECTIVES.get(name)


def create_objective(name: str, **config: Any) -> Objective:
    """Validate ``config`` with the objective's pydantic model and build the objective."""
    cls = get_objective_class(name)
    config.setdefault("backbone", {})
    if isinstance(config["backbone"], dict):
        config["backbone"] = {"global_pool": cls.default_pool, **config["backbone"]}
    try:
        cfg = cls.config_class.model_validate(config)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"objective {name}")) from None
    return cls(cfg)
