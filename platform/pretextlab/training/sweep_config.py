"""The sweep config: a pretraining config, a search space over its dotted fields, and how to search it.

Pure pydantic (no Ray): ``jobs/sweep`` turns it into a Ray Tune run. One YAML file::

    name: histo-dino-sweep              # the sweep folder under storage (default: <pretrain.name>-sweep)
    pretrain: ../pretrain/histo-dino.yaml   # a path, or {base: path, <fields to change>}, or inline fields
    search:                             # dotted PretrainConfig paths -> one distribution each
      train.schedule.lr: {loguniform: [1.0e-4, 2.0e-3]}
      objective.teacher_temp: {uniform: [0.04, 0.07]}
    tune: {metric: knn_acc, mode: max, num_samples: 8, scheduler: {name: asha}}

Without ``search:`` the shipped default space of the objective (configs/sweep/<objective>.yaml) is
used. Every mistake here is caught before any trial starts and named by file and field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pretextlab.core.config import ConfigError, deep_merge, format_validation_error, parse_overrides, read_yaml
from pretextlab.core.names import Name
from pretextlab.modalities import ModalityName
from pretextlab.training.config import PretrainConfig

if TYPE_CHECKING:  # torch-free at import: the objectives are imported where trials are checked
    from pretextlab.objectives.base import ObjectiveConfig

#: distributions a search dimension may name (exactly one per hyperparameter)
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")


def _defaults_dir() -> Path:
    """$PRETEXTLAB_SWEEP_DEFAULTS, else the copy inside an installed wheel (pretextlab/configs/sweep),
    else the source tree's configs/sweep."""
    if os.environ.get("PRETEXTLAB_SWEEP_DEFAULTS"):
        return Path(os.environ["PRETEXTLAB_SWEEP_DEFAULTS"])
    here = Path(__file__).resolve()
    packaged = here.parents[1] / "configs" / "sweep"
    return packaged if packaged.is_dir() else here.parents[3] / "configs" / "sweep"


#: the shipped default search spaces, one file per objective family
DEFAULTS_DIR = _defaults_dir()
DEFAULT_SPACE = {
    "dino": "dino",
    "ijepa": "ijepa",
    "cine_jepa": "ijepa",
    "mae": "mae",
    "cine_mae": "mae",
    "simclr": "simclr",
    "vicreg": "vicreg",
    "dinov3": "dinov3",
    "lejepa": "lejepa",
    "salt": "salt",
    "cine_salt": "salt",
}
#: what every pretraining worker reports at each log interval (jobs/pretextlab/jobs/train_loop.py), plus the
#: objective's own loss terms, which ``jobs/sweep`` finds with one forward pass before the sweep starts
TRAIN_METRICS = (
    "step",
    "epoch",
    "loss",
    "lr",
    "momentum",
    "images_per_s",
    "data_wait_fraction",
    "peak_rss_mib",
    "train_rankme",
    "train_embedding_std",
    "collapsed",
)
#: ... and with a ``validation:`` section (online kNN on a labelled catalog), at each validation step
VALIDATION_METRICS = ("knn_acc", "rankme", "embedding_std")
#: ... and with ``validation.linear: true``, a linear probe's accuracy at the same steps
LINEAR_METRICS = ("linear_acc",)
#: top-level PretrainConfig fields that name the run rather than train it
NOT_SWEPT = ("name", "modality", "storage", "registry")


class Dimension(BaseModel):
    """One hyperparameter's distribution: exactly one of uniform, loguniform, randint, choice or grid."""

    model_config = ConfigDict(extra="forbid")

    uniform: tuple[float, float] | None = Field(None, description="[low, high], sampled uniformly")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], low > 0, uniform in log")
    randint: tuple[int, int] | None = Field(None, description="[low, high], integers, both ends included")
    choice: list[Any] | None = Field(None, min_length=1, description="values sampled at random")
    grid: list[Any] | None = Field(None, min_length=1, description="every value is run (times num_samples)")

    @model_validator(mode="after")
    def _one(self) -> Dimension:
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)} (got {', '.join(given) or 'none'})")
        for k in ("uniform", "loguniform", "randint"):
            lo_hi = getattr(self, k)
            if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
                raise ValueError(f"{k}: low must be below high, got {list(lo_hi)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: low must be > 0, got {self.loguniform[0]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    def candidates(self) -> list[Any]:
        """Values checked against the pretraining config before the sweep: both ends, or every option."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        return [self.args[0], self.args[1]]

    def discrete(self) -> bool:
        return self.kind in ("choice", "grid", "randint")


class SchedulerSpec(BaseModel):
    """Early stopping: ASHA on the metric at rungs of ``grace_period * reduction_factor**k`` steps, or none."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["asha", "fifo"] = Field(
        "asha", description="asha: stop trials below the rung's top 1/reduction_factor; fifo: run every trial out"
    )
    grace_period: int | None = Field(
        None, ge=1, description="steps before a trial can be stopped (default: a quarter of pretrain.train.steps)"
    )
    reduction_factor: float = Field(2.0, gt=1)
    brackets: int = Field(1, ge=1)


class TuneSpec(BaseModel):
    """What to optimise and how: metric, searcher, scheduler, budget and concurrency."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(
        "knn_acc", description="a metric the pretraining workers report (online kNN needs pretrain.validation)"
    )
    mode: Literal["max", "min"] = "max"
    searcher: Literal["random", "grid", "optuna"] = Field(
        "random",
        description=(
            "random: sample distributions, cross grid values; grid: every choice/grid value crossed (no sampling); "
            "optuna: Bayesian (TPE), needs `pip install optuna`"
        ),
    )
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: int = Field(8, ge=1, description="trials (times the grid size when there are grid values)")
    max_concurrent: int | None = Field(
        None, ge=1, description="default: as many trials as the cluster's CPUs (and GPUs) hold"
    )
    time_budget_s: float | None = Field(None, gt=0, description="stop every trial after this long")
    seed: int = Field(0, description="seed of the searcher")


class ResourcesSpec(BaseModel):
    """Per-trial resources; each field set here replaces the pretraining config's train.* value."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int | None = Field(None, ge=1)
    cpus_per_worker: float | None = Field(None, gt=0)
    data_cpus: float | None = Field(None, gt=0)
    use_gpu: bool | None = None


class ExportSpec(BaseModel):
    """What happens to the best trial's encoder."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="registry name (default: pretrain.name)")
    choose: bool = Field(True, description="mark it as the chosen encoder of its modality")


class SweepConfig(BaseModel):
    """Everything one sweep needs."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="the sweep folder under storage")
    pretrain: PretrainConfig
    search: dict[str, Dimension] = Field(default_factory=dict)
    search_by_modality: dict[ModalityName, dict[str, Dimension]] = Field(
        default_factory=dict, description="extra dimensions used only when pretrain.modality matches"
    )
    tune: TuneSpec = Field(default_factory=TuneSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    storage: str | None = Field(None, description="where the sweep folder goes (default: pretrain.storage)")

    def space(self) -> dict[str, Dimension]:
        """The dimensions of this sweep: those for the pretraining modality, then ``search`` (which wins)."""
        return {**self.search_by_modality.get(self.pretrain.modality, {}), **self.search}

    def trial_base(self) -> PretrainConfig:
        """The pretraining config every trial starts from (resources applied)."""
        res = {k: v for k, v in self.resources.model_dump().items() if v is not None}
        if not res:
            return self.pretrain
        data = self.pretrain.model_dump()
        data["train"].update(res)
        return PretrainConfig.model_validate(data)

    @property
    def storage_root(self) -> str:
        return self.storage or self.pretrain.storage

    def spec_fingerprint(self) -> dict[str, Any]:
        """What must not change when a sweep is resumed: its space, search and trial config."""
        return {
            "space": {k: v.model_dump(exclude_none=True) for k, v in sorted(self.space().items())},
            "tune": self.tune.model_dump(exclude={"max_concurrent", "time_budget_s"}),
            "pretrain": self.trial_base().model_dump(mode="json"),
        }


# -- loading -------------------------------------------------------------------------------------
def _is_dimension(value: Any) -> bool:
    return isinstance(value, dict) and len(value) >= 1 and any(k in DISTRIBUTIONS for k in value)


def flatten_space(tree: Any, where: str = "search") -> dict[str, Any]:
    """``{objective: {teacher_temp: {uniform: [..]}}}`` and ``{objective.teacher_temp: {...}}`` both
    become ``{"objective.teacher_temp": {...}}``: a mapping naming a distribution is a dimension."""
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{where}: expected a mapping of hyperparameter paths to distributions, got {type(tree).__name__}"
        )
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if _is_dimension(value):
            out[str(key)] = value
        elif isinstance(value, dict) and value:
            for sub, dim in flatten_space(value, f"{where}.{key}").items():
                out[f"{key}.{sub}"] = dim
        else:
            raise ConfigError(
                f"{where}.{key}: expected a distribution, one of {', '.join(DISTRIBUTIONS)} "
                f"(e.g. {{loguniform: [1.0e-4, 1.0e-3]}}), got {value!r}"
            )
    return out


def _resolve_pretrain(value: Any, folder: Path, source: str) -> dict[str, Any]:
    """``pretrain:`` as a path, ``{base: path, ...changes}`` or inline fields -> one mapping."""
    if isinstance(value, str):
        value = {"base": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: pretrain: expected a path to a pretraining config or a mapping of its fields")
    value = dict(value)
    base = value.pop("base", None)
    if base is None:
        return value
    path = Path(base)
    if not path.is_absolute():
        path = folder / path
    if not path.is_file():
        raise ConfigError(f"{source}: pretrain.base: pretraining config {path} not found")
    return deep_merge(read_yaml(path), value)


def default_space(objective: str) -> dict[str, Any]:
    """The shipped search space of an objective: ``search`` and ``search_by_modality`` of its file."""
    stem = DEFAULT_SPACE.get(objective)
    path = DEFAULTS_DIR / f"{stem}.yaml"
    if stem is None or not path.is_file():
        raise ConfigError(
            f"search: no search space given and no default for objective {objective!r} "
            f"(looked for {path}); add a search: section"
        )
    data = read_yaml(path)
    return {"search": data.get("search") or {}, "search_by_modality": data.get("search_by_modality") or {}}


def load_sweep_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read a sweep YAML (+ ``key=value`` overrides, e.g. ``tune.num_samples=4 pretrain.train.steps=50``)."""
    path = Path(path)
    data = read_yaml(path)
    source = f"{path} + overrides" if overrides else str(path)
    data["pretrain"] = _resolve_pretrain(data.get("pretrain"), path.parent, str(path)) if "pretrain" in data else None
    if data["pretrain"] is None:
        raise ConfigError(f"{path}: pretrain: missing (a path to a pretraining config, or its fields)")
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    if "search" not in data and "search_by_modality" not in data:
        objective = (data["pretrain"].get("objective") or {}).get("name")
        data.update(default_space(str(objective)))
    data["search"] = flatten_space(data.get("search"), "search")
    data["search_by_modality"] = {
        m: flatten_space(t, f"search_by_modality.{m}") for m, t in (data.get("search_by_modality") or {}).items()
    }
    if not data.get("name") and isinstance(data["pretrain"].get("name"), str):
        data["name"] = f"{data['pretrain']['name']}-sweep"[:64]
    try:
        cfg = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    check_space(cfg, source)
    check_tune(cfg, source)
    return cfg


# -- checks before any trial -------------------------------------------------------------------
def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``X``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _walk(model: type[BaseModel], parts: list[str], where: str, root: str = "the pretraining config") -> None:
    """Each part must name a field of the model the previous part leads to."""
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            known = ", ".join(sorted(fields))
            section = " ".join(
                x for x in (root if i == 0 or root != "the pretraining config" else "", ".".join(parts[:i])) if x
            )
            raise ConfigError(f"{where}: unknown hyperparameter: {section} has no field {part!r} (fields: {known})")
        if i + 1 < len(parts):
            sub = _model_in(fields[part].annotation)
            if sub is None:
                raise ConfigError(
                    f"{where}: unknown hyperparameter: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
            model = sub


def check_path(cfg: PretrainConfig, path: str, where: str) -> None:
    """``path`` must name a field a trial can change: objective fields by the objective's config, view
    fields by the modality's view config, the rest by PretrainConfig."""
    from pretextlab.modalities import get_modality
    from pretextlab.objectives.registry import get_objective_class
    from pretextlab.views.config import CineViews

    parts = path.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"{where}: not a dotted field path")
    head = parts[0]
    if head in NOT_SWEPT:
        raise ConfigError(f"{where}: {head} names the run and cannot be swept")
    if head == "objective":
        if len(parts) < 2 or parts[1] == "name":
            raise ConfigError(f"{where}: sweep one objective at a time (one sweep config per objective)")
        cls = get_objective_class(cfg.objective.name)
        _walk(cls.config_class, parts[1:], where, root=f"objective {cfg.objective.name}")
    elif head == "views":
        if len(parts) != 2:
            raise ConfigError(f"{where}: unknown hyperparameter: views fields are one level deep (views.scale)")
        view_cls = get_modality(cfg.modality).views().config
        cls = get_objective_class(cfg.objective.name)
        known = set(view_cls.model_fields) | (set(CineViews.model_fields) if cls.views == "clip" else set())
        if parts[1] not in known:
            raise ConfigError(
                f"{where}: unknown hyperparameter: {cfg.modality} views have no field {parts[1]!r} "
                f"(fields: {', '.join(sorted(known))})"
            )
    else:
        if head == "validation" and cfg.validation is None:
            raise ConfigError(f"{where}: the pretraining config has no validation: section to change")
        _walk(PretrainConfig, parts, where)


def apply_hyperparameters(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` (a PretrainConfig dump) with each dotted path set to its value."""
    import copy

    out = copy.deepcopy(base)
    for path, value in values.items():
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = value
    return out


def encoded_paths(cfg: SweepConfig) -> list[str]:
    """Choice dimensions whose values Optuna cannot hold (lists, mappings): they travel as JSON strings."""
    if cfg.tune.searcher != "optuna":
        return []
    return sorted(
        p
        for p, d in cfg.space().items()
        if d.kind == "choice" and any(isinstance(v, (list, tuple, dict)) for v in d.args)
    )


def decode(values: dict[str, Any], encoded: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A trial's hyperparameters with the JSON-encoded ones (see ``encoded_paths``) decoded."""
    import json

    return {k: json.loads(v) if k in encoded and isinstance(v, str) else v for k, v in values.items()}


def trial_config(base: PretrainConfig, values: dict[str, Any]) -> PretrainConfig:
    """The pretraining config of one trial (validated)."""
    return PretrainConfig.model_validate(apply_hyperparameters(base.model_dump(mode="json"), values))


@dataclass(frozen=True)
class _ObjectiveStandIn:
    """What ``training.setup.view_overrides`` reads of an objective, from its validated config alone."""

    cfg: ObjectiveConfig
    views: str
    frames: int


def check_value(base: PretrainConfig, path: str, value: Any, where: str) -> None:
    """A trial with ``path = value`` must validate: PretrainConfig, the objective's config and its views.
    (Pydantic only: building models is left to the trials; the base config was built once.)"""
    from pretextlab.modalities import create_views
    from pretextlab.objectives.registry import get_objective_class
    from pretextlab.training.setup import objective_kwargs, view_overrides

    what = f"{where}: value {value!r}"
    try:
        cfg = trial_config(base, {path: value})
        cls = get_objective_class(cfg.objective.name)
        kwargs = objective_kwargs(cfg)
        kwargs["backbone"] = {"global_pool": cls.default_pool, **kwargs["backbone"]}
        ocfg = cls.config_class.model_validate(kwargs)
        stand_in = _ObjectiveStandIn(cfg=ocfg, views=cls.views, frames=getattr(ocfg, "frames", 1))
        create_views(cfg.modality, cls.views, **view_overrides(cfg, stand_in))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, what).replace(": <root>: ", ": ")) from None
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{what}: {str(exc).splitlines()[0]}") from None


def check_space(cfg: SweepConfig, source: str = "sweep") -> None:
    """The space is not empty, every path is a field a trial can change, every value validates."""
    space = cfg.space()
    if not space:
        raise ConfigError(
            f"{source}: search: the search space is empty; name at least one hyperparameter, "
            "e.g. search: {train.schedule.lr: {loguniform: [1.0e-4, 1.0e-3]}}"
        )
    base = cfg.trial_base()
    for path, dim in space.items():
        where = f"{source}: search.{path}"
        check_path(base, path, where)
        for value in dim.candidates():
            check_value(base, path, value, where)


def check_tune(cfg: SweepConfig, source: str = "sweep") -> None:
    """Searcher and scheduler settings that cannot work with this space or this run length."""
    t, space = cfg.tune, cfg.space()
    steps = cfg.pretrain.train.steps
    if t.searcher == "grid":
        continuous = [p for p, d in space.items() if not d.discrete() or d.kind == "randint"]
        if continuous:
            raise ConfigError(
                f"{source}: tune.searcher: grid runs listed values only; give choice/grid values "
                f"for {', '.join(continuous)} (or use searcher: random)"
            )
    if t.searcher == "optuna":
        grids = [p for p, d in space.items() if d.kind == "grid"]
        if grids:
            raise ConfigError(
                f"{source}: tune.searcher: optuna samples its own points; use choice instead of grid "
                f"for {', '.join(grids)}"
            )
    if t.scheduler.name == "asha" and t.scheduler.grace_period is not None and t.scheduler.grace_period >= steps:
        raise ConfigError(
            f"{source}: tune.scheduler.grace_period: {t.scheduler.grace_period} steps is not below "
            f"pretrain.train.steps ({steps}): ASHA could never stop a trial"
        )


def grace_period(cfg: SweepConfig) -> int:
    """ASHA's first rung in steps: as configured, else a quarter of the run (at least one log interval)."""
    t = cfg.pretrain.train
    g = cfg.tune.scheduler.grace_period
    return int(g) if g is not None else max(1, min(t.steps - 1, max(t.log_every, math.ceil(t.steps / 4))))


def known_metrics(cfg: PretrainConfig, objective_metrics: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every metric the trials of ``cfg`` report."""
    names = set(TRAIN_METRICS) | set(objective_metrics)
    if cfg.validation is not None:
        names |= set(VALIDATION_METRICS)
        if cfg.validation.linear:
            names |= set(LINEAR_METRICS)
    return sorted(names)


def check_metric(cfg: SweepConfig, objective_metrics: list[str] | tuple[str, ...] = (), source: str = "sweep") -> None:
    """The metric to optimise must be one the trials report; name the ones they do."""
    base = cfg.trial_base()
    known = known_metrics(base, objective_metrics)
    metric = cfg.tune.metric
    if metric in known:
        return
    hint = ""
    if metric in VALIDATION_METRICS + LINEAR_METRICS and base.validation is None:
        hint = (
            " (it comes from online validation: add a pretrain.validation: section with a labelled "
            "catalog, e.g. validation: {catalog: <store>, every: 50})"
        )
    elif metric in LINEAR_METRICS:
        hint = " (the online linear probe is off: set pretrain.validation.linear=true)"
    raise ConfigError(
        f"{source}: tune.metric: the trials never report {metric!r}{hint}; they report: {', '.join(known)}"
    )
