"""Why DINO sits at ln(out_dim) at laptop scale: ours vs lightly's DINO on the same data, views and budget.

    python benchmarks/dino_small_scale.py [--steps 250] [--arm ours] [--arm lightly]
        [--arm "ours momentum=0.95"] [--arm "ours teacher_temp=0.04 warmup_teacher_temp_fraction=0"] ...
        [--items 800] [--locality 0] [--noise 0.5] [--out .bench/dino_small_scale.json]

Issue 19 reported DINO ending 250-step runs at loss 6.93 with out_dim 1024 (ln 1024 = 6.931). This runs
the repository's ultrasound DINO config (configs/pretrain/us-dino.yaml: ViT-Tiny depth 4, 64 px, patch 8,
out_dim 1024, hidden 512, 2 global + 4 local crops, batch 32, lr 5e-4 with 20 warm-up steps) on
controlled-benchmark ultrasound phantoms (``pretextlab bench-data``'s generator, random init near chance)
and, side by side on the same view batches, lightly 1.6's ``DINOProjectionHead`` + ``DINOLoss`` on a timm
ViT of the same shape wired as lightly's examples/pytorch/dino.py does (EMA momentum cosine 0.996 -> 1).

Per arm: the loss over the last 20 steps as a share of ln(out_dim); the teacher's mean per-sample output
entropy over ln(out_dim) (1.0 = every teacher output uniform); the EMA teacher's remaining share of its
random initialisation, prod_t m_t (the weight the teacher still puts on its starting weights; DINO's
full ImageNet schedule ends near 0); and kNN balanced accuracy (k = 20, cosine) with a 95 % bootstrap
CI of the teacher (the encoder DINO keeps) and the student on held-out phantoms, against random init.

An arm ``ours key=value ...`` changes only those settings: ``lr``, ``momentum`` and ``momentum_end`` go
to the schedule (EMA momentum cosine from ``momentum`` to ``momentum_end``), anything else to DINO's
config (``out_dim``, ``teacher_temp``, ``centering``, ...). An arm ``simclr`` (or any other objective name,
with the same ``key=value`` changes) trains that objective on the modality's ``pair`` views with the same
encoder, batch and schedule: a reference for whether the task is learnable by any pretext objective at this
budget. ``--modality histology`` runs on H&E phantoms (3 channels) instead of ultrasound; ``--data background``
on benchmarks/learning.py's near-chance blobs-vs-stripes set (over a strong smooth background) at 64 px.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import compare, print_figures, write_results  # noqa: E402
from pretextlab.evaluate.diagnostics import rankme  # noqa: E402
from pretextlab.evaluate.features import extract_features  # noqa: E402
from pretextlab.evaluate.knn import knn_predict  # noqa: E402
from pretextlab.evaluate.metrics import classification_metrics  # noqa: E402
from pretextlab.modalities import create_views  # noqa: E402
from pretextlab.models.vit import encode_tokens  # noqa: E402
from pretextlab.objectives import ScheduleConfig, create_objective  # noqa: E402
from pretextlab.objectives.schedules import Schedules  # noqa: E402
from pretextlab.phantoms import generate  # noqa: E402
from pretextlab.training import Trainer  # noqa: E402

SIZE, PATCH, DEPTH, OUT_DIM, HIDDEN, BATCH, N_LOCAL = 64, 8, 4, 1024, 512, 32, 4
#: phantom generator -> (views modality, channels)
MODALITY = {"ultrasound": ("ultrasound", 1), "histology": ("histopathology", 3)}


def teacher_init_share(steps: int, start: float, end: float = 1.0) -> float:
    """prod_t m_t of the cosine EMA schedule: the weight the teacher keeps on its initial weights."""
    sched = Schedules(ScheduleConfig(momentum=start, momentum_end=end), steps)
    return float(math.exp(sum(math.log(max(sched.momentum(t), 1e-12)) for t in range(steps))))


def features(encoder: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """The evaluation path's features (the phantom controls' normalisation); the encoder goes back to training."""
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25
    out = extract_features(encoder, x, batch_size=128, device="cpu")
    encoder.train()
    return out


def knn_score(encoder: torch.nn.Module, train, test) -> dict:
    ftr, fte = features(encoder, train[0]), features(encoder, test[0])
    preds, _ = knn_predict(ftr, torch.from_numpy(train[1]), fte, k=20)
    est = classification_metrics(test[1], np.asarray(preds), None, num_classes=2, n_boot=1000, seed=0)[
        "balanced_accuracy"
    ]
    return {
        "bal_acc": round(est.value, 4),
        "ci": [round(est.low, 4), round(est.high, 4)],
        "rankme": round(rankme(fte), 1),
    }


def view_batches(views, images: np.ndarray, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (BATCH,), generator=g).numpy()
        yield views({"images": torch.from_numpy(images[idx]).permute(0, 3, 1, 2)}, g)


def entropy_share(logits: torch.Tensor, center: torch.Tensor, temp: float) -> float:
    p = torch.softmax((logits - center) / temp, dim=-1)
    return float((-(p * torch.log(p.clamp_min(1e-12))).sum(-1)).mean() / math.log(logits.shape[-1]))


SCHEDULE_KEYS = {"lr", "momentum", "momentum_end"}


def backbone(in_chans: int) -> dict:
    return {"arch": "vit_tiny", "img_size": SIZE, "patch_size": PATCH, "in_chans": in_chans, "depth": DEPTH}


def start(name: str, changes: dict, in_chans: int, steps: int, train, test, **defaults):
    """(objective, trainer, random-init kNN score): ``changes`` split between the schedule and the objective's
    config (over ``defaults``), seeded alike for every arm."""
    torch.manual_seed(0)
    sched = {"lr": 5e-4, "warmup_steps": 20, **{k: v for k, v in changes.items() if k in SCHEDULE_KEYS}}
    extra = {**defaults, **{k: v for k, v in changes.items() if k not in SCHEDULE_KEYS}}
    obj = create_objective(name, backbone=backbone(in_chans), **extra)
    before = knn_score(obj.encoder(), train, test)
    return obj, Trainer(obj, ScheduleConfig(**sched), total_steps=steps), before


def run_other(name: str, views, train, test, steps: int, changes: dict, in_chans: int) -> dict:
    """Any other objective on pair views, same encoder, batch and schedule (the learnability reference)."""
    obj, trainer, before = start(name, changes, in_chans, steps, train, test)
    losses = [trainer.step(batch).loss for batch in view_batches(views, train[0], steps, 1)]
    return {
        "random_init": before,
        "encoder": knn_score(obj.encoder(), train, test),
        "loss_last20": round(float(np.mean(losses[-20:])), 4),
    }


def run_ours(views, train, test, steps: int, changes: dict, in_chans: int) -> dict:
    obj, trainer, before = start("dino", changes, in_chans, steps, train, test, out_dim=OUT_DIM, hidden_dim=HIDDEN)
    out_dim = obj.cfg.out_dim
    losses, ent = [], []
    for i, batch in enumerate(view_batches(views, train[0], steps, 1)):
        out = trainer.step(batch)
        losses.append(out.metrics.get("loss_dino", out.loss))
        if i >= steps - 20:
            with torch.no_grad():
                g = torch.cat(batch["global"])
                t = obj.teacher_head(encode_tokens(obj.teacher_backbone, g)[:, 0]).float()
                ent.append(entropy_share(t, obj.center, obj.teacher_temperature()))
    return {
        "random_init": before,
        "teacher": knn_score(obj.teacher_backbone, train, test),
        "student": knn_score(obj.backbone, train, test),
        "loss_share_of_lnK": round(float(np.mean(losses[-20:])) / math.log(out_dim), 4),
        "teacher_entropy_share": round(float(np.mean(ent)), 4),
        "teacher_init_share": round(
            teacher_init_share(steps, trainer.schedules.cfg.momentum, trainer.schedules.cfg.momentum_end), 3
        ),
    }


def run_lightly(views, train, test, steps: int, in_chans: int) -> dict:
    """lightly's examples/pytorch/dino.py, on a timm ViT of our shape (1 channel)."""
    import timm
    from lightly.loss import DINOLoss
    from lightly.models.modules.heads import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    torch.manual_seed(0)
    kw = dict(img_size=SIZE, patch_size=PATCH, in_chans=in_chans, depth=DEPTH, num_classes=0, dynamic_img_size=True)
    student = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)
    s_head = DINOProjectionHead(student.embed_dim, HIDDEN, 256, OUT_DIM, freeze_last_layer=1)
    teacher, t_head = (
        copy.deepcopy(student),
        DINOProjectionHead(student.embed_dim, HIDDEN, 256, OUT_DIM),
    )  # as the example
    deactivate_requires_grad(teacher)
    deactivate_requires_grad(t_head)
    before = knn_score(teacher, train, test)
    # lightly's example: warm-up of the teacher temperature over the first epochs; here over 30 % of steps
    crit = DINOLoss(output_dim=OUT_DIM, warmup_teacher_temp_epochs=int(0.3 * steps))
    params = list(student.parameters()) + list(s_head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.04)
    losses, ent = [], []
    for i, batch in enumerate(view_batches(views, train[0], steps, 1)):
        lr = 5e-4 * min(1.0, (i + 1) / 20)
        for group in opt.param_groups:
            group["lr"] = lr
        m = cosine_schedule(i, steps, 0.996, 1.0)
        update_momentum(student, teacher, m)
        update_momentum(s_head, t_head, m)
        with torch.no_grad():
            t_out = [t_head(teacher(v)) for v in batch["global"]]
        s_out = [s_head(student(v)) for v in batch["global"] + batch["local"]]
        loss = crit(t_out, s_out, epoch=i)
        opt.zero_grad()
        loss.backward()
        s_head.cancel_last_layer_gradients(current_epoch=i)  # lightly freezes the last layer for one 'epoch'
        opt.step()
        losses.append(float(loss.detach()))
        if i >= steps - 20:
            temp = crit.teacher_temp_schedule[i] if i < crit.warmup_teacher_temp_epochs else crit.teacher_temp
            ent.append(entropy_share(torch.cat(t_out), crit.center[0], float(temp)))
    return {
        "random_init": before,
        "teacher": knn_score(teacher, train, test),
        "student": knn_score(student, train, test),
        "loss_share_of_lnK": round(float(np.mean(losses[-20:])) / math.log(OUT_DIM), 4),
        "teacher_entropy_share": round(float(np.mean(ent)), 4),
        "teacher_init_share": round(teacher_init_share(steps, 0.996), 3),
    }


def _value(kv: str) -> tuple[str, object]:
    key, _, text = kv.partition("=")
    try:
        return key, float(text) if "." in text or "e" in text else int(text)
    except ValueError:
        return key, text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--arm", action="append", help="'ours [key=value ...]' or 'lightly' (repeatable)")
    p.add_argument("--modality", choices=sorted(MODALITY), default="ultrasound")
    p.add_argument(
        "--data",
        choices=["phantoms", "background"],
        default="phantoms",
        help="controlled-benchmark phantoms, or benchmarks/learning.py's near-chance 'background' set at 64 px",
    )
    p.add_argument("--items", type=int, default=800)
    p.add_argument("--locality", type=float, default=0.0)
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--out", default=".bench/dino_small_scale.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.data == "background":
        from learning import VARIANTS, variant_set

        rgb = args.modality == "histology"
        train = variant_set(args.items, 0, rgb, *VARIANTS["background"], size=SIZE)
        test = variant_set(400, 2, rgb, *VARIANTS["background"], size=SIZE)
    else:
        tr = generate(args.modality, n=args.items, size=SIZE, locality=args.locality, noise=args.noise, seed=0)
        te = generate(args.modality, n=400, size=SIZE, locality=args.locality, noise=args.noise, seed=2)
        train, test = (tr.images, tr.labels), (te.images, te.labels)
    vmod, chans = MODALITY[args.modality]
    views = create_views(vmod, "multicrop", size=SIZE, global_size=SIZE, local_size=SIZE // 2, n_local=N_LOCAL)
    pair = create_views(vmod, "pair", size=SIZE)
    rows = []
    for arm in args.arm or ["ours", "lightly"]:
        t0 = time.perf_counter()
        name, changes = arm.split()[0], dict(_value(kv) for kv in arm.split()[1:])
        if name == "lightly":
            r = run_lightly(views, train, test, args.steps, chans)
        elif name == "ours":
            r = run_ours(views, train, test, args.steps, changes, chans)
        else:
            r = run_other(name, pair, train, test, args.steps, changes, chans)
        r = {"arm": arm, "steps": args.steps, **r, "seconds": round(time.perf_counter() - t0, 1)}
        print(r, flush=True)
        rows.append(r)
    figures = []
    for r in rows:
        kept = r.get("teacher", r.get("encoder"))
        note = f"loss {r['loss_share_of_lnK']} ln K" if "loss_share_of_lnK" in r else ""
        figures.append(
            compare(
                f"{r['arm']}: kNN balanced accuracy after {r['steps']} steps ({args.data}, {args.modality})",
                "balanced accuracy",
                [kept["bal_acc"]],
                "the same encoder at random init",
                [r["random_init"]["bal_acc"]],
                note=f"95 % CI {kept['ci']} vs {r['random_init']['ci']}; {note}".rstrip("; "),
            )
        )
    write_results("dino_small_scale", figures, out=args.out, rows=rows, settings=vars(args))
    print_figures(figures)


if __name__ == "__main__":
    main()
