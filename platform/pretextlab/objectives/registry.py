"""Objectives by name, as timm's ``create_model``: ``create_objective("dino", backbone={...})``."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pretextlab.core.config import ConfigError, format_validation_error
from pretextlab.objectives.base import Objective

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    OBJECTIVES[cls.name] = cls
    return cls


def list_objectives() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective_class(name: str) -> type[Objective]:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"objective: unknown objective {name!r}; known: {', '.join(list_objectives())}") from None


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
