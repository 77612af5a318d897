"""Collapse verdicts from several signals: RankMe share, embedding std vs healthy, a loss at its uniform value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pretextlab.evaluate.diagnostics import collapse_verdict, diagnostics, uniform_loss, uniform_output_warning


def test_gaussian_is_not_collapsed_rank_two_is_partial_constant_is_complete():
    rng = np.random.default_rng(0)
    gauss = rng.normal(size=(2000, 32))
    v = collapse_verdict(gauss)
    assert v.collapsed == "no" and v.reasons == [] and v.signals["rankme_share"] > 0.8
    rank2 = rng.normal(size=(2000, 2)) @ rng.normal(size=(2, 64))  # RankMe ~2 of 64
    v = collapse_verdict(rank2)
    assert v.collapsed == "partial" and "dimensional collapse" in v.reasons[0]
    assert v.signals["std_ratio"] > 0.3  # it is the rank signal, not the spread, that fires
    constant = np.tile(rng.normal(size=(1, 32)), (500, 1)) + 1e-9 * rng.normal(size=(500, 32))
    v = collapse_verdict(constant)
    assert v.collapsed == "complete" and any("same vector" in r for r in v.reasons)
    d = diagnostics(constant)
    assert d["collapse"] == "complete" and d["collapsed"] is True and d["collapse_reasons"] == v.reasons
    assert diagnostics(gauss)["collapse"] == "no" and diagnostics(gauss)["collapsed"] is False


def test_the_dino_case_from_the_issue_is_flagged():
    """DINO on 780 ultrasound stills: loss 6.931 = ln(1024), RankMe 4.1 of 192, std 0.0096 vs healthy 0.072."""
    case = {"rankme_value": 4.1, "dim": 192, "n": 780, "std": 0.0096}
    with_loss = collapse_verdict(**case, loss=6.931, uniform_loss_value=math.log(1024))
    assert with_loss.collapsed == "complete" and len(with_loss.reasons) == 3
    assert any("uniform-output value 6.931" in r for r in with_loss.reasons)
    assert collapse_verdict(**case).collapsed == "partial"  # the embeddings alone
    assert with_loss.signals["healthy_std"] == pytest.approx(0.0722, abs=1e-4)
    # a loss at ln(K) with healthy embeddings is a warning (partial), a loss well below it is nothing
    healthy = {"rankme_value": 60.0, "dim": 192, "n": 780, "std": 0.05}
    assert collapse_verdict(**healthy, loss=6.89, uniform_loss_value=math.log(1024)).collapsed == "partial"
    assert collapse_verdict(**healthy, loss=4.2, uniform_loss_value=math.log(1024)).collapsed == "no"


def test_uniform_loss_is_read_from_a_dino_card_only():
    assert uniform_loss("dino", {"out_dim": 1024}, {"loss_dino": 6.93}) == (6.93, pytest.approx(math.log(1024)))
    assert uniform_loss("dino", {"out_dim": 1024}, {"loss": 6.9}) == (6.9, pytest.approx(math.log(1024)))
    assert uniform_loss("dino", {"out_dim": 1024, "ibot": True}, {"loss": 6.9}) is None  # loss holds iBOT too
    assert uniform_loss("mae", {"out_dim": 1024}, {"loss": 0.5}) is None
    assert uniform_loss("dino", {"out_dim": 1024}, {}) is None


def test_pretrain_warns_when_dino_ends_at_uniform_outputs():
    """What `pretextlab pretrain` prints at the end of a run whose DINO loss sits at ln(out_dim)."""
    warning = uniform_output_warning("dino", {"out_dim": 1024}, {"loss": 6.92, "step": 250})
    assert warning is not None and "6.931" in warning and "6.92" in warning
    assert uniform_output_warning("dino", {"out_dim": 1024}, {"loss": 6.8}) is None  # 1.9 % below: learning
    assert uniform_output_warning("dino", {"out_dim": 256}, {"loss": 6.92}) is None  # ln 256 = 5.55
    assert uniform_output_warning("simclr", {"out_dim": 1024}, {"loss": 6.92}) is None
