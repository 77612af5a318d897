"""Statistics for comparing arms: cluster bootstrap, paired bootstrap, Holm, McNemar, verdicts (all fast, no Ray).

Oracles: hand computations, Holm's step-down procedure written out independently, scipy's binomtest,
scikit-learn's metrics on explicitly expanded resamples, and coverage of known truths in simulation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from pretextlab.evaluate.metrics import ResampledMetric, classification_metrics
from pretextlab.evaluate.resample import bootstrap_counts, group_index
from pretextlab.evaluate.stats import (
    PairedDifference,
    best_arms,
    bootstrap_ci,
    bootstrap_p_value,
    holm,
    mcnemar_exact,
    paired_bootstrap,
    pairwise,
    rank,
    seed_summary,
    verdict,
)

# ---------------------------------------------------------------- Holm


def test_holm_matches_a_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # capped by the running max, and at 1 below
    assert holm([0.9, 0.8, 0.7]) == pytest.approx([1.0, 1.0, 1.0])
    out = holm([0.02, float("nan"), 0.01])  # NaN stays out of the family (m = 2)
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def _step_down_rejections(p: np.ndarray, alpha: float) -> set[int]:
    """Holm (1979) as written: reject H_(1), H_(2), ... while p_(i) <= alpha / (m - i + 1); stop at the
    first failure."""
    order = np.argsort(p, kind="stable")
    rejected = set()
    for i, j in enumerate(order):
        if p[j] > alpha / (len(p) - i):
            break
        rejected.add(int(j))
    return rejected


def test_holm_adjusted_p_values_reproduce_the_step_down_test():
    rng = np.random.default_rng(0)
    for _ in range(200):
        m = int(rng.integers(1, 12))
        p = np.where(rng.random(m) < 0.5, rng.random(m) * 0.05, rng.random(m))
        adj = np.array(holm(p))
        assert np.all(adj >= p - 1e-15) and np.all(adj <= 1)
        for alpha in (0.001, 0.01, 0.05, 0.1, 0.2):
            assert {int(i) for i in np.flatnonzero(adj <= alpha)} == _step_down_rejections(p, alpha)


# ---------------------------------------------------------------- McNemar, seeds


def test_mcnemar_exact_equals_scipy_binomtest():
    rng = np.random.default_rng(1)
    for a_only, b_only, both in [(0, 0, 5), (3, 0, 10), (7, 2, 40), (15, 15, 3), (1, 20, 0), (40, 25, 100)]:
        a = np.r_[np.ones(a_only), np.zeros(b_only), np.ones(both), np.zeros(9)].astype(bool)
        b = np.r_[np.zeros(a_only), np.ones(b_only), np.ones(both), np.zeros(9)].astype(bool)
        perm = rng.permutation(len(a))
        res = mcnemar_exact(a[perm], b[perm])
        assert (res.a_only, res.b_only, res.n) == (a_only, b_only, a_only + b_only)
        expected = 1.0 if a_only + b_only == 0 else binomtest(a_only, a_only + b_only, 0.5).pvalue
        assert res.p_value == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact([1, 1, 0], [0, 1, 1]).to_dict() == {"a_only": 1, "b_only": 1, "n": 2, "p_value": 1.0}


def test_seed_summary_is_mean_and_sample_sd():
    s = seed_summary([0.70, 0.74, 0.72])
    assert s.mean == pytest.approx(0.72) and s.sd == pytest.approx(0.02) and s.n == 3
    assert seed_summary([0.5]).sd == 0.0 and "0.720 ± 0.020" in str(s)


# ---------------------------------------------------------------- resampling machinery


def test_grouped_metric_resamples_equal_sklearn_on_the_expanded_rows():
    """Each cluster-bootstrap resample's metric equals sklearn's on the rows it stands for (groups repeated)."""
    rng = np.random.default_rng(2)
    groups = np.repeat([f"P{i}" for i in range(12)], rng.integers(1, 6, 12))
    n = len(groups)
    y = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n)
    probs[:4] = probs[4]  # some tied scores
    pred = probs.argmax(axis=1)
    grp = group_index(groups, n)
    assert grp.unit == "group" and grp.count == 12 and grp.sizes.sum() == n
    members = [np.flatnonzero(grp.ids == g) for g in range(grp.count)]
    counts = next(bootstrap_counts(grp.count, 25, np.random.default_rng(3)))
    assert counts.shape == (25, 12) and np.all(counts.sum(axis=1) == 12)
    bal = ResampledMetric("balanced_accuracy", y, pred, groups=grp)(counts)
    f1 = ResampledMetric("macro_f1", y, pred, num_classes=3, groups=grp)(counts)
    auc = ResampledMetric("auroc", y, probs=probs, num_classes=3, groups=grp)(counts)
    for b in range(25):
        rows = np.concatenate([np.tile(members[g], c) for g, c in enumerate(counts[b])])
        assert bal[b] == pytest.approx(balanced_accuracy_score(y[rows], pred[rows]))
        assert f1[b] == pytest.approx(f1_score(y[rows], pred[rows], average="macro"))
        if len(np.unique(y[rows])) == 3:
            assert auc[b] == pytest.approx(roc_auc_score(y[rows], probs[rows], multi_class="ovr"))
        else:
            assert math.isnan(auc[b])


def test_one_row_per_group_is_the_row_bootstrap_and_groups_are_reported():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    pred = np.where(rng.random(80) < 0.8, y, 1 - y)
    plain = classification_metrics(y, pred, n_boot=300, seed=5)
    singletons = classification_metrics(y, pred, n_boot=300, seed=5, groups=np.arange(80))
    assert plain["accuracy"] == singletons["accuracy"] and plain["accuracy"].unit == "sample"
    grouped = classification_metrics(y, pred, n_boot=300, seed=5, groups=np.arange(80) // 8)
    assert grouped["accuracy"].unit == "group" and grouped["accuracy"].n_units == 10
    assert grouped["accuracy"].value == plain["accuracy"].value
    assert grouped["accuracy"].note is None
    three = classification_metrics(y, pred, n_boot=300, groups=np.arange(80) % 3)["accuracy"]
    assert "only 3 group(s)" in three.note and three.low <= three.value <= three.high
    one = classification_metrics(y, pred, n_boot=300, groups=np.zeros(80))["accuracy"]
    assert "one group" in one.note and math.isnan(one.low) and one.value == plain["accuracy"].value
    with pytest.raises(ValueError, match="groups has 3 entries"):
        classification_metrics(y, pred, groups=[1, 2, 3])


# ---------------------------------------------------------------- coverage


def test_cluster_bootstrap_covers_where_the_row_bootstrap_falls_short():
    """30 groups x 10 rows with intra-class correlation 0.8: the cluster CI covers the true mean ~95 %,
    the row CI (which takes 300 correlated rows for independent ones) far less."""
    rng = np.random.default_rng(6)
    sims, groups = 200, np.repeat(np.arange(30), 10)
    hits = {"group": 0, "sample": 0}
    widths = {"group": [], "sample": []}
    for s in range(sims):
        x = 2.0 * rng.normal(size=30)[groups] + rng.normal(size=300)  # true mean 0; ICC = 4 / 5
        for unit, g in (("group", groups), ("sample", None)):
            est = bootstrap_ci(x, g, n_boot=400, seed=s)
            assert est.unit == unit and est.n_units == (30 if g is not None else 300)
            hits[unit] += est.low <= 0.0 <= est.high
            widths[unit].append(est.high - est.low)
    cover = {k: v / sims for k, v in hits.items()}
    assert 0.88 <= cover["group"] <= 0.99, cover
    assert cover["sample"] <= 0.70, cover
    assert np.mean(widths["group"]) > 2 * np.mean(widths["sample"])


def test_paired_bootstrap_ci_covers_a_known_difference():
    """Arms share a per-item difficulty; the true difference of means is 0.3. The paired 95 % CI covers it
    ~95 % of the time, and it is much narrower than CIs that ignore the pairing."""
    rng = np.random.default_rng(7)
    sims, n, delta = 200, 200, 0.3
    covered, p_small, widths, unpaired = 0, 0, [], []
    for s in range(sims):
        difficulty = rng.normal(size=n) * 2
        a = delta + difficulty + rng.normal(size=n) * 0.5
        b = difficulty + rng.normal(size=n) * 0.5
        d = paired_bootstrap(a, b, n_boot=500, seed=s)
        assert d.difference == pytest.approx(a.mean() - b.mean()) and d.unit == "sample"
        covered += d.low <= delta <= d.high
        p_small += d.p_value < 0.05
        widths.append(d.high - d.low)
        ca, cb = bootstrap_ci(a, n_boot=500, seed=s), bootstrap_ci(b, n_boot=500, seed=s + 10_000)
        unpaired.append(math.hypot(ca.high - ca.low, cb.high - cb.low))
    assert 0.90 <= covered / sims <= 0.99
    assert p_small / sims > 0.95  # the effect (~4 SE) is found
    assert np.mean(widths) < np.mean(unpaired) / 3


def test_paired_bootstrap_null_difference_gives_uniform_ish_p_values():
    rng = np.random.default_rng(8)
    ps = []
    for s in range(200):
        difficulty = rng.normal(size=150)
        ps.append(
            paired_bootstrap(
                difficulty + rng.normal(size=150), difficulty + rng.normal(size=150), n_boot=400, seed=s
            ).p_value
        )
    ps = np.array(ps)
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10 and 0.4 <= np.mean(ps < 0.5) <= 0.6


def test_paired_bootstrap_of_a_classification_metric_with_groups():
    rng = np.random.default_rng(9)
    groups = np.repeat(np.arange(40), 5)
    y = rng.integers(0, 2, 200)
    good = np.where(rng.random(200) < 0.9, y, 1 - y)
    bad = np.where(rng.random(200) < 0.6, y, 1 - y)
    d = paired_bootstrap(good, bad, groups, "balanced_accuracy", y, n_boot=500, arm_a="dino", arm_b="mae")
    assert d.unit == "group" and d.n_units == 40 and d.n_samples == 200
    assert d.difference == pytest.approx(balanced_accuracy_score(y, good) - balanced_accuracy_score(y, bad))
    assert d.low <= d.difference <= d.high and d.low > 0 and d.p_value < 0.01
    assert verdict(d).verdict == "A > B" and verdict(d).sentence.startswith("dino > mae on balanced_accuracy")
    same = paired_bootstrap(good, good, groups, "accuracy", y, n_boot=200)
    assert same.difference == 0 and same.low == same.high == 0 and verdict(same).verdict == "tie"
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(good, bad[:-1])
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(good, bad, metric="median")


# ---------------------------------------------------------------- verdicts


def _diff(p: float, delta: float, a: str = "A", b: str = "B") -> PairedDifference:
    return PairedDifference(
        "accuracy", a, b, 0.5 + delta, 0.5, delta, delta - 0.01, delta + 0.01, p, 0.95, 1000, "group", 30, 300
    )


def test_verdicts_say_greater_only_when_the_holm_corrected_difference_excludes_zero():
    assert verdict(_diff(0.01, 0.05)).verdict == "A > B"
    assert verdict(_diff(0.01, -0.05)).verdict == "B > A"
    assert verdict(_diff(0.20, 0.05)).verdict == "tie"
    # three comparisons at p = 0.02: each is "significant" alone, none after Holm (0.02 * 3 = 0.06)
    family = rank([_diff(0.02, 0.05, "A", "B"), _diff(0.02, 0.04, "A", "C"), _diff(0.02, -0.03, "B", "C")])
    assert [c.verdict for c in family] == ["tie", "tie", "tie"]
    assert [c.difference.p_holm for c in family] == pytest.approx([0.06, 0.06, 0.06])
    family = rank([_diff(0.001, 0.05), _diff(0.02, -0.04), _diff(0.6, 0.01)])
    assert [c.verdict for c in family] == ["A > B", "B > A", "tie"]  # 0.003, 0.04, 0.6
    assert "Holm p = 0.003" in family[0].sentence and family[2].to_dict()["verdict"] == "tie"


def test_pairwise_ranks_all_arms_on_shared_resamples():
    rng = np.random.default_rng(10)
    groups = np.repeat(np.arange(60), 4)
    y = rng.integers(0, 3, 240)
    arms = {
        name: np.where(rng.random(240) < acc, y, (y + 1) % 3)
        for name, acc in (("strong", 0.9), ("strong-too", 0.9), ("weak", 0.5))
    }
    comps = pairwise(arms, groups, "accuracy", y, n_boot=500)
    got = {(c.arm_a, c.arm_b): c.verdict for c in comps}
    assert got[("strong", "weak")] == "A > B" and got[("strong-too", "weak")] == "A > B"
    assert got[("strong", "strong-too")] == "tie" and best_arms(comps) == ["strong", "strong-too"]
    assert best_arms(rank([_diff(0.001, -0.05, "x", "y"), _diff(0.5, 0.01, "x", "z")])) == ["y", "z"]
    assert all(c.difference.p_holm is not None and c.difference.unit == "group" for c in comps)
    # p-value <-> CI duality: a difference whose CI excludes 0 has a small p
    for c in comps:
        d = c.difference
        assert (d.p_value < 0.05) == (d.low > 0 or d.high < 0) or abs(d.p_value - 0.05) < 0.01
    assert bootstrap_p_value(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 4)
