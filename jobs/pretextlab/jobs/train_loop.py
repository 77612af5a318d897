"""The Ray Train worker loop of a pretraining run, in named steps as Ray's Train examples are written:

1. :func:`build_worker` - the objective, views and :class:`Trainer` on this worker's device;
2. :func:`load_checkpoint` - the training state of Ray's latest checkpoint (or a fresh per-rank seed);
3. :func:`wrap_ddp` - DDP around the objective when there is more than one worker;
4. :func:`train_step` - one batch of ready views from the Ray Data shard through ``Trainer.step``;
5. :func:`report` - metrics to Ray (and Tune) every ``log_every`` steps, with a checkpoint holding the
   full training state every ``checkpoint_every`` steps;
6. :class:`RankZeroLog` - RankMe/collapse on the training stream, online kNN, TensorBoard (rank 0 only).
"""

from __future__ import annotations

import math
import resource
import tempfile
import time
from dataclasses import dataclass, field
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
from pretextlab.training.setup import encoder_card, make_objective, make_views
from pretextlab.views import Views
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
    accuracy of a linear probe with C=1 when ``validation.linear`` is set). Images are preprocessed from
    the run's own encoder card, as evaluation and serving will."""

    def __init__(self, cfg: PretrainConfig, card: Any):
        from pretextlab.evaluate.dataset import load_eval_set
        from pretextlab.evaluate.splits import make_split

        v = cfg.validation
        assert v is not None
        self.k = v.k
        self.linear = v.linear
        self.card = card
        self.data = load_eval_set(
            v.catalog,
            label_column=v.label_column,
            patches_per_slide=v.patches_per_slide,
            patch_size=cfg.data.patch.patch_size,
            size=card.img_size,
            seed=cfg.train.seed,
            modality=cfg.modality,
            resolution=card.resolution,
        )
        self.split = make_split(self.data.labels, self.data.groups, self.data.splits, v.test_size, cfg.train.seed)

    @torch.no_grad()
    def __call__(self, encoder: torch.nn.Module, device: torch.device) -> dict[str, float]:
        from pretextlab.evaluate.features import embed_images
        from pretextlab.evaluate.knn import knn_predict

        was_training = encoder.training
        feats = embed_images(encoder, self.card, self.data.images, batch_size=128, device=device)
        encoder.train(was_training)
        tr, te = self.split.train, self.split.test
        preds, _ = knn_predict(
            feats[tr], torch.as_tensor(self.data.labels[tr]), feats[te], k=self.k, num_classes=self.data.num_classes
        )
        preds = torch.as_tensor(preds)  # already a tensor (feats is one): this only narrows knn_predict's union
        acc = float((preds.cpu().numpy() == self.data.labels[te]).mean())
        diag = diagnostics(feats)
        out = {
            "knn_acc": acc,
            "rankme": float(diag["rankme"]),
            "embedding_std": float(diag["embedding_std"]),
            "collapsed": float(bool(diag["collapsed"])),
        }
        if self.linear:
            from pretextlab.evaluate.linear import linear_probe

            x = feats.float().cpu().numpy()
            probe = linear_probe(
                x[tr], self.data.labels[tr], x[te], C=1.0, num_classes=self.data.num_classes, max_iter=200
            )
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


@dataclass
class Worker:
    """One Ray Train worker: its place in the group, its device, and the training state it owns."""

    cfg: PretrainConfig
    rank: int
    world: int
    device: torch.device
    trainer: Trainer
    views: Views
    samples_per_epoch: int
    restored_from: int | None = None


def build_worker(config: dict[str, Any]) -> Worker:
    """Step 1: the objective (same initial weights on every rank), its views and the Trainer."""
    cfg = PretrainConfig.model_validate(config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    torch.manual_seed(t.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    objective = make_objective(cfg)
    views = make_views(cfg, objective)
    trainer = Trainer(objective, t.schedule, t.steps, device=device, grad_clip=t.grad_clip, bf16=t.bf16)
    return Worker(
        cfg,
        ctx.get_world_rank(),
        ctx.get_world_size(),
        device,
        trainer,
        views,
        max(1, int(config["samples_per_epoch"])),
    )


def load_checkpoint(worker: Worker) -> int | None:
    """Step 2: restore weights, optimiser, step and this rank's RNG from Ray's latest checkpoint; with
    none, seed this rank's own stream of masks and noise. Returns the restored step (or None)."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        torch.manual_seed(worker.cfg.train.seed * 1000 + worker.rank + 1)
        return None
    trainer = worker.trainer
    with ckpt.as_directory() as folder:
        state = load_training_state(folder, trainer.objective, trainer.optimizer, worker.rank, worker.device)
    trainer.global_step = worker.restored_from = int(state["step"])
    return worker.restored_from


def wrap_ddp(worker: Worker, find_unused: bool = True) -> None:
    """Step 3: run the objective's forward through DDP when the group has more than one worker."""
    if worker.world <= 1:
        return
    worker.trainer.forward_module = torch.nn.parallel.DistributedDataParallel(
        worker.trainer.objective,
        device_ids=[worker.device.index] if worker.device.type == "cuda" else None,
        broadcast_buffers=False,
        find_unused_parameters=find_unused,
    )


def train_step(worker: Worker, raw: dict[str, torch.Tensor]) -> tuple[dict[str, Any], Any]:
    """Step 4: one optimiser step on a batch of flat view columns; returns (objective batch, StepResult)."""
    batch = from_columns(raw)
    return batch, worker.trainer.step(batch)


@dataclass
class RankZeroLog:
    """Step 6 (rank 0 only): diagnostics on the training stream, online kNN and TensorBoard."""

    worker: Worker
    tensorboard: TensorBoard
    knn: OnlineKNN | None = None

    @classmethod
    def start(cls, worker: Worker, config: dict[str, Any]) -> RankZeroLog:
        tb = TensorBoard(config["run_uri"], config.get("storage_options"))
        knn = None
        if worker.cfg.validation is not None:
            knn = OnlineKNN(worker.cfg, encoder_card(worker.cfg, worker.trainer.objective, worker.views))
        if worker.restored_from is not None:
            print(f"[pretrain] resumed from the checkpoint at step {worker.restored_from}", flush=True)
        return cls(worker, tb, knn)

    @torch.no_grad()
    def stream_diagnostics(self, batch: dict[str, Any]) -> dict[str, float]:
        """RankMe, embedding std and the collapse flag of the current encoder on this batch's images."""
        trainer = self.worker.trainer
        enc = trainer.objective.encoder()
        was = enc.training
        enc.eval()
        with trainer.autocast():
            feats = enc(_probe_batch(batch)).float()
        enc.train(was)
        diag = diagnostics(feats)
        return {
            "train_rankme": float(diag["rankme"]),
            "train_embedding_std": float(diag["embedding_std"]),
            "collapsed": float(bool(diag["collapsed"])),
        }

    def add(self, metrics: dict[str, float], batch: dict[str, Any], step: int, last: bool) -> None:
        metrics.update(self.stream_diagnostics(batch))
        v = self.worker.cfg.validation
        if self.knn is not None and v is not None and (step % v.every == 0 or last):
            metrics.update(self.knn(self.worker.trainer.objective.encoder(), self.worker.device))
        if self.worker.restored_from is not None:
            metrics["restored_from"] = self.worker.restored_from
        self.tensorboard.scalars(metrics, step)


@dataclass
class Window:
    """Losses, images and data-wait time since the last report."""

    losses: list[float] = field(default_factory=list)
    images: int = 0
    wait: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def metrics(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            "loss": float(np.mean(self.losses)),
            "images_per_s": self.images / elapsed,
            "data_wait_fraction": self.wait / elapsed,
            # this worker's peak resident memory so far (Linux reports ru_maxrss in KiB): the cost per arm
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def report(worker: Worker, metrics: dict[str, float], log: RankZeroLog | None, checkpoint: bool) -> None:
    """Step 5: ``ray.train.report`` rank 0's metrics; at checkpoint steps every rank writes its RNG and
    rank 0 the full training state into one checkpoint folder that Ray registers."""
    step, epoch = int(metrics["step"]), int(metrics["epoch"])
    if not checkpoint:
        ray.train.report(metrics if worker.rank == 0 else {})
        return
    with tempfile.TemporaryDirectory(prefix="pretextlab-ckpt-") as folder:
        if worker.rank == 0:
            save_training_state(
                folder, worker.trainer.objective, worker.trainer.optimizer, step, epoch, {"metrics": metrics}
            )
            if log is not None:
                log.tensorboard.sync()
        save_rng(folder, worker.rank)
        ray.train.report(
            metrics if worker.rank == 0 else {},
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=f"checkpoint-{step:08d}",
        )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train entry point: steps 1-6 until ``train.steps`` optimiser steps are done."""
    worker = build_worker(config)
    load_checkpoint(worker)
    wrap_ddp(worker, bool(config.get("find_unused", True)))
    log = RankZeroLog.start(worker, config) if worker.rank == 0 else None
    t, trainer = worker.cfg.train, worker.trainer
    shard = ray.train.get_dataset_shard("train")
    collate = _collate(worker.device, pin=worker.device.type == "cuda")
    window = Window()
    while trainer.global_step < t.steps:
        seen = 0
        fetched = time.perf_counter()
        for raw in shard.iter_torch_batches(
            batch_size=t.batch_size, drop_last=True, collate_fn=collate, prefetch_batches=t.prefetch_batches
        ):
            window.wait += time.perf_counter() - fetched
            seen += 1
            batch, result = train_step(worker, raw)
            window.losses.append(result.loss)
            window.images += t.batch_size * worker.world
            step = trainer.global_step  # steps done
            last = step >= t.steps
            checkpoint = step % t.checkpoint_every == 0 or last
            if step % t.log_every == 0 or checkpoint:
                metrics = {
                    "step": step,
                    "epoch": t.epoch_at(step, worker.samples_per_epoch),
                    **window.metrics(),
                    "lr": result.lr,
                    "momentum": result.momentum,
                    **result.metrics,
                }
                if log is not None:
                    log.add(metrics, batch, step, last)
                report(worker, metrics, log, checkpoint)
                window = Window()
            if last:
                break
            fetched = time.perf_counter()
        if seen == 0:
            raise RuntimeError(
                f"the training stream yielded no full batch: fewer samples than batch_size ({t.batch_size}) per worker"
            )
    if log is not None:
        log.tensorboard.close()
