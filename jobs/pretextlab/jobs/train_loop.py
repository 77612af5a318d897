"""The Ray Train worker loop of a pretraining run: DDP around the shared :class:`Trainer`, batches of
ready views from the Ray Data shard, checkpoints with the full training state, and metrics (loss,
LR, images/s, RankMe and collapse, online kNN) to Ray and to TensorBoard on rank 0."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from pretextlab.evaluate.diagnostics import diagnostics
from pretextlab.training import Trainer
from pretextlab.training.checkpoint import load_training_state, save_rng, save_training_state
from pretextlab.training.config import PretrainConfig
from pretextlab.training.setup import make_objective, make_views
from pretextlab.views.columns import from_columns

#: view columns the objectives consume; anything else in a row (item ids, labels) stays out of the batch
VIEW_PREFIXES = ("global_", "local_", "images", "clips")


def _collate(device: torch.device, pin: bool):
    def collate(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in batch.items():
            if key.startswith(VIEW_PREFIXES):
                t = torch.as_tensor(value)
                if pin:
                    t = t.pin_memory()
                out[key] = t.to(device, non_blocking=True)
        return out
    return collate


class OnlineKNN:
    """Rank 0's labelled validation set: frozen features of the current encoder -> kNN accuracy (and the
    accuracy of a linear probe with C=1 when ``validation.linear`` is set)."""

    def __init__(self, cfg: PretrainConfig, views_mean: list[float], views_std: list[float], img_size: int,
                 in_chans: int):
        from pretextlab.evaluate.dataset import load_eval_set
        from pretextlab.evaluate.splits import make_split

        v = cfg.validation
        assert v is not None
        self.k = v.k
        self.linear = v.linear
        self.data = load_eval_set(v.catalog, label_column=v.label_column, patches_per_slide=v.patches_per_slide,
                                  patch_size=cfg.data.patch.patch_size, size=img_size, seed=cfg.train.seed,
                                  modality=cfg.modality)
        self.split = make_split(self.data.labels, self.data.groups, self.data.splits, v.test_size, cfg.train.seed)
        self.card = type("Card", (), {"img_size": img_size, "in_chans": in_chans, "mean": views_mean,
                                      "std": views_std})()

    @torch.no_grad()
    def __call__(self, encoder: torch.nn.Module, device: torch.device) -> dict[str, float]:
        from pretextlab.evaluate.features import embed_images
        from pretextlab.evaluate.knn import knn_predict

        was_training = encoder.training
        feats = embed_images(encoder, self.card, self.data.images, batch_size=128, device=device)
        encoder.train(was_training)
        tr, te = self.split.train, self.split.test
        preds, _ = knn_predict(feats[tr], torch.as_tensor(self.data.labels[tr]), feats[te], k=self.k,
                               num_classes=self.data.num_classes)
        acc = float((preds.cpu().numpy() == self.data.labels[te]).mean())
        diag = diagnostics(feats)
        out = {"knn_acc": acc, "rankme": float(diag["rankme"]), "embedding_std": float(diag["embedding_std"]),
               "collapsed": float(bool(diag["collapsed"]))}
        if self.linear:
            from pretextlab.evaluate.linear import linear_probe

            x = feats.float().cpu().numpy()
            probe = linear_probe(x[tr], self.data.labels[tr], x[te], C=1.0, num_classes=self.data.num_classes,
                                 max_iter=200)
            out["linear_acc"] = float((probe.preds == self.data.labels[te]).mean())
        return out


def _probe_batch(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The images the encoder sees unaugmented-ish, for RankMe on the training stream."""
    if "global" in batch:
        return batch["global"][0]
    if "images" in batch:
        return batch["images"]
    clips = batch["clips"]  # (B, C, T, H, W): the middle frame of each clip
    return clips[:, :, clips.shape[2] // 2]


class TensorBoard:
    """Rank 0's event files, written locally and mirrored into run storage at each checkpoint."""

    def __init__(self, run_uri: str, storage_options: dict[str, Any] | None):
        from torch.utils.tensorboard import SummaryWriter

        from pretextlab.storage import fs as sfs

        self.sfs, self.storage_options = sfs, storage_options
        self.remote = sfs.is_remote(run_uri)
        self.target = sfs.join(run_uri, "tensorboard")
        self.local = Path(tempfile.mkdtemp(prefix="pretextlab-tb-")) if self.remote else Path(self.target)
        self.writer = SummaryWriter(str(self.local))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)

    def sync(self) -> None:
        self.writer.flush()
        if self.remote:
            fs, path = self.sfs.get_fs(self.target, self.storage_options)
            for f in self.local.iterdir():
                fs.put_file(str(f), f"{path}/{f.name}")

    def close(self) -> None:
        self.sync()
        self.writer.close()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = PretrainConfig.model_validate(config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))

    torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    objective = make_objective(cfg)
    views = make_views(cfg, objective)
    trainer = Trainer(objective, t.schedule, t.steps, device=device, grad_clip=t.grad_clip, bf16=t.bf16)
    restored_from = None
    per_epoch = max(1, int(config["samples_per_epoch"]))
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            state = load_training_state(folder, trainer.objective, trainer.optimizer, rank, device)
        trainer.global_step, restored_from = int(state["step"]), int(state["step"])
    else:
        torch.manual_seed(t.seed * 1000 + rank + 1)  # per-rank masks and noise
    if world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        trainer.forward_module = torch.nn.parallel.DistributedDataParallel(
            trainer.objective, broadcast_buffers=False, find_unused_parameters=bool(config.get("find_unused", True)),
            **ddp_kwargs)

    knn = None
    tb = None
    if rank == 0:
        tb = TensorBoard(config["run_uri"], config.get("storage_options"))
        if cfg.validation is not None:
            bb = objective.cfg.backbone
            knn = OnlineKNN(cfg, list(views.config.mean), list(views.config.std), bb.img_size, bb.in_chans)
        if restored_from is not None:
            print(f"[pretrain] resumed from the checkpoint at step {restored_from}", flush=True)

    shard = ray.train.get_dataset_shard("train")
    collate = _collate(device, pin=device.type == "cuda")
    losses: list[float] = []
    window_start, window_images, wait = time.perf_counter(), 0, 0.0
    last_metrics: dict[str, float] = {}
    while trainer.global_step < t.steps:
        batches = shard.iter_torch_batches(batch_size=t.batch_size, drop_last=True, collate_fn=collate,
                                           prefetch_batches=t.prefetch_batches)
        fetched = time.perf_counter()
        seen = 0
        for raw in batches:
            wait += time.perf_counter() - fetched
            seen += 1
            batch = from_columns(raw)
            result = trainer.step(batch)
            losses.append(result.loss)
            window_images += t.batch_size * world
            step = trainer.global_step  # steps done
            epoch = step * t.batch_size * world // per_epoch
            last = step >= t.steps
            if step % t.log_every == 0 or last or step % t.checkpoint_every == 0:
                elapsed = time.perf_counter() - window_start
                metrics: dict[str, float] = {
                    "step": step, "epoch": epoch, "loss": float(np.mean(losses)), "lr": result.lr,
                    "momentum": result.momentum, "images_per_s": window_images / max(elapsed, 1e-9),
                    "data_wait_fraction": wait / max(elapsed, 1e-9),
                    **{k: v for k, v in result.metrics.items()},
                }
                if rank == 0:
                    with torch.no_grad():
                        enc = trainer.objective.encoder()
                        was = enc.training
                        enc.eval()
                        ctx_manager = (torch.autocast(device.type, dtype=torch.bfloat16) if trainer.bf16
                                       else contextlib.nullcontext())
                        with ctx_manager:
                            feats = enc(_probe_batch(batch)).float()
                        enc.train(was)
                    diag = diagnostics(feats)
                    metrics.update(train_rankme=float(diag["rankme"]), train_embedding_std=float(diag["embedding_std"]),
                                   collapsed=float(bool(diag["collapsed"])))
                    if knn is not None and (step % cfg.validation.every == 0 or last):
                        metrics.update(knn.__call__(trainer.objective.encoder(), device))
                    if restored_from is not None:
                        metrics["restored_from"] = restored_from
                    tb.scalars(metrics, step)
                    last_metrics = metrics
                losses, window_images, wait = [], 0, 0.0
                window_start = time.perf_counter()
                if step % t.checkpoint_every == 0 or last:
                    with tempfile.TemporaryDirectory(prefix="pretextlab-ckpt-") as folder:
                        if rank == 0:
                            save_training_state(folder, trainer.objective, trainer.optimizer, step, epoch,
                                                {"metrics": last_metrics})
                            tb.sync()
                        save_rng(folder, rank)
                        ray.train.report(metrics if rank == 0 else {}, checkpoint=ray.train.Checkpoint.from_directory(folder),
                                         checkpoint_dir_name=f"checkpoint-{step:08d}")
                else:
                    ray.train.report(metrics if rank == 0 else {})
            if last:
                break
            fetched = time.perf_counter()
        if seen == 0:
            raise RuntimeError("the training stream yielded no full batch: fewer samples than batch_size "
                               f"({t.batch_size}) per worker")
    if tb is not None:
        tb.close()
