"""What a review shows and asks: validated from YAML/JSON/the organiser's form (unknown fields are an error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pretextlab.core.errors import UserError

MapType = Literal["attention", "pca", "similarity"]
MAP_TYPES: tuple[str, ...] = ("attention", "pca", "similarity")


class ReviewSpecError(UserError):
    """A review specification with a missing or invalid field."""


class Questions(BaseModel):
    """The questions asked for every case."""

    model_config = ConfigDict(extra="forbid")

    likert: str = Field("The map highlights clinically relevant structure.", min_length=3, max_length=500)
    scale: int = Field(5, ge=2, le=9, description="Likert points, 1..scale")
    low_label: str = Field("strongly disagree", max_length=60)
    high_label: str = Field("strongly agree", max_length=60)
    pairwise: bool = Field(False, description="also show pairs of maps side by side: which is more relevant?")
    pairwise_question: str = Field("Which map highlights more clinically relevant structure?", max_length=500)
    comment: bool = Field(False, description="optional free-text comment per case")
    region: bool = Field(False, description="optional click marking the relevant region")


class StudyLink(BaseModel):
    """The study a review was created from (filled in by :func:`pretextlab.review.study.link_study`): its
    folder, the dataset and seed whose cells are reviewed, and each encoder's arm (organiser only: the
    study report names the arms, reviewer pages never do)."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(..., min_length=1, description="the study folder (<storage>/<name>, local or s3://)")
    dataset: str
    seed: int
    arms: dict[str, str] = Field(..., min_length=1, description="encoder registry address -> the study's arm")


class ReviewSpec(BaseModel):
    """Encoders x image panel x map types, and the questions."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(..., min_length=1, max_length=200)
    encoders: list[str] = Field(
        ..., min_length=1, max_length=26, description="encoder folders, or registry addresses when registry is set"
    )
    registry: str | None = None
    store: str = Field(..., min_length=1, description="store with a labelled catalog (local or s3://)")
    label_column: str = "label"
    items: list[str] | None = Field(None, description="item ids of the panel")
    sample: int | None = Field(None, ge=1, le=500, description="or: this many images drawn with `seed`")
    seed: int = 0
    map_types: list[MapType] = Field(default_factory=lambda: list[MapType](["attention"]), min_length=1)
    questions: Questions = Field(default_factory=Questions)
    display_size: int = Field(320, ge=64, le=1024)
    study: StudyLink | None = Field(None, description="set when the review was created from a study's output")

    @model_validator(mode="after")
    def _panel(self) -> ReviewSpec:
        if bool(self.items) == bool(self.sample):
            raise ValueError("give exactly one of items (a list of item ids) or sample (a count)")
        if len(set(self.encoders)) != len(self.encoders):
            raise ValueError("encoders: the same encoder is listed twice")
        if len(set(self.map_types)) != len(self.map_types):
            raise ValueError("map_types: a map type is listed twice")
        if self.study is not None and set(self.study.arms) != set(self.encoders):
            raise ValueError("study: arms must name exactly the review's encoders")
        return self


def parse_spec(data: dict[str, Any], where: str = "review spec") -> ReviewSpec:
    """Validate ``data``; the error names the first bad field. A ``study:`` field (a finished study's
    folder, or ``{uri, dataset, seed, arms}``) fills in encoders, registry and store from the study
    (reads the study folder: see :func:`pretextlab.review.study.link_study`)."""
    if isinstance(data, dict) and data.get("study") is not None:
        from pretextlab.review.study import link_study

        data = link_study(data, where)
    try:
        return ReviewSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "spec"
        raise ReviewSpecError(f"{where}: {loc}: {err['msg']}") from None


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> ReviewSpec:
    """A spec from a YAML/JSON file, with CLI overrides on top."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as exc:
        raise ReviewSpecError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ReviewSpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ReviewSpecError(f"{path}: expected a mapping of spec fields")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_spec(data, str(path))
