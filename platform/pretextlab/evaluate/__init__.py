"""Frozen-feature evaluation of saved encoders: kNN, linear probe, few-shot, metrics with CIs, diagnostics,
paired comparisons between arms (``stats``) and localisation against ROI masks (``localisation``).

Pure computation (PyTorch, scikit-learn, NumPy), no Ray: the evaluate job and the study runner call it.

    from pretextlab.evaluate import EvaluateConfig, evaluate_encoder, render_table
    result = evaluate_encoder("runs/dino/encoder", "/data/stores/liver", EvaluateConfig(shots=[1, 5]))
    print(render_table(result))
"""

from pretextlab.evaluate.compare import ArmComparison, compare_arms
from pretextlab.evaluate.dataset import EvalSet, load_eval_set
from pretextlab.evaluate.diagnostics import (
    COLLAPSE_THRESHOLD,
    CollapseVerdict,
    alignment,
    collapse_verdict,
    diagnostics,
    embedding_std,
    is_collapsed,
    rankme,
    uniform_loss,
    uniform_output_warning,
    uniformity,
)
from pretextlab.evaluate.feature_maps import (
    anchor_similarity,
    cls_attention_maps,
    patch_tokens,
    pca_rgb,
    save_feature_maps,
)
from pretextlab.evaluate.features import embed_images, extract_features, preprocess
from pretextlab.evaluate.fewshot import FewShotResult, few_shot
from pretextlab.evaluate.knn import knn_predict
from pretextlab.evaluate.linear import LinearProbeResult, linear_probe
from pretextlab.evaluate.localisation import LocalisationResult, localisation_scores, localise_encoder
from pretextlab.evaluate.metrics import (
    Estimate,
    accuracy,
    auroc,
    balanced_accuracy,
    classification_metrics,
    macro_f1,
)
from pretextlab.evaluate.report import EvaluateConfig, evaluate_encoder, render_table
from pretextlab.evaluate.splits import Split, make_split, split_indices
from pretextlab.evaluate.stats import (
    BootstrapCI,
    Comparison,
    McNemarResult,
    PairedDifference,
    SeedSummary,
    best_arms,
    bootstrap_ci,
    holm,
    mcnemar_exact,
    paired_bootstrap,
    pairwise,
    rank,
    seed_summary,
    verdict,
)

__all__ = [
    "COLLAPSE_THRESHOLD",
    "ArmComparison",
    "BootstrapCI",
    "CollapseVerdict",
    "Comparison",
    "Estimate",
    "EvalSet",
    "EvaluateConfig",
    "FewShotResult",
    "LinearProbeResult",
    "LocalisationResult",
    "McNemarResult",
    "PairedDifference",
    "SeedSummary",
    "Split",
    "accuracy",
    "alignment",
    "anchor_similarity",
    "auroc",
    "balanced_accuracy",
    "best_arms",
    "bootstrap_ci",
    "classification_metrics",
    "cls_attention_maps",
    "collapse_verdict",
    "compare_arms",
    "diagnostics",
    "embed_images",
    "embedding_std",
    "evaluate_encoder",
    "extract_features",
    "few_shot",
    "holm",
    "is_collapsed",
    "knn_predict",
    "linear_probe",
    "load_eval_set",
    "localisation_scores",
    "localise_encoder",
    "macro_f1",
    "make_split",
    "mcnemar_exact",
    "paired_bootstrap",
    "pairwise",
    "patch_tokens",
    "pca_rgb",
    "preprocess",
    "rank",
    "rankme",
    "render_table",
    "save_feature_maps",
    "seed_summary",
    "split_indices",
    "uniform_loss",
    "uniform_output_warning",
    "uniformity",
    "verdict",
]
