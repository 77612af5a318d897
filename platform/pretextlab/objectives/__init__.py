"""Self-supervised objectives behind a registry: ``create_objective("dino", backbone={...})``.

JEA: ``dino`` (+ iBOT, KoLeo, Sinkhorn-Knopp options), ``simclr``, ``vicreg``.
JEPA: ``ijepa``, ``cine_jepa`` (tube masks over frames, V-JEPA style).
Pixel reconstruction: ``mae``, ``cine_mae`` (tube masking, VideoMAE style).
Pure PyTorch: no Ray here.
"""

from pretextlab.objectives import dino, dinov3, ijepa, lejepa, mae, salt, simclr, vicreg  # noqa: F401  (registration)  # noqa: F401  (registration, issue 17)
from pretextlab.objectives.base import Objective, ObjectiveConfig, ObjectiveOutput
from pretextlab.objectives.registry import OBJECTIVES, create_objective, get_objective_class, list_objectives
from pretextlab.objectives.schedules import ScheduleConfig, Schedules, param_groups

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "ScheduleConfig",
    "Schedules",
    "create_objective",
    "get_objective_class",
    "list_objectives",
    "param_groups",
]
