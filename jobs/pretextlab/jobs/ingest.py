"""Ingest slides, cine loops and image collections into a Zarr store: one Ray task per source (or
DICOM series), one per collection shard (up to ``shard_size`` images, decoded in threads).

    pretextlab ingest SRC... --to DEST [--modality ultrasound|histopathology] [--labels labels.csv]
                      [--labels-from-folders] [--collections | --one-item-per-file] [--collection NAME]
    python -m pretextlab.jobs.ingest SRC... --to DEST          # the same, as a Ray job entrypoint

2-D raster images found in a folder become a collection of stack shards (docs/storage.md), which
pretraining streams (the ``frames`` kind), evaluation, embedding and serving read row by row;
``--one-item-per-file`` makes each image its own item instead. Non-image files found in folders are
skipped and counted.

Idempotent (complete, unchanged items are skipped) and resumable (a crashed item is rewritten).
Ends with a report; exits 1 when any item failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pretextlab.core.config import load_config
from pretextlab.modalities import ModalityName, list_modalities
from pretextlab.storage import fs as sfs
from pretextlab.storage.catalog import rebuild_catalog
from pretextlab.storage.collection import SHARD_SIZE, write_shard
from pretextlab.storage.discovery import discover
from pretextlab.storage.options import ZarrOptions
from pretextlab.storage.writer import ItemResult, write_item


class IngestConfig(BaseModel):
    """What to ingest, where to, and how (CLI flags, or a YAML file plus overrides)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(min_length=1, description="files, folders, globs or s3:// prefixes")
    dest: str = Field(min_length=1, description="store: a local folder or s3://bucket/prefix")
    modality: ModalityName | None = Field(
        None, description="force a modality; default: from the file (DICOM Modality, format)"
    )
    labels: str | None = Field(None, description="CSV with item_id or source, and label columns")
    zarr: ZarrOptions = Field(default_factory=ZarrOptions)
    cpus_per_item: float = Field(1.0, gt=0, description="Ray CPUs reserved by each item's task")
    max_retries: int = Field(1, ge=0, description="re-runs of an item whose worker process died")
    ray_address: str | None = Field(None, description="Ray cluster address (default: RAY_ADDRESS or local)")
    one_item_per_file: bool = Field(
        False,
        description=(
            "each 2-D image file its own item; false (the default): images found in folders become collection shards"
        ),
    )
    collection: str | None = Field(
        None, min_length=1, description="put every 2-D raster image, named or found, into this collection"
    )
    shard_size: int = Field(SHARD_SIZE, ge=1, le=1 << 20, description="images per collection shard item")
    labels_from_folders: bool = Field(False, description="collections: label = the image's parent folder name")
    decode_threads: int = Field(4, ge=1, le=64, description="image decoding threads inside one shard task")


@dataclass
class IngestReport:
    dest: str
    results: list[ItemResult] = field(default_factory=list)
    catalog_rows: int = 0
    unmatched_labels: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped_files: list[str] = field(default_factory=list)
    images: int = 0
    shards: int = 0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dest": self.dest,
            "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 2),
            "ingested": self.count("ingested"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "catalog_rows": self.catalog_rows,
            "unmatched_labels": self.unmatched_labels,
            "skipped_non_image_files": self.skipped_files,
            "collection_shards": self.shards,
            "collection_images": self.images,
            "items": [asdict(r) for r in self.results],
        }

    def render(self) -> str:
        lines = [
            f"ingest into {self.dest}: {self.count('ingested')} ingested, {self.count('skipped')} skipped, "
            f"{self.count('failed')} failed ({self.seconds:.1f} s); catalog: {self.catalog_rows} rows"
        ]
        if self.shards:
            lines.append(f"  collections: {self.images:,} images in {self.shards} shard item(s)")
        if self.skipped_files:
            n = len(self.skipped_files)
            named = [f.rsplit("/", 1)[-1] for f in self.skipped_files if not f.startswith("<")]
            shown = f": {', '.join(named[:3])}{' ...' if len(named) > 3 else ''}" if named else ""
            lines.append(f"  skipped {n:,} non-image file{'s' if n != 1 else ''}{shown}")
        for r in self.results:
            if r.status == "failed":
                lines.append(f"  FAILED  {r.source}: {r.reason}")
        lines.extend(aggregate_warnings(self.results))
        if self.unmatched_labels:
            shown = ", ".join(self.unmatched_labels[:5]) + (" ..." if len(self.unmatched_labels) > 5 else "")
            lines.append(f"  warning labels: {len(self.unmatched_labels)} label rows match no item: {shown}")
        return "\n".join(lines)


def aggregate_warnings(results: list[ItemResult], show: int = 3) -> list[str]:
    """One line per distinct warning: alone it names its item; repeated it is counted ("3,000 items:
    no pixel size") with the first few item ids."""
    by_text: dict[str, list[str]] = {}
    for r in results:
        for w in r.warnings:
            by_text.setdefault(w, []).append(r.item_id)
    lines = []
    for text, ids in by_text.items():
        if len(ids) == 1:
            lines.append(f"  warning {ids[0]}: {text}")
        else:
            more = " ..." if len(ids) > show else ""
            lines.append(f"  warning {len(ids):,} items: {text} ({', '.join(ids[:show])}{more})")
    return lines


def run_ingest(
    cfg: IngestConfig, storage_options: dict[str, Any] | None = None, progress: bool | None = None
) -> IngestReport:
    """Discover, write every item as a Ray task, rebuild the catalog, write the report."""
    import ray
    from tqdm import tqdm

    from pretextlab.cluster import init_ray

    t0 = time.perf_counter()
    dest = sfs.normalize(cfg.dest)
    report = IngestReport(dest=dest)
    if cfg.labels is not None:  # validate the labels file before any work starts
        from pretextlab.storage.catalog import load_labels_csv

        load_labels_csv(cfg.labels)
    found = discover(
        cfg.sources,
        cfg.modality,
        storage_options,
        exclude=[dest],
        one_item_per_file=cfg.one_item_per_file,
        collection=cfg.collection,
        shard_size=cfg.shard_size,
        labels_from_folders=cfg.labels_from_folders,
    )
    report.results.extend(found.failures)
    report.skipped_files = found.skipped
    report.shards = len(found.shards)
    report.images = sum(len(s.sources) for s in found.shards)
    if found.plans or found.shards:
        init_ray(cfg.ray_address)
        task = ray.remote(num_cpus=cfg.cpus_per_item, max_retries=cfg.max_retries)(write_item)
        shard_task = ray.remote(num_cpus=cfg.cpus_per_item, max_retries=cfg.max_retries)(write_shard)
        pending: dict[Any, Any] = {task.remote(plan, dest, cfg.zarr, storage_options): plan for plan in found.plans}
        # shards first in the queue: they are the big units of work
        pending = {
            **{shard_task.remote(s, dest, cfg.zarr, storage_options, cfg.decode_threads): s for s in found.shards},
            **pending,
        }
        with tqdm(total=len(pending), desc="ingest", unit="item", disable=progress is False or None) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                plan = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:  # worker died (OOM, kill) more often than max_retries
                    out = ItemResult(
                        plan.item_id, "failed", plan.sources[0], reason=f"worker died: {type(exc).__name__}"
                    )
                results = out if isinstance(out, list) else [out]
                report.results.extend(results)
                bar.set_postfix_str(f"{results[0].item_id}: {results[0].status}", refresh=False)
                bar.update(1)
    report.results.sort(key=lambda r: (r.status != "failed", r.item_id))
    try:
        df, report.unmatched_labels = rebuild_catalog(dest, cfg.labels, storage_options)
        report.catalog_rows = len(df)
    except OSError as exc:  # the destination itself is unreachable
        report.results.append(ItemResult("<catalog>", "failed", dest, reason=f"cannot write catalog: {exc}"))
    report.seconds = time.perf_counter() - t0
    try:
        sfs.atomic_write_bytes(
            sfs.join(dest, "ingest-report.json"), json.dumps(report.to_json(), indent=1).encode(), storage_options
        )
    except OSError:
        pass
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="*", metavar="SRC", help="files, folders, globs or s3://bucket/prefix")
    parser.add_argument("--to", dest="dest", metavar="DEST", help="store: local folder or s3://bucket/prefix")
    parser.add_argument("--modality", choices=list_modalities(), help="force the modality")
    parser.add_argument("--labels", metavar="CSV", help="labels CSV keyed by item_id or source")
    parser.add_argument("--config", metavar="YAML", help="ingest config file (fields of IngestConfig)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set zarr.chunk=256 (repeatable)",
    )
    parser.add_argument("--ray-address", help="Ray cluster (default: $RAY_ADDRESS, else a local cluster)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--one-item-per-file",
        action="store_true",
        default=None,
        help="each image file becomes its own item (no collections)",
    )
    parser.add_argument(
        "--collections",
        dest="one_item_per_file",
        action="store_false",
        help="images found in folders become collection shards (the default)",
    )
    parser.add_argument(
        "--collection",
        metavar="NAME",
        help="gather every 2-D raster image, named or found in folders, into collection NAME",
    )
    parser.add_argument(
        "--labels-from-folders",
        action="store_true",
        default=None,
        help="collections: the label of an image is its parent folder's name (ImageFolder)",
    )
    parser.add_argument(
        "--shard-size", type=int, metavar="N", help=f"most images per collection shard (default {SHARD_SIZE})"
    )


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    base: dict[str, Any] = {}
    for key in (
        "dest",
        "modality",
        "labels",
        "ray_address",
        "one_item_per_file",
        "collection",
        "labels_from_folders",
        "shard_size",
    ):
        if getattr(args, key, None) is not None:
            base[key] = getattr(args, key)
    if args.sources:
        base["sources"] = args.sources
    return load_config(IngestConfig, args.config, args.overrides, flags=base)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    report = run_ingest(cfg, progress=False if args.quiet else None)
    print(report.render())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    from pretextlab.core.cli import run_module

    return run_module("pretextlab.jobs.ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
