"""The study grid as cells: one pretraining config per (dataset, arm, seed), plus the random-init baseline.

A cell's id (``<dataset>.<arm>.s<seed>``) is its run name, its encoder's name in the registry and its
folder in the study; the same study gives the same cells, so a re-run finds what is already done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pretextlab.core.config import ConfigError, deep_merge
from pretextlab.core.names import NAME_RE, NAME_RULE
from pretextlab.modalities import get_modality
from pretextlab.objectives.registry import get_objective_class
from pretextlab.study.config import CINE_ARMS, RANDOM_INIT, ArmSpec, DatasetSpec, StudyConfig
from pretextlab.views import RECIPES


@dataclass(frozen=True)
class Cell:
    """One cell of the grid. ``pretrain`` is the PretrainConfig dict (the baseline's: never trained)."""

    id: str
    dataset: str
    arm: str
    objective: str
    seed: int
    pretrain: dict[str, Any] = field(hash=False, compare=False)
    #: the baseline's: how its embedding is read (``global_pool``), its own first, then every other
    #: readout an arm of its dataset uses, so each arm is compared with random init read the same way
    readouts: tuple[str, ...] = field(default=(), hash=False, compare=False)

    @property
    def baseline(self) -> bool:
        return self.arm == RANDOM_INIT


def cell_id(dataset: str, arm: str, seed: int) -> str:
    cid = f"{dataset}.{arm}.s{seed}"
    if not NAME_RE.match(cid):
        raise ConfigError(f"cell id {cid!r} (dataset.arm.seed): {NAME_RULE}; shorten the dataset or arm name")
    return cid


def arm_objective(arm: ArmSpec, kind: str) -> str:
    """The objective an arm runs on data of ``kind``: its own, or its cine variant for clips."""
    cls = get_objective_class(arm.objective)
    if kind in RECIPES.get(cls.views).kinds:
        return cls.name
    cine = CINE_ARMS.get(cls.name)
    if cine and kind in RECIPES.get(get_objective_class(cine).views).kinds:
        return cine
    kinds = " or ".join(RECIPES.get(cls.views).kinds)
    raise ConfigError(f"arms: {arm.label} ({cls.name}) trains on {kinds}, the dataset gives {kind}")


def pretrain_config(study: StudyConfig, ds: DatasetSpec, arm: ArmSpec | None, seed: int, runs: str) -> dict[str, Any]:
    """The PretrainConfig dict of one cell: study-wide settings < the arm's overrides < the fixed parts
    (name, data source, objective name, backbone, budget, seed) that make cells comparable."""
    kind = ds.kind or get_modality(ds.modality).sampling
    objective = arm_objective(arm, kind) if arm is not None else "ijepa"  # the baseline only borrows views
    cfg: dict[str, Any] = deep_merge({"train": {"num_workers": 2, "cpus_per_worker": 0.5}}, study.pretrain)
    if arm is not None:
        cfg = deep_merge(cfg, arm.overrides)
    fixed = {
        "name": cell_id(ds.name, arm.label if arm else RANDOM_INIT, seed),
        "modality": ds.modality,
        "data": {"kind": kind, "sources": [{"uri": ds.store, "modality": ds.modality}]},
        "objective": {"name": objective, "backbone": study.backbone},
        "train": {"steps": study.steps, "seed": seed},
        "storage": runs,
        "registry": study.registry,
    }
    return deep_merge(cfg, fixed)


def readout_of(cfg: dict[str, Any]) -> str:
    """How the encoder a PretrainConfig dict trains is read: its backbone's ``global_pool``, or its
    objective's default (the CLS token for DINO, SimCLR, VICReg; the mean of the patch tokens for the
    latent-prediction and reconstruction objectives)."""
    objective = cfg["objective"]
    pool = (objective.get("backbone") or {}).get("global_pool")
    return str(pool or get_objective_class(objective["name"]).default_pool)


def plan_cells(study: StudyConfig, runs: str) -> list[Cell]:
    """Every cell of ``study``: per dataset and seed the random-init baseline, then each arm.

    The baseline is evaluated once per readout its dataset's arms use (``Cell.readouts``): the same
    random weights read through the CLS token and through the mean of the patch tokens differ by up to
    0.05 balanced accuracy on the controlled benchmark (docs/benchmark.md), which a comparison with
    an arm read the other way would count as pretraining."""
    cells = []
    for ds in study.datasets:
        for seed in study.seeds:
            base = pretrain_config(study, ds, None, seed, runs)
            arms = []
            for arm in study.arms:
                cfg = pretrain_config(study, ds, arm, seed, runs)
                arms.append(Cell(cfg["name"], ds.name, arm.label, cfg["objective"]["name"], seed, cfg))
            own = readout_of(base)
            readouts = (own, *sorted({readout_of(c.pretrain) for c in arms} - {own}))
            cells.append(Cell(cell_id(ds.name, RANDOM_INIT, seed), ds.name, RANDOM_INIT, "none", seed, base, readouts))
            cells.extend(arms)
    return cells
