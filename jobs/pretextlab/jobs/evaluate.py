"""Evaluate a saved encoder's frozen features on a labelled catalog: kNN, linear probe, few-shot, diagnostics.

    pretextlab evaluate ENCODER DATASET [--registry ROOT] [--out results.json] [--label-column label]
                        [--k 20] [--shots 1,5] [--feature-maps DIR] [--config eval.yaml] [--set key=value]

ENCODER is an encoder folder (model.safetensors + card.json) or, with --registry, a registry address
(name, name:version, chosen:<modality>); DATASET is a store with a labelled catalog. Prints a table
(metrics with 95% bootstrap CIs) and writes the full result as JSON, by default to
ENCODER/eval-<dataset-name>.json, or for a registry address (registered versions are never
changed) to ./evals/<name>/<version>/eval-<dataset-name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pretextlab.core.errors import UserError
from pretextlab.modalities import list_modalities


def _shots(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,5,10 (got {text!r})") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"shot counts must be integers >= 1 (got {text!r})")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "encoder",
        metavar="ENCODER",
        help="encoder folder (model.safetensors + card.json), or a registry address with --registry",
    )
    parser.add_argument(
        "--registry",
        metavar="ROOT",
        help="encoder registry root (local or s3://): ENCODER is then name, name:version or chosen:<modality>",
    )
    parser.add_argument("dataset", metavar="DATASET", help="store with a labelled catalog (local folder or s3://)")
    parser.add_argument("--out", metavar="JSON", help="result file (default: ENCODER/eval-<dataset-name>.json)")
    parser.add_argument("--label-column", help="catalog column holding the class (default: label)")
    parser.add_argument("--k", type=int, help="neighbours of the weighted kNN (default: 20)")
    parser.add_argument("--shots", type=_shots, metavar="N,N,...", help="few-shot examples per class (default: 1,5,10)")
    parser.add_argument("--repeats", type=int, help="few-shot repeats per shot count (default: 5)")
    parser.add_argument("--fewshot-method", choices=["linear", "knn"], help="few-shot classifier (default: linear)")
    parser.add_argument("--modality", choices=list_modalities(), help="only rows of this modality")
    parser.add_argument("--feature-maps", metavar="DIR", help="write attention/PCA/similarity PNGs of a test image")
    parser.add_argument(
        "--no-localisation",
        dest="localisation",
        action="store_false",
        default=None,
        help="do not score feature maps against the catalog's ROI masks (column 'roi')",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--config", metavar="YAML", help="evaluate config file (fields of EvaluateConfig)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set n_bootstrap=200 (repeatable)",
    )


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "label_column": "label_column",
        "k": "k",
        "shots": "shots",
        "repeats": "fewshot_repeats",
        "fewshot_method": "fewshot_method",
        "modality": "modality",
        "feature_maps": "feature_maps",
        "localisation": "localisation",
        "device": "device",
    }
    return {field: getattr(args, attr) for attr, field in names.items() if getattr(args, attr, None) is not None}


def _encoder_folder(encoder: str, registry: str | None):
    """(local folder to load, default folder of the result, registry ref or None)."""
    if registry:
        from pretextlab.registry import EncoderRegistry

        reg = EncoderRegistry(registry)
        ref = reg.resolve(encoder)  # RegistryError (a UserError) names what the registry holds
        return reg.local_folder(ref), Path("evals") / ref.name / ref.version, ref
    folder = Path(encoder)
    if not folder.exists():
        raise UserError(f"{encoder}: no such encoder folder (for a registry address, give --registry ROOT)")
    return folder, folder, None


def run(args: argparse.Namespace) -> int:
    # Heavy imports (torch, timm, scikit-learn) only when the command runs, so `pretextlab --help` stays quick.
    from pretextlab.core.config import load_config
    from pretextlab.evaluate import EvaluateConfig, evaluate_encoder, render_table
    from pretextlab.evaluate.report import dataset_name

    cfg = load_config(EvaluateConfig, args.config, args.overrides, flags=_flags(args))
    encoder, default_dir, ref = _encoder_folder(args.encoder, args.registry)
    result = evaluate_encoder(encoder, args.dataset, cfg)
    if ref is not None:
        result["encoder_ref"] = {"id": ref.id, "registry": args.registry, "uri": ref.uri}
    out = Path(args.out) if args.out else default_dir / f"eval-{dataset_name(args.dataset)}.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=1, allow_nan=False))
        tmp.replace(out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the result ({exc.strerror or exc})") from None
    print(render_table(result))
    if result.get("feature_maps"):
        print(f"feature maps: {len(result['feature_maps'])} PNGs in {Path(result['feature_maps'][0]).parent}")
    print(f"result: {out}")
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.jobs.evaluate"))
