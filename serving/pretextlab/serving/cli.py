"""Serve registered encoders over HTTP (Ray Serve) on this machine, until Ctrl-C.

    pretextlab serve --registry ROOT [--models NAME|SERVED=SPEC ...] [--port 8000] [--host 127.0.0.1]
                     [--store NAME=URI ...] [--insecure-local] [--config args.yaml] [--set key=value]

--models takes registry specs ("name", "name:<version>", "chosen:<modality>"), optionally under another
served name ("hist=chosen:histopathology"); default: the latest version of every registered encoder.
Clients send the key in PRETEXTLAB_API_KEY as `X-API-Key` (or `Authorization: Bearer`);
--insecure-local drops the key for a laptop. On a cluster use `serve deploy serving/serve_config.yaml`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from pretextlab.core.errors import UserError

APP = "pretextlab-embeddings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", metavar="ROOT", help="encoder registry root (default: $PRETEXTLAB_REGISTRY)")
    parser.add_argument(
        "--models", nargs="+", metavar="SPEC", help="NAME, NAME:VERSION, chosen:MODALITY or SERVED=SPEC"
    )
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="HTTP host (default: 127.0.0.1; 0.0.0.0 for all interfaces)"
    )
    parser.add_argument(
        "--store",
        action="append",
        default=[],
        metavar="NAME=URI",
        help="a store /v1/embeddings/regions may read (repeatable)",
    )
    parser.add_argument("--insecure-local", action="store_true", help="no API key (a laptop only)")
    parser.add_argument("--num-cpus", type=float, help="CPUs per model replica (default: 1)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local one)")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="on SIGTERM/Ctrl-C, seconds to let in-flight requests finish before stopping (default: 20, "
        "under Kubernetes' 30 s grace period)",
    )
    parser.add_argument("--config", metavar="YAML", help="serve args file (fields of ServeArgs)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an args field, e.g. --set limits.max_images=64 (repeatable)",
    )


def _model_entry(text: str) -> dict[str, Any]:
    served, sep, spec = text.partition("=")
    if not sep:
        spec = text
        served = text.split(":", 1)[1] if text.startswith("chosen:") else text.split(":", 1)[0]
    return {"name": served, "spec": spec}


def _stores(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            raise UserError(f"--store {item!r}: expected NAME=URI, e.g. lake=s3://bucket/store")
        out[name] = uri
    return out


def build_args(args: argparse.Namespace) -> Any:
    """The validated ServeArgs from flags, an optional YAML file and overrides."""
    from pretextlab.core.config import load_config
    from pretextlab.registry import EncoderRegistry
    from pretextlab.serving.config import ServeArgs

    flags: dict[str, Any] = {}
    registry = args.registry or os.environ.get("PRETEXTLAB_REGISTRY")
    if registry:
        flags["registry"] = registry
    if args.models:
        flags["models"] = [_model_entry(m) for m in args.models]
    elif registry and not args.config:
        names = EncoderRegistry(registry).names()
        if not names:
            raise UserError(f"{registry}: the registry holds no encoders; register one or name --models")
        flags["models"] = [{"name": n, "spec": n} for n in names]
    if args.store:
        flags["stores"] = _stores(args.store)
    if args.insecure_local:
        flags["insecure_local"] = True
    if args.num_cpus is not None and "models" in flags:
        for m in flags["models"]:
            m["num_cpus"] = args.num_cpus
    if "registry" not in flags and not args.config:
        raise UserError("--registry ROOT is required (or set PRETEXTLAB_REGISTRY)")
    return load_config(ServeArgs, args.config, args.overrides, flags=flags)


def run(args: argparse.Namespace) -> int:
    from pretextlab.serving.app import api_key_digest, model_infos

    cfg = build_args(args)
    api_key_digest(cfg)  # a missing or weak key fails here, before Ray starts
    infos = model_infos(cfg)  # every spec resolves, or one clear error

    from ray import serve

    from pretextlab.cluster import init_ray
    from pretextlab.serving.app import build_app
    from pretextlab.serving.drain import coordinator_name, drain, start_coordinator

    if args.drain_timeout < 0:
        raise UserError(f"--drain-timeout {args.drain_timeout}: must be 0 or more seconds")
    init_ray(args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    coordinator = start_coordinator(APP)
    serve.run(build_app(cfg.model_dump(), coordinator_name(APP)), name=APP, route_prefix="/", blocking=False)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{host}:{args.port}"
    first = next(iter(infos))
    key = "" if cfg.insecure_local else f'-H "X-API-Key: ${cfg.api_key_env}" '
    print(f"pretextlab serve: {len(infos)} model(s) at {url}  (OpenAPI: {url}/docs)")
    for name, info in infos.items():
        print(f"  {name:<20} {info.id}  dim {info.dim}  {info.modality or ''}")
    print("try:")
    print(f"  curl -s {key}-F model={first} -F images=@tile.png {url}/v1/embeddings")
    print(f"  curl -s {key}{url}/v1/models")
    print("Ctrl-C stops the service.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print(
            f"stopping: no new requests; letting those in flight finish (up to {args.drain_timeout:g} s)...",
            file=sys.stderr,
            flush=True,
        )
        result = drain(coordinator, args.drain_timeout)
        left = f", {result.pending} still busy at the timeout" if result.pending else ""
        print(
            f"drained {result.drained} ingress replica(s) in {result.seconds:.1f} s{left}; shutting down",
            file=sys.stderr,
            flush=True,
        )
    finally:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    from pretextlab.core.cli import run_module

    sys.exit(run_module("pretextlab.serving.cli"))
