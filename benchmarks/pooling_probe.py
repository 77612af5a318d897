"""Does the pooling of patch tokens change what a frozen probe reads? The finished cells of a study, re-read.

    python benchmarks/pooling_probe.py bench-data/studies/bench-2000-300 [--registry bench-data/registry]
        [--size 64] [--out .bench/pooling_probe.json]

A study evaluates each encoder's pooled embedding (the card's ``global_pool``: the CLS token or the mean
of the patch tokens). When the label lives in a few small structures (the controlled benchmark's
atypical nuclei, ``bench-data --locality 1``), a mean over 64 patch tokens can dilute what an encoder
found; the question is whether another pooling of the same frozen tokens shows learning that the study's
figures hide, and whether random init reads the label through it too (the benchmark's random-init
ceiling is defined on the platform's embedding).

For every finished cell (random init included) of the study: the encoder's tokens on the dataset's
stored split, as the encoder embeds them (its card's pooling: the figure the study reported) and pooled
four ways (CLS token; mean, max of the patch tokens; CLS and mean concatenated; before any norm that
follows the pool),
then the study's own evaluations: a class-balanced linear probe with ``C`` chosen on the validation
split, and kNN (k = 20, cosine, train + validation as the memory); balanced accuracy on the test split
with a 95 % bootstrap CI (``classification_metrics``). Prints a Markdown table; writes the JSON.
Analysis, not a timing: nothing here is compared against an anchor.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, write_results

POOLS = ("card", "cls", "mean", "max", "cls+mean")


def pooled(model: torch.nn.Module, tokens: torch.Tensor, prefix: int) -> dict[str, np.ndarray]:
    """(N, prefix + P, D) tokens (``forward_features``) -> each pooling's (N, D') features; ``card``
    is the encoder's own embedding (timm's ``forward_head``: its ``global_pool`` and, for ``avg``, the
    norm after the pool), the one the study evaluated."""
    patches = tokens[:, prefix:]
    out = {
        "card": model.forward_head(tokens, pre_logits=True),  # type: ignore[operator]
        "cls": tokens[:, 0],
        "mean": patches.mean(1),
        "max": patches.amax(1),
        "cls+mean": torch.cat([tokens[:, 0], patches.mean(1)], 1),
    }
    return {k: v.numpy() for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", help="a study folder (its cells/*.json name the encoders)")
    ap.add_argument("--registry", default="bench-data/registry")
    ap.add_argument("--size", type=int, default=64, help="evaluation image size (the study's backbone size)")
    ap.add_argument("--out", default=str(BENCH / "pooling_probe.json"))
    args = ap.parse_args()

    from pretextlab.evaluate.dataset import load_eval_set
    from pretextlab.evaluate.knn import knn_predict
    from pretextlab.evaluate.linear import linear_probe
    from pretextlab.evaluate.metrics import classification_metrics
    from pretextlab.models.encoder_io import load_encoder, preprocess
    from pretextlab.registry.encoders import EncoderRegistry

    study = Path(args.study)
    config = json.loads((study / "study.json").read_text())["fingerprint"]["config"]
    stores = {d["name"]: d["store"] for d in config["datasets"]}
    registry = EncoderRegistry(args.registry)
    cells = sorted(
        (json.loads(p.read_text()) for p in (study / "cells").glob("*.json")),
        key=lambda c: (c["dataset"], c["arm"] != "random-init", c["arm"], c["seed"]),
    )
    rows: list[dict] = []
    sets: dict[str, object] = {}
    for cell in cells:
        if cell.get("status") != "complete" or not cell.get("encoder"):
            continue
        ds = cell["dataset"]
        if ds not in sets:
            sets[ds] = load_eval_set(stores[ds], size=args.size)
        es = sets[ds]
        split = np.asarray(es.splits).astype(str)  # type: ignore[attr-defined]
        tr, va, te = split == "train", split == "val", split == "test"
        y = es.labels  # type: ignore[attr-defined]
        model, card = load_encoder(registry.local_folder(registry.resolve(cell["encoder"])))
        model.eval()
        with torch.inference_mode():
            tokens = torch.cat(
                [
                    model.forward_features(preprocess(es.images[s : s + 256], card)).float()  # type: ignore[attr-defined]
                    for s in range(0, len(y), 256)
                ]
            )
            feats = pooled(model, tokens, int(getattr(model, "num_prefix_tokens", 1)))
        for pool, f in feats.items():
            lin = linear_probe(f[tr], y[tr], f[te], f[va], y[va], num_classes=es.num_classes)  # type: ignore[attr-defined]
            knn, _ = knn_predict(f[tr | va], y[tr | va], f[te], num_classes=es.num_classes)  # type: ignore[attr-defined]
            m_lin = classification_metrics(y[te], lin.preds)["balanced_accuracy"]
            m_knn = classification_metrics(y[te], np.asarray(knn))["balanced_accuracy"]
            rows.append(
                {
                    "dataset": ds,
                    "arm": cell["arm"],
                    "seed": cell["seed"],
                    "pool": pool,
                    "linear": [m_lin.value, m_lin.low, m_lin.high],
                    "knn": [m_knn.value, m_knn.low, m_knn.high],
                    "n_test": int(te.sum()),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| dataset | arm | "
        + " | ".join(f"linear, {p}" for p in POOLS)
        + " | "
        + " | ".join(f"kNN, {p}" for p in POOLS)
        + " |"
    )
    print("|---|---|" + "---|" * (2 * len(POOLS)))
    for key in dict.fromkeys((r["dataset"], r["arm"], r["seed"]) for r in rows):
        got = {r["pool"]: r for r in rows if (r["dataset"], r["arm"], r["seed"]) == key}
        lin = [f"{got[p]['linear'][0]:.3f} [{got[p]['linear'][1]:.3f}, {got[p]['linear'][2]:.3f}]" for p in POOLS]
        knn = [f"{got[p]['knn'][0]:.3f}" for p in POOLS]
        print(f"| {key[0]} | {key[1]} | " + " | ".join(lin + knn) + " |")
    write_results("pooling_probe", [], out=args.out, rows=rows)


if __name__ == "__main__":
    main()
