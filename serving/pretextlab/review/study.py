"""A review of a study's encoders, and its analysis back in the study's report.

**Create from a study.** A spec with ``study: <study folder>`` (or ``study: {uri, dataset, seed, arms}``)
needs no ``encoders``: :func:`link_study` reads the finished study (``study.json`` and the cell records,
:mod:`pretextlab.study.folder`) and fills in the registered encoder of every finished arm of one dataset
and seed (the random-init baseline included unless ``arms`` leaves it out), the study's registry, and
the dataset's store (its ``test_store`` when it has one). The spec keeps ``study.arms`` (encoder
address -> arm): organiser-only, like every encoder name; reviewers still see shuffled letters.

**Back into the study report.** :func:`write_study_section` (run by ``pretextlab review report``) writes
the review's analysis, with every encoder replaced by its arm, to ``<study>/reviews/<review>.json``;
``pretextlab study STUDY.yaml --report`` (or the study's next run) renders it as the report's
"Clinician review" section. The statistics are :func:`pretextlab.review.analysis.analyse`'s; no
reviewer names go into the study folder.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from pretextlab.review import models as m
from pretextlab.review.spec import ReviewSpecError

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker


def link_study(data: dict[str, Any], where: str = "review spec") -> dict[str, Any]:
    """``data`` with encoders, registry, store and label column taken from the study it names."""
    from pretextlab.storage import fs as sfs
    from pretextlab.study.config import RANDOM_INIT, StudyConfig
    from pretextlab.study.folder import STUDY_FILE, read_cells, read_json

    link = data["study"]
    link = {"uri": link} if isinstance(link, str) else link
    if not isinstance(link, dict) or not isinstance(link.get("uri"), str) or not link["uri"].strip():
        raise ReviewSpecError(f"{where}: study: give the study folder (or a mapping with uri, dataset, seed, arms)")
    if isinstance(link.get("arms"), dict) and data.get("encoders"):
        return data  # already linked (a stored spec sent again): nothing to read
    unknown = sorted(set(link) - {"uri", "dataset", "seed", "arms"})
    if unknown:
        raise ReviewSpecError(f"{where}: study.{unknown[0]}: unknown field (uri, dataset, seed, arms)")
    if data.get("encoders"):
        raise ReviewSpecError(f"{where}: encoders: give either study (its arms are the encoders) or encoders")
    uri = sfs.normalize(link["uri"].strip())
    study = read_json(sfs.join(uri, STUDY_FILE))
    try:
        cfg = StudyConfig.model_validate((study or {}).get("fingerprint", {}).get("config"))
    except ValueError:
        raise ReviewSpecError(f"{where}: study: {uri} holds no study (run `pretextlab study` first)") from None
    names = [d.name for d in cfg.datasets]
    dataset = link.get("dataset") or (names[0] if len(names) == 1 else None)
    if dataset not in names:
        raise ReviewSpecError(f"{where}: study.dataset: choose one of {', '.join(names)}")
    ds = cfg.datasets[names.index(dataset)]
    seed = link.get("seed", cfg.seeds[0])
    if seed not in cfg.seeds:
        raise ReviewSpecError(f"{where}: study.seed: the study ran seeds {cfg.seeds}")
    finished = {
        r["arm"]: r["encoder"]
        for r in read_cells(uri)
        if r.get("dataset") == dataset and r.get("seed") == seed and r.get("status") == "complete" and r.get("encoder")
    }
    order = [RANDOM_INIT, *(a.label for a in cfg.arms)]
    arms = link.get("arms") or [a for a in order if a in finished]
    if not isinstance(arms, list) or not all(isinstance(a, str) for a in arms):
        raise ReviewSpecError(f"{where}: study.arms: a list of the study's arm names")
    missing = [a for a in arms if a not in finished]
    if missing or not arms:
        have = ", ".join(a for a in order if a in finished) or "none"
        raise ReviewSpecError(
            f"{where}: study.arms: {', '.join(missing) or 'no arm'} not finished on {dataset} seed {seed} "
            f"(finished: {have})"
        )
    return {
        **data,
        "encoders": [finished[a] for a in arms],
        "registry": data.get("registry") or sfs.normalize(cfg.registry),
        "store": data.get("store") or ds.test_store or ds.store,
        "label_column": data.get("label_column") or ds.label_column,
        "study": {"uri": uri, "dataset": dataset, "seed": seed, "arms": {finished[a]: a for a in arms}},
    }


def study_section(sm: sessionmaker, review_pid: str) -> dict[str, Any] | None:
    """The analysis of a review linked to a study, per arm (unblinded); None for a review without a study."""
    from pretextlab.review import service as svc
    from pretextlab.review.analysis import analyse
    from pretextlab.review.localisation import roi_scores
    from pretextlab.review.spec import ReviewSpec

    with sm() as s:
        review = svc.get_review(s, review_pid)
        spec = ReviewSpec.model_validate(review.spec)
        if spec.study is None:
            return None
        encoders = s.execute(select(m.Encoder.name, m.Encoder.source).where(m.Encoder.review_id == review.id)).all()
        images = s.scalar(select(func.count()).select_from(m.Image).where(m.Image.review_id == review.id))
        invited = s.scalar(select(func.count()).select_from(m.Reviewer).where(m.Reviewer.review_id == review.id))
        head = {
            "review": review.pid,
            "title": review.title,
            "status": review.status,
            "created_at": review.created_at.isoformat(),
            "closed_at": review.closed_at.isoformat() if review.closed_at else None,
        }
    arm = {name: spec.study.arms[source] for name, source in encoders}
    answers = svc.export_answers(sm, review_pid)
    answers = answers.assign(
        encoder=answers["encoder"].map(arm),
        encoder_b=answers["encoder_b"].map(arm),
        preferred_encoder=answers["preferred_encoder"].map(lambda v: arm.get(v, v)),
    )
    scores = roi_scores(spec)
    if scores is not None:
        scores = scores.assign(encoder=scores["encoder"].map(arm))
    return {
        **head,
        "generated_at": m.utcnow().isoformat(timespec="seconds"),
        "study": spec.study.uri,
        "dataset": spec.study.dataset,
        "seed": spec.study.seed,
        "arms": sorted(set(arm.values())),
        "map_types": list(spec.map_types),
        "images": int(images or 0),
        "invited": int(invited or 0),
        "reviewers": int(answers["reviewer"].nunique()),
        "analysis": analyse(answers, scores=scores),
    }


def write_study_section(sm: sessionmaker, review_pid: str) -> str | None:
    """Write the review's section into its study's folder (``reviews/<review>.json``); its URL, or None."""
    from pretextlab.core.errors import UserError
    from pretextlab.storage import fs as sfs
    from pretextlab.study.folder import review_url

    section = study_section(sm, review_pid)
    if section is None:
        return None
    url = review_url(section["study"], review_pid)
    try:
        sfs.atomic_write_bytes(url, json.dumps(section, indent=1, allow_nan=False).encode())
    except OSError as exc:
        raise UserError(f"{url}: cannot write the review's section into the study folder ({exc})") from None
    return url
