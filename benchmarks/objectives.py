"""Training steps/s per objective, ViT-Tiny on the CPU, side by side with lightly's implementation of
the same objective (same timm backbone, same views, same head sizes, same batch), in one run.

    .venv/bin/python benchmarks/objectives.py                    # batch 32, 64 px, patch 8
    .venv/bin/python benchmarks/objectives.py --steps 5 --repeats 1   # quick look
    .venv/bin/python benchmarks/objectives.py \
        --objectives dino,dinov3_nogram,dinov3,ijepa,salt,lejepa,cine_jepa,cine_salt
    .venv/bin/python benchmarks/objectives.py --paired 7 --objectives ijepa,salt      # loaded machine: see run_paired()

Each (implementation, objective) runs in its own subprocess (peak PSS of its tree, MiB: benchmarks/
harness.py), ours and lightly back to back, repeats outermost. Ratio = the median over repeats of ours /
lightly steps/s (>= 1 means ours is not slower). Figures also go to .bench/objectives.json. lightly has
no cine variants; those rows report ours alone.

Issue 17's rows (ours alone; lightly has none of them): ``dinov3`` with Gram anchoring on from the
first step (DINOv3 defaults: iBOT, KoLeo, Sinkhorn-Knopp, Gram teacher at 2x), ``dinov3_nogram`` the
same without the Gram loss, so their ratio is Gram anchoring's overhead; ``salt`` / ``cine_salt`` with
a frozen teacher of the student's architecture, against ``ijepa`` / ``cine_jepa`` at the same backbone,
predictor and batch (SALT drops the EMA update and the teacher's backward is never needed); ``lejepa``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import compare, measure_child, print_figures, write_results

HERE = Path(__file__).resolve()
OBJECTIVES = [
    "dino",
    "simclr",
    "vicreg",
    "mae",
    "ijepa",
    "ijepa_same_masks",
    "cine_jepa",
    "cine_mae",
    "dinov3_nogram",
    "dinov3",
    "salt",
    "cine_salt",
    "lejepa",
]
#: ratios reported after the table: (label, numerator row, denominator row), steps/s
RATIOS = [
    ("SALT / I-JEPA", "salt", "ijepa"),
    ("cine SALT / cine JEPA", "cine_salt", "cine_jepa"),
    ("DINOv3 with Gram / without (Gram overhead)", "dinov3", "dinov3_nogram"),
    ("DINOv3 with Gram / plain DINO", "dinov3", "dino"),
    ("LeJEPA / I-JEPA", "lejepa", "ijepa"),
]
LIGHTLY = {"dino", "simclr", "vicreg", "mae", "ijepa", "ijepa_same_masks"}


def lightly_ijepa_masks(size: int, patch: int):
    """lightly's I-JEPA mask collator with our I-JEPA defaults (4 targets of scale 0.15-0.2, aspect
    0.75-1.5; one context block of scale 0.85-1.0). Like the reference (facebookresearch/ijepa
    ``src/masks/multiblock.py``) it caps a block at (H-1) x (W-1) patches and never starts one on the
    last row or column, so its context keeps fewer patches than ours (``MultiBlockMasks`` lets a block
    span the grid): at 64 px / patch 8, a median of 13 context tokens against our 22."""
    from lightly.data.ijepa_collate import IJEPAMaskCollator

    return IJEPAMaskCollator(
        input_size=size,
        patch_size=patch,
        enc_mask_scale=(0.85, 1.0),
        pred_mask_scale=(0.15, 0.2),
        aspect_ratio=(0.75, 1.5),
        nenc=1,
        npred=4,
        min_keep=4,
    )


def make_batch(name: str, b: int, size: int, g):
    import torch

    x = lambda s: torch.randn(b, 3, s, s, generator=g)
    if name.startswith("dino"):
        return {"global": [x(size), x(size)], "local": [x(size // 2) for _ in range(4)]}
    if name in ("simclr", "vicreg"):
        return {"global": [x(size), x(size)]}
    if name.startswith("cine"):
        return {"clips": torch.randn(b // 4, 3, 4, size, size, generator=g)}
    return {"images": x(size)}


def ours(name: str, size: int, patch: int):
    from pretextlab.objectives import ScheduleConfig, create_objective
    from pretextlab.training import Trainer

    kw = {"backbone": {"arch": "vit_tiny", "img_size": size, "patch_size": patch, "in_chans": 3}}
    collator = None
    if name == "ijepa_same_masks":  # ours fed lightly's masks (its data-pipeline path): equal work per step
        collator, name = lightly_ijepa_masks(size, patch), "ijepa"
    if name.startswith("dino"):
        kw.update(out_dim=4096, hidden_dim=2048, bottleneck_dim=256)
    if name.startswith("dinov3"):
        kw.update(gram=name == "dinov3", gram_start_step=0)
        name = "dinov3"
    if name == "vicreg":
        kw.update(expander_dim=2048)
    if name.startswith("cine"):
        kw["frames"] = 4
    objective = create_objective(name, **kw)
    if name in ("salt", "cine_salt"):  # a frozen teacher of the student's architecture (as I-JEPA's target)
        from pretextlab.models.vit import BackboneConfig, create_backbone

        objective.set_teacher(create_backbone(BackboneConfig(**kw["backbone"], global_pool="avg")))
    trainer = Trainer(objective, ScheduleConfig(lr=5e-4), total_steps=1000, grad_clip=None)
    if collator is not None:

        def step(batch):
            _, enc, pred = collator(list(range(len(batch["images"]))))  # drawn inside the timed step
            return trainer.step({**batch, "context_idx": enc[0], "target_idx": pred})

        return step
    return lambda batch: trainer.step(batch)


def lightly_step(name: str, size: int, patch: int):
    """lightly's modules wired as in lightly's own examples (examples/pytorch/*.py)."""
    import copy

    import timm
    import torch
    from lightly.loss import DINOLoss, NTXentLoss, VICRegLoss
    from lightly.models import utils
    from lightly.models.modules.heads import DINOProjectionHead, SimCLRProjectionHead, VICRegProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=size, patch_size=patch, num_classes=0, dynamic_img_size=True
    )
    d = vit.embed_dim
    if name == "dino":
        student_head = DINOProjectionHead(d, 2048, 256, 4096)
        teacher, teacher_head = copy.deepcopy(vit), DINOProjectionHead(d, 2048, 256, 4096)
        deactivate_requires_grad(teacher)
        deactivate_requires_grad(teacher_head)
        crit = DINOLoss(output_dim=4096, warmup_teacher_temp_epochs=0)
        params = list(vit.parameters()) + list(student_head.parameters())
        opt = torch.optim.AdamW(params, lr=5e-4)

        def step(batch):
            views = batch["global"] + batch["local"]
            with torch.no_grad():
                t_out = [teacher_head(teacher(v)) for v in batch["global"]]
            s_out = [student_head(vit(v)) for v in views]
            loss = crit(t_out, s_out, epoch=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            update_momentum(vit, teacher, 0.996)
            update_momentum(student_head, teacher_head, 0.996)

        return step
    if name in ("simclr", "vicreg"):
        head = SimCLRProjectionHead(d, 2048, 128) if name == "simclr" else VICRegProjectionHead(d, 2048, 2048, 3)
        crit = NTXentLoss(temperature=0.1) if name == "simclr" else VICRegLoss()
        opt = torch.optim.AdamW(list(vit.parameters()) + list(head.parameters()), lr=5e-4)

        def step(batch):
            v0, v1 = batch["global"]
            loss = crit(head(vit(v0)), head(vit(v1)))
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step
    if name == "mae":
        import warnings

        from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM

        warnings.filterwarnings("ignore")
        backbone = MaskedVisionTransformerTIMM(vit=vit)
        seq = backbone.sequence_length
        decoder = MAEDecoderTIMM(
            num_patches=vit.patch_embed.num_patches,
            patch_size=patch,
            embed_dim=d,
            decoder_embed_dim=192,
            decoder_depth=2,
            decoder_num_heads=3,
        )
        opt = torch.optim.AdamW(list(backbone.parameters()) + list(decoder.parameters()), lr=5e-4)
        mse = torch.nn.MSELoss()

        def step(batch):
            images = batch["images"]
            b = images.shape[0]
            idx_keep, idx_mask = utils.random_token_mask(size=(b, seq), mask_ratio=0.75, device=images.device)
            enc = backbone.encode(images=images, idx_keep=idx_keep)
            x_dec = decoder.embed(enc)
            x_masked = utils.repeat_token(decoder.mask_token, (b, seq))
            x_masked = utils.set_at_index(x_masked, idx_keep, x_dec.type_as(x_masked))
            pred = decoder.predict(utils.get_at_index(decoder.decode(x_masked), idx_mask))
            target = utils.get_at_index(utils.patchify(images, patch), idx_mask - 1)
            loss = mse(pred, target)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step
    if name in ("ijepa", "ijepa_same_masks"):
        return _lightly_ijepa(size, patch)
    raise ValueError(name)


def _lightly_ijepa(size: int, patch: int):
    """lightly 1.6's I-JEPA on timm (``MaskedVisionTransformerTIMM`` context and target encoders,
    ``IJEPAPredictorTIMM``, ``IJEPAMaskCollator``), wired as lightly's examples/pytorch/ijepa.py wires
    its torchvision version, with our I-JEPA defaults so both do the same work: a ViT-Tiny without a
    class token (patch tokens only, as I-JEPA), 4 target blocks of scale 0.15-0.2 and aspect 0.75-1.5,
    one context block of scale 0.85-1.0, a depth-6 predictor of width 96 with 3 heads, smooth L1 on
    layer-normed target features, EMA 0.996. Masks are drawn inside the timed step, as ours are."""
    import copy

    import timm
    import torch
    import torch.nn.functional as F
    from lightly.models import utils
    from lightly.models.modules import MaskedVisionTransformerTIMM
    from lightly.models.modules.ijepa_timm import IJEPAPredictorTIMM
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=size,
        patch_size=patch,
        num_classes=0,
        class_token=False,
        global_pool="avg",
    )
    d = vit.embed_dim
    encoder = MaskedVisionTransformerTIMM(vit=vit)
    target = copy.deepcopy(encoder)
    deactivate_requires_grad(target)
    grid = size // patch
    predictor = IJEPAPredictorTIMM(num_patches=grid * grid, depth=6, mlp_dim=d, predictor_embed_dim=d // 2, num_heads=3)
    collator = lightly_ijepa_masks(size, patch)
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(predictor.parameters()), lr=5e-4)

    def step(batch):
        images = batch["images"]
        b = len(images)
        _, masks_enc, masks_pred = collator(list(range(b)))  # the masks (the "batch" is a dummy)
        with torch.no_grad():
            h = target.encode(images)
            h = F.layer_norm(h, (h.size(-1),))
            h = utils.apply_masks(h, masks_pred)
            h = utils.repeat_interleave_batch(h, b, repeat=len(masks_enc))
        z = encoder.encode(images, idx_keep=masks_enc[0])
        z = predictor(z, masks_enc, masks_pred)
        loss = F.smooth_l1_loss(z, h)
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_momentum(encoder, target, 0.996)

    return step


def child(impl: str, name: str, batch: int, size: int, patch: int, steps: int) -> None:
    import torch

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    step = ours(name, size, patch) if impl == "pretextlab" else lightly_step(name, size, patch)
    data = make_batch(name, batch, size, g)
    for _ in range(3):
        step(data)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(data)
    dt = time.perf_counter() - t0
    print(json.dumps({"steps_per_s": steps / dt}))


def run_paired(names: list[str], batch: int, size: int, patch: int, rounds: int) -> None:
    """Ours only, in one process, 1 thread: the rows alternate step by step for ``rounds`` rounds and
    each ratio is the median of its per-round ratios, so a change in machine load hits both sides."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    steps = {n: ours(n, size, patch) for n in names}
    data = {n: make_batch(n, batch, size, g) for n in names}
    for n in names:
        for _ in range(2):
            steps[n](data[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            t0 = time.perf_counter()
            steps[n](data[n])
            times[n].append(time.perf_counter() - t0)
    for n in names:
        print(f"  {n:14} {statistics.median(times[n]):.3f} s/step (median of {rounds})")
    for label, a, b in RATIOS:
        if a in times and b in times:
            r = [x / y for x, y in zip(times[a], times[b], strict=True)]
            print(f"{label}: step time ratio {statistics.median(r):.2f} (rounds {min(r):.2f}-{max(r):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="ours only, rows interleaved in one process (for a shared, loaded machine)",
    )
    args = ap.parse_args()
    if args.paired:
        run_paired(args.objectives.split(","), args.batch, args.size, args.patch, args.paired)
        return
    results = {}
    names = args.objectives.split(",")
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):  # repeats outermost: a change in machine load hits every row alike
        for name in names:
            for impl in ("pretextlab", "lightly"):
                if impl == "lightly" and name not in LIGHTLY:
                    continue
                args_ = [impl, name, str(args.batch), str(args.size), str(args.patch), str(args.steps)]
                runs.setdefault((name, impl), []).append(measure_child(HERE, args_))
    for (name, impl), rs in runs.items():
        results.setdefault(name, {})[impl] = {
            "steps_per_s": statistics.median(r["steps_per_s"] for r in rs),
            "peak_mib": statistics.median(r["peak_mib"] for r in rs),
        }
        print(f"  {name:10} {impl:10} {results[name][impl]['steps_per_s']:.2f} steps/s", flush=True)
    print(
        f"\nViT-Tiny, {args.size} px, patch {args.patch}, batch {args.batch}, CPU; "
        f"median of {args.repeats} x {args.steps} steps"
    )
    print(f"{'objective':12}{'ours steps/s':>14}{'lightly':>10}{'ratio':>8}{'ours MiB':>13}{'lightly MiB':>13}")
    for name, r in results.items():
        o, lt = r["pretextlab"], r.get("lightly")
        ratio = f"{o['steps_per_s'] / lt['steps_per_s']:.2f}" if lt else "-"
        print(
            f"{name:12}{o['steps_per_s']:14.2f}{(lt or {}).get('steps_per_s', float('nan')):10.2f}{ratio:>8}"
            f"{o['peak_mib']:13.0f}{(lt or {}).get('peak_mib', float('nan')):13.0f}"
        )
    desc = f"ViT-Tiny {args.size} px patch {args.patch}, batch {args.batch}, {args.steps} steps"
    figures = []
    for name in names:
        ours_sps = [r["steps_per_s"] for r in runs[(name, "pretextlab")]]
        if (name, "lightly") in runs:
            lightly = [r["steps_per_s"] for r in runs[(name, "lightly")]]
            figures.append(
                compare(f"{name} training steps/s ({desc})", "steps/s", ours_sps, f"lightly {name}", lightly)
            )
        else:
            figures.append(compare(f"{name} training steps/s ({desc})", "steps/s", ours_sps, None))
    ratios = {}
    for label, a, b in RATIOS:  # paired by repeat (the two ran back to back), then the median
        if (a, "pretextlab") in runs and (b, "pretextlab") in runs:
            f = compare(
                f"{label} steps/s",
                "steps/s",
                [x["steps_per_s"] for x in runs[(a, "pretextlab")]],
                f"ours {b}",
                [y["steps_per_s"] for y in runs[(b, "pretextlab")]],
            )
            figures.append(f)
            ratios[label] = {"median": f["ratio"], "min": min(f["runs"]), "max": max(f["runs"])}
            print(f"{label}: steps/s ratio {f['ratio']:.2f}; step time ratio {1 / f['ratio']:.2f}")
    write_results("objectives", figures, args=vars(args), results=results, ratios=ratios)
    print_figures(figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        a = sys.argv[2:]
        child(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]))
    else:
        main()
