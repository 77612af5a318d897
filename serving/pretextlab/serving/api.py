"""The HTTP ingress (FastAPI on Ray Serve): API key, bounded bodies, decoding and validation, region reads,
and the calls to the model deployments.

Endpoints (OpenAPI at ``/docs``)::

    POST /v1/embeddings           images (multipart files, or one raw .npy/PNG/JPEG/TIFF/DICOM body) -> embeddings
    POST /v1/embeddings/regions   {store, item_id, patches | frames} -> embeddings of regions read server-side
    GET  /v1/models               served encoders with their cards, and the registered store names
    GET  /healthz, /readyz        liveness; readiness (every model deployment answers)

Every refusal is JSON ``{"error": code, "detail": message}`` with a 4xx status (503/504 only when the
service itself is unavailable or slow). The key is compared in constant time and never logged.
"""

# no `from __future__ import annotations`: Serve's class-based views need real annotations (Request)
import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import ValidationError
from ray import serve
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse, Response

from pretextlab.serving.batcher import ModelBatcher
from pretextlab.serving.config import BatchingArgs, IngressDeploymentArgs
from pretextlab.serving.decode import ImageLimits, check_total, decode_image
from pretextlab.serving.drain import DrainGate
from pretextlab.serving.errors import ApiError, bad_request, error_response, invalid, not_found, too_large
from pretextlab.serving.regions import RegionsRequest, StoreReader

log = logging.getLogger("ray.serve")

NPY = "application/x-npy"
RAW_TYPES = (
    "application/x-npy",
    "application/octet-stream",
    "image/png",
    "image/jpeg",
    "image/tiff",
    "application/dicom",
    "",
)

api = FastAPI(
    title="pretextlab embeddings",
    version="1.0",
    description="Embeddings of medical images from registered self-supervised encoders. "
    "Send the API key as `X-API-Key: <key>` or `Authorization: Bearer <key>`.",
    docs_url="/docs",
    redoc_url=None,
)
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")
_bearer = HTTPBearer(auto_error=False, description="the service's API key as a bearer token")
SECURED = [Security(_key_header), Security(_bearer)]  # documents the schemes; the check is EmbeddingAPI._authorize
GATE = DrainGate()  # one per replica process: requests in flight, and 503 shutting_down once draining
api.middleware("http")(GATE)

_EMBEDDINGS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string", "description": "served model name"},
                        "images": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "PNG, JPEG, TIFF, DICOM or .npy (uint8) files, one field per file",
                        },
                    },
                }
            },
            NPY: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "uint8 array (H, W), (H, W, C), (N, H, W) or (N, H, W, C)",
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "description": "one PNG/JPEG/TIFF/DICOM/.npy payload"}
            },
        },
    },
}
_REGIONS_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": RegionsRequest.model_json_schema()}}}
}


# -- errors as JSON ----------------------------------------------------------------------------------------
@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        detail = f"no route {request.method} {request.url.path} (see /docs)"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "invalid_input", _format_errors(exc.errors()))


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
    return error_response(500, "internal", "internal error (logged on the server)")


def _format_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)[:1000]


# -- request bodies -----------------------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as Content-Length or the bytes read pass ``limit``."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise bad_request(f"Content-Length {length[:40]!r} is not a number") from None
        if declared > limit:
            raise too_large(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _one_shot(body: bytes):
    yield body


async def parse_multipart(
    request: Request, body: bytes, max_files: int
) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """Form fields and files ``(label, bytes)`` of a multipart body already read (and bounded)."""
    try:
        form = await MultiPartParser(
            request.headers, _one_shot(body), max_files=max_files, max_fields=32, max_part_size=64 << 10
        ).parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise too_large(f"more than {max_files} files exceeds the limit of images per request") from None
        raise bad_request(f"malformed multipart body: {exc.message}") from None
    except Exception as exc:  # python-multipart raises its own errors on broken boundaries
        raise bad_request(f"malformed multipart body ({type(exc).__name__})") from None
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            name = (value.filename or key)[:80]
            files.append((f"{key}[{len(files)}] ({name!r})", await value.read()))
            await value.close()
        else:
            fields[key] = value
    return fields, files


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _group_by_shape(arrays: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Stack (n, H, W, C) arrays of the same image shape: (stacks, original row index per stack)."""
    if len(arrays) == 1:
        return [arrays[0]], [np.arange(len(arrays[0]))]
    rows: dict[tuple[int, ...], list[int]] = {}
    start = 0
    for a in arrays:
        rows.setdefault(tuple(a.shape[1:]), []).extend(range(start, start + len(a)))
        start += len(a)
    shapes: dict[tuple[int, ...], list[np.ndarray]] = {}
    for a in arrays:
        shapes.setdefault(tuple(a.shape[1:]), []).append(a)
    stacks = [parts[0] if len(parts) == 1 else np.concatenate(parts) for parts in shapes.values()]
    return stacks, [np.asarray(rows[s]) for s in shapes]


@serve.deployment(name="ingress", max_ongoing_requests=256)
@serve.ingress(api)
class EmbeddingAPI:
    """Authenticate, bound, decode and validate; then batch per model and call the model deployments."""

    def __init__(self, models: dict[str, Any], args: IngressDeploymentArgs):
        """``models``: served name -> the encoder deployment's handle; ``args``: everything else, typed."""
        self.models, self.infos = models, args.infos
        limits = args.limits
        self.batchers = {
            name: ModelBatcher(
                name,
                handle,
                timeout_s=float(limits.request_timeout_s),
                **args.batching.get(name, BatchingArgs()).model_dump(),
            )
            for name, handle in models.items()
        }
        self.stores = StoreReader(args.stores)
        self.limits = limits
        self.image_limits = ImageLimits(limits.max_images, limits.max_image_pixels, limits.max_total_pixels)
        api_key_env, api_key_sha256, insecure_local = args.api_key_env, args.api_key_sha256, args.insecure_local
        self.insecure = insecure_local
        key = os.environ.get(api_key_env)
        if key:  # the replica's own environment (a Kubernetes Secret) wins over the digest from the builder
            api_key_sha256 = hashlib.sha256(key.encode()).hexdigest()
        if not insecure_local and not api_key_sha256:
            raise RuntimeError(f"{api_key_env} is not set: the embedding API needs a key (or insecure_local)")
        self._key_digest = bytes.fromhex(api_key_sha256) if api_key_sha256 else b""
        GATE.watch(args.drain_coordinator)

    # -- helpers -----------------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self.insecure:
            return
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            raise ApiError(
                401,
                "unauthorized",
                "missing API key: send X-API-Key: <key> or Authorization: Bearer <key>",
                {"WWW-Authenticate": "Bearer"},
            )
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(digest, self._key_digest):
            raise ApiError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": "Bearer"})

    def _model(self, name: str | None) -> str:
        if not name:
            if len(self.models) == 1:
                return next(iter(self.models))
            raise invalid(f"model: required when several models are served ({', '.join(sorted(self.models))})")
        if name not in self.models:
            raise not_found(
                "unknown_model", f"model {name[:80]!r} is not served (served: {', '.join(sorted(self.models))})"
            )
        return name

    async def _embed(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        stacks, rows = _group_by_shape(arrays)
        outs = await asyncio.gather(*(self.batchers[name].embed(s) for s in stacks))
        if len(outs) == 1:
            return outs[0]
        result = np.empty((sum(len(o) for o in outs), outs[0].shape[1]), dtype=np.float32)
        for out, idx in zip(outs, rows, strict=True):
            result[idx] = out
        return result

    def _respond(
        self, request: Request, name: str, emb: np.ndarray, fmt: str | None, extra: dict[str, Any] | None = None
    ) -> Response:
        info = self.infos[name]
        if fmt == "npy" or (fmt is None and NPY in request.headers.get("accept", "")):
            return Response(
                npy_bytes(emb),
                media_type=NPY,
                headers={
                    "X-Model": name,
                    "X-Model-Id": info.id,
                    "X-Embedding-Dim": str(emb.shape[1]),
                    "X-Embedding-Count": str(emb.shape[0]),
                },
            )
        payload = {
            "model": name,
            "model_id": info.id,
            "version": info.version,
            "dim": int(emb.shape[1]),
            "count": int(emb.shape[0]),
            **(extra or {}),
            "embeddings": emb.tolist(),
        }
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")

    # -- routes ------------------------------------------------------------------------------------------
    @api.get("/healthz", summary="liveness")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="readiness: every model deployment answers")
    async def readyz(self) -> JSONResponse:
        async def ping(name: str) -> bool:
            try:
                return bool(await asyncio.wait_for(self.models[name].ready.remote(), 5.0))
            except Exception:
                return False

        names = sorted(self.models)
        states = dict(zip(names, await asyncio.gather(*(ping(n) for n in names)), strict=True))
        if all(states.values()):
            return JSONResponse({"status": "ready", "models": states})
        return error_response(
            503, "not_ready", "models not ready: " + ", ".join(n for n, ok in states.items() if not ok), models=states
        )

    @api.get("/v1/models", summary="served encoders with their cards", dependencies=SECURED)
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {
            "models": [self.infos[n].model_dump(mode="json") for n in sorted(self.infos)],
            "stores": sorted(self.stores.stores),
        }

    @api.post("/v1/embeddings", summary="embed images", dependencies=SECURED, openapi_extra=_EMBEDDINGS_BODY)
    async def embeddings(
        self,
        request: Request,
        model: str | None = Query(None, max_length=64),
        format: Literal["json", "npy"] | None = Query(None),
    ) -> Response:
        """Images as multipart files (field ``model`` names the model) or one raw body (``?model=``);
        JSON embeddings, or ``application/x-npy`` (float32 (N, D)) with ``Accept: application/x-npy``
        or ``?format=npy``."""
        self._authorize(request)
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "multipart/form-data" and ctype not in RAW_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"content type {ctype[:60]!r}: send multipart/form-data files or one application/x-npy (or image) body",
            )
        body = await read_body(request, int(self.limits.max_body_bytes))
        if not body:
            raise bad_request("empty body: send images")
        limits = self.image_limits
        if ctype == "multipart/form-data":
            fields, files = await parse_multipart(request, body, limits.max_images)
            del body
            if not files:
                raise bad_request("multipart body holds no files: send each image as a file field (e.g. images)")
            name = self._model(model or fields.get("model"))
            arrays = await asyncio.to_thread(lambda: [decode_image(data, label, limits) for label, data in files])
        else:
            name = self._model(model)
            arrays = (
                [decode_image(body, "body", limits)]
                if body[:6] == b"\x93NUMPY"
                else await asyncio.to_thread(lambda: [decode_image(body, "body", limits)])
            )
        check_total(arrays, limits)
        emb = await self._embed(name, arrays)
        return self._respond(request, name, emb, format)

    @api.post(
        "/v1/embeddings/regions",
        summary="embed regions of a catalog item read server-side",
        dependencies=SECURED,
        openapi_extra=_REGIONS_BODY,
    )
    async def regions(self, request: Request, format: Literal["json", "npy"] | None = Query(None)) -> Response:
        """Patches (level, x, y, size) of a slide or frames of a cine loop of an item in a registered store."""
        self._authorize(request)
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype not in ("application/json", ""):
            raise ApiError(415, "unsupported_media_type", f"content type {ctype[:60]!r}: send application/json")
        body = await read_body(request, int(self.limits.max_json_bytes))
        if not body:
            raise bad_request("empty body: send a JSON object {store, item_id, patches | frames}")
        try:
            req = RegionsRequest.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors()
            if errors and errors[0].get("type") == "json_invalid":
                raise bad_request(f"body is not valid JSON: {errors[0].get('msg')}") from None
            raise invalid(_format_errors(errors)) from None
        name = self._model(req.model)
        arrays, coords = await asyncio.to_thread(
            self.stores.read,
            req,
            int(self.limits.max_images),
            int(self.limits.max_region_size),
            int(self.limits.max_total_pixels),
        )
        emb = await self._embed(name, arrays)
        return self._respond(
            request, name, emb, format, {"store": req.store, "item_id": req.item_id, "regions": coords}
        )
