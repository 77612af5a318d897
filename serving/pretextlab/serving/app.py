"""The Serve application builder: ``import_path: pretextlab.serving.app:build_app`` (see serving/serve_config.yaml).

``build_app(args)`` validates the args (:class:`~pretextlab.serving.config.ServeArgs`), resolves every
served model's registry spec to one pinned version (so all replicas serve the same weights until the next
deploy), and binds one encoder deployment per model behind the FastAPI ingress.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

from ray.serve import Application

from pretextlab.serving.config import (
    BatchingArgs,
    EncoderDeploymentArgs,
    IngressDeploymentArgs,
    ModelInfo,
    ServeArgs,
    ServingConfigError,
    parse_serve_args,
)

MIN_KEY_LENGTH = 16
ENCODER_BATCH_WAIT_S = 0.002  # enough for calls that queued during a forward to join the next one


def api_key_digest(cfg: ServeArgs) -> str | None:
    """sha256 of the API key from ``cfg.api_key_env`` (None when insecure_local); the key itself stays put."""
    if cfg.insecure_local:
        return None
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise ServingConfigError(
            f"{cfg.api_key_env} is not set: export an API key (e.g. "
            f"`export {cfg.api_key_env}=$(openssl rand -hex 24)`), or run insecure_local "
            f"(--insecure-local) on a laptop"
        )
    if len(key) < MIN_KEY_LENGTH:
        raise ServingConfigError(
            f"{cfg.api_key_env}: the API key is too short (use at least {MIN_KEY_LENGTH} characters)"
        )
    return hashlib.sha256(key.encode()).hexdigest()


def model_infos(cfg: ServeArgs) -> dict[str, ModelInfo]:
    """Served name -> pinned registry version and card, resolved once here."""
    from pretextlab.registry import EncoderRegistry

    reg = EncoderRegistry(cfg.registry, cache_dir=cfg.registry_cache_dir)
    infos = {}
    for m in cfg.models:
        ref = reg.resolve(m.spec)
        infos[m.name] = ModelInfo(
            name=m.name,
            id=ref.id,
            encoder=ref.name,
            version=str(ref.version),
            spec=m.spec,
            dim=int(ref.card.embed_dim),
            modality=ref.card.modality,
            card=ref.card.model_dump(mode="json"),
        )
    return infos


def build_app(args: dict[str, Any], drain_coordinator: str | None = None) -> Application:
    """A Serve application from the config's ``args`` (a dict, validated here with a clear error).

    ``drain_coordinator``: the named actor through which ``pretextlab serve`` drains the ingress on
    SIGTERM (``serving/drain.py``); None under ``serve deploy``."""
    from pretextlab.serving.api import EmbeddingAPI
    from pretextlab.serving.encoder import EncoderReplica

    cfg = parse_serve_args(args)
    digest = api_key_digest(cfg)
    infos = model_infos(cfg)
    handles = {}
    for m in cfg.models:
        threads = m.torch_threads or max(1, math.ceil(m.num_cpus))
        # @serve.deployment turns the class into a Deployment; mypy still sees the class (Ray's typing)
        handles[m.name] = EncoderReplica.options(  # type: ignore[attr-defined]
            name=f"encoder-{m.name}",
            max_ongoing_requests=m.max_ongoing_requests,
            autoscaling_config=m.autoscaling.to_serve(),
            ray_actor_options={
                "num_cpus": m.num_cpus,
                "num_gpus": m.num_gpus,
                **({"runtime_env": {"env_vars": {"OMP_WAIT_POLICY": m.omp_wait_policy}}} if m.omp_wait_policy else {}),
            },
            logging_config={"enable_access_log": False},  # internal calls; the ingress logs each request
        ).bind(
            EncoderDeploymentArgs(
                registry=cfg.registry,
                ref_id=infos[m.name].id,
                max_batch_images=m.max_batch_images,
                batch_wait_timeout_s=ENCODER_BATCH_WAIT_S,
                torch_threads=threads,
                cache_dir=cfg.registry_cache_dir,
            )
        )
    # the ingress batches per model (one encoder call per batch, one call in flight per encoder replica);
    # the encoder's @serve.batch merges calls from several ingress replicas
    ingress = IngressDeploymentArgs(
        infos=infos,
        stores=dict(cfg.stores),
        limits=cfg.limits,
        api_key_env=cfg.api_key_env,
        api_key_sha256=digest,
        insecure_local=cfg.insecure_local,
        drain_coordinator=drain_coordinator,
        batching={
            m.name: BatchingArgs(
                max_batch_images=m.max_batch_images,
                batch_wait_timeout_s=m.batch_wait_timeout_s,
                max_in_flight=max(1, m.autoscaling.max_replicas),
            )
            for m in cfg.models
        },
    )
    return EmbeddingAPI.options(  # type: ignore[attr-defined]  # a Deployment at run time, as above
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
        autoscaling_config=cfg.ingress.autoscaling.to_serve(),
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        logging_config={"enable_access_log": cfg.ingress.access_log},
    ).bind(handles, ingress)
