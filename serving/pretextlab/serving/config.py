"""The Serve application's arguments (the ``args:`` of ``serving/serve_config.yaml``), validated by pydantic.

String values may name environment variables as ``${VAR}`` or ``${VAR:-default}``; they are expanded
where the application is built (on the cluster for ``serve deploy``), so the config file never holds a
laptop path or a credential.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from pretextlab.core.config import format_validation_error
from pretextlab.core.errors import UserError
from pretextlab.core.names import NAME_RE, NAME_RULE

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ServingConfigError(UserError):
    """Serve application arguments that do not validate."""


def expand_env(value: Any) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in a string -> the environment's value (error when unset, no default)."""
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is None:
            raise ValueError(f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
        return default

    return _ENV_REF.sub(sub, value)


EnvStr = Annotated[str, BeforeValidator(expand_env)]


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r}: {NAME_RULE}")
    return value


def _check_uri(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("empty location")
    if "://" in value and not value.startswith(("s3://", "s3a://", "gs://", "gcs://", "file://")):
        raise ValueError(f"{value!r}: use a local path or s3:// (or gs://) URL")
    return value


class Autoscaling(BaseModel):
    """Ray Serve autoscaling for one deployment (min == max gives a fixed replica count)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(16, gt=0, description="requests in flight per replica to aim for")
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(120.0, ge=0)

    @model_validator(mode="after")
    def _order(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self

    def to_serve(self) -> dict[str, Any]:
        return {**self.model_dump(), "initial_replicas": max(1, self.min_replicas)}


class ModelArgs(BaseModel):
    """One served encoder: the name clients use and the registry spec it resolves to."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="name in requests and in /v1/models")
    spec: str = Field(description='registry spec: "name", "name:version", "name:latest" or "chosen:<modality>"')
    max_batch_images: int = Field(64, ge=1, le=4096, description="images per forward (@serve.batch size)")
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1, description="how long a batch waits to fill")
    max_ongoing_requests: int = Field(64, ge=1, description="requests a replica holds at once")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads (default: ceil(num_cpus), >= 1)")
    omp_wait_policy: Literal["PASSIVE", "ACTIVE"] | None = Field(
        "PASSIVE",
        description="OpenMP idle threads sleep (PASSIVE) instead of spinning: on shared cores spinning "
        "threads made forwards 10-25x slower (benchmarks/serving.py); None leaves it alone",
    )
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("spec")
    @classmethod
    def _spec(cls, value: str) -> str:
        name, _, version = value.partition(":")
        if name != "chosen":
            _check_name(name)
        elif not version:
            raise ValueError("chosen:<modality> needs a modality, e.g. chosen:histopathology")
        if any(c in version for c in "/\\") or ".." in version:
            raise ValueError(f"{value!r}: not a registry spec")
        return value


class IngressArgs(BaseModel):
    """The FastAPI ingress deployment (auth, decoding, region reads)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(0.5, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)
    access_log: bool = Field(
        True, description="one log line per request (method, path, status, latency; never headers)"
    )
    autoscaling: Autoscaling = Field(default_factory=lambda: Autoscaling(target_ongoing_requests=64))


class Limits(BaseModel):
    """What one request may carry; anything beyond is refused with 413 before it costs much."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(
        64 << 20, ge=1024, description="request body (checked on Content-Length and while reading)"
    )
    max_json_bytes: int = Field(1 << 20, ge=256, description="JSON body of /v1/embeddings/regions")
    max_images: int = Field(256, ge=1, description="images (or regions, or frames) per request")
    max_image_pixels: int = Field(4096 * 4096, ge=64, description="pixels of one image (height x width)")
    max_total_pixels: int = Field(64 << 20, ge=64, description="pixels of all images of a request")
    max_region_size: int = Field(2048, ge=8, description="edge of a region read from a store")
    request_timeout_s: float = Field(60.0, gt=0, description="time a request may wait for its embeddings")


class ServeArgs(BaseModel):
    """The arguments of ``pretextlab.serving.app:build_app``."""

    model_config = ConfigDict(extra="forbid")

    registry: EnvStr = Field(description="encoder registry root: local path or s3://bucket/prefix")
    registry_cache_dir: EnvStr | None = Field(
        None, description="local cache of s3 encoders (default ~/.cache/pretextlab)"
    )
    models: list[ModelArgs] = Field(min_length=1)
    stores: dict[str, EnvStr] = Field(default_factory=dict, description="store name -> local path or s3:// prefix")
    api_key_env: str = Field("PRETEXTLAB_API_KEY", description="environment variable holding the API key")
    insecure_local: bool = Field(False, description="no API key (a laptop only)")
    limits: Limits = Field(default_factory=Limits)
    ingress: IngressArgs = Field(default_factory=IngressArgs)

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        return _check_uri(value)

    @field_validator("stores")
    @classmethod
    def _stores(cls, value: dict[str, str]) -> dict[str, str]:
        for name, uri in value.items():
            _check_name(name)
            _check_uri(uri)
        return {k: v.strip() for k, v in value.items()}

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not ENV_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _unique(self) -> ServeArgs:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: names must be unique (repeated: {', '.join(dupes)})")
        return self


def parse_serve_args(args: dict[str, Any] | ServeArgs | None, source: str = "serve args") -> ServeArgs:
    """Validate ``args`` (a dict from the Serve config or the CLI); one clear error naming each bad field."""
    if isinstance(args, ServeArgs):
        return args
    if args is not None and not isinstance(args, dict):
        raise ServingConfigError(f"{source}: expected a mapping of fields, got {type(args).__name__}")
    try:
        return ServeArgs.model_validate(dict(args or {}))
    except ValidationError as exc:
        raise ServingConfigError(format_validation_error(exc, source)) from None


# --- what the application builder hands each deployment (typed, instead of positional .bind lists) -----


class ModelInfo(BaseModel):
    """A served model pinned to one registry version at deploy time (also the body of ``/v1/models``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    id: str
    encoder: str
    version: str
    spec: str
    dim: int
    modality: str | None = None
    card: dict[str, Any]


class EncoderDeploymentArgs(BaseModel):
    """The constructor arguments of one encoder deployment (``EncoderReplica``)."""

    model_config = ConfigDict(extra="forbid")

    registry: str
    ref_id: str = Field(description="the pinned registry version, name:version")
    max_batch_images: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    torch_threads: int | None = Field(None, ge=1)
    cache_dir: str | None = None
    device: str | None = None


class BatchingArgs(BaseModel):
    """The ingress's per-model batching: images per encoder call, wait to fill, calls in flight."""

    model_config = ConfigDict(extra="forbid")

    max_batch_images: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_in_flight: int = Field(1, ge=1)


class IngressDeploymentArgs(BaseModel):
    """The constructor arguments of the ingress (``EmbeddingAPI``), besides the encoder handles."""

    model_config = ConfigDict(extra="forbid")

    infos: dict[str, ModelInfo]
    stores: dict[str, str] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    api_key_env: str = "PRETEXTLAB_API_KEY"
    api_key_sha256: str | None = None
    insecure_local: bool = False
    batching: dict[str, BatchingArgs] = Field(default_factory=dict)
    drain_coordinator: str | None = None  # the named actor `pretextlab serve` drains through (serving/drain.py)
