"""Vision Transformer backbones, created through ``timm.create_model`` so a saved encoder loads back
with timm alone. Attention is timm's fused SDPA path (``F.scaled_dot_product_attention``)."""

from __future__ import annotations

from typing import Literal

__all__ = ["BackboneConfig", "VisionTransformer", "create_backbone", "encode_clip_tokens", "encode_tokens", "pool"]

import timm
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from timm.models.vision_transformer import VisionTransformer

#: Short names -> timm architectures (patch size and image size are overridden from the config).
ARCHS = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}


class BackboneConfig(BaseModel):
    """Which ViT, at which input geometry."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field("vit_tiny", description="vit_tiny | vit_small | vit_base, or any timm ViT name")
    img_size: int = Field(224, ge=16)
    patch_size: int = Field(16, ge=2)
    in_chans: Literal[1, 3] = 3
    global_pool: Literal["token", "avg"] = Field("token", description="CLS token or mean of patch tokens")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    dynamic_img_size: bool = Field(True, description="accept other input sizes (multi-crop local views)")
    depth: int | None = Field(None, ge=1, description="override the number of blocks (small test/demo models)")

    @model_validator(mode="after")
    def _check_geometry(self) -> BackboneConfig:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        return self

    @property
    def timm_name(self) -> str:
        return ARCHS.get(self.arch, self.arch)

    def timm_kwargs(self) -> dict:
        """Everything ``timm.create_model`` needs besides the name (stored on the encoder card)."""
        return {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": 0,
            "global_pool": self.global_pool,
            "drop_path_rate": self.drop_path_rate,
            "dynamic_img_size": self.dynamic_img_size,
            **({"depth": self.depth} if self.depth else {}),
        }


def create_backbone(cfg: BackboneConfig) -> VisionTransformer:
    """A randomly initialised timm ViT without a classifier head (``num_classes=0``)."""
    model = timm.create_model(cfg.timm_name, pretrained=False, **cfg.timm_kwargs())
    assert isinstance(model, VisionTransformer), type(model)
    return model


def encode_tokens(
    vit: VisionTransformer,
    images: torch.Tensor,
    keep: torch.Tensor | None = None,
    prefix: bool = True,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``vit`` on the patch tokens of ``images``, optionally only on the patches in ``keep``.

    ``keep`` is (B, K) indices into the N patches (row-major); the same positional embeddings as the
    full image are used, so a context block sees where it is (I-JEPA, MAE). Returns (B, P + K, D)
    normalised tokens with the P prefix (CLS) tokens first when ``prefix``, else (B, K, D).
    """
    x = vit.patch_embed(images)  # (B, N, D), or (B, h, w, D) with dynamic_img_size
    if mask is not None:  # iBOT: masked patches replaced by a learned token before position embedding
        assert mask_token is not None, "a mask needs its mask_token"
        m = mask.reshape(x.shape[:-1]).unsqueeze(-1)
        x = torch.where(m, mask_token.to(x.dtype).reshape(*([1] * (x.ndim - 1)), -1), x)
    x = vit._pos_embed(x)  # timm: adds positional embeddings and prepends the CLS token
    npt = vit.num_prefix_tokens
    head, patches = x[:, :npt], x[:, npt:]
    if keep is not None:
        patches = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    x = torch.cat([head, patches], dim=1) if prefix else patches
    x = vit.norm_pre(x)
    x = vit.blocks(x)
    return vit.norm(x)


def pool(vit: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The encoder's embedding from its tokens: CLS or mean of patch tokens, per ``global_pool``."""
    npt = vit.num_prefix_tokens
    if getattr(vit, "global_pool", "token") == "avg":
        return tokens[:, npt:].mean(dim=1)
    return tokens[:, 0]


def encode_clip_tokens(
    vit: VisionTransformer, clips: torch.Tensor, temporal: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Spatio-temporal tokens of clips (B, C, T, H, W) through a 2-D ViT (V-JEPA / VideoMAE style).

    Each frame is patch-embedded with the ViT's own spatial positions, plus a fixed temporal
    embedding ``temporal`` (T, D); the T*N tokens (frame-major) run through the ViT's blocks
    together, with the CLS token first. ``keep`` (B, K) selects tokens. Returns (B, 1 + K, D).
    """
    b, c, t, h, w = clips.shape
    frames = clips.transpose(1, 2).reshape(b * t, c, h, w)
    x = vit.patch_embed(frames)
    d = x.shape[-1]
    x = x.reshape(b * t, -1, d)
    n = x.shape[1]
    npt = vit.num_prefix_tokens
    no_embed_class = getattr(vit, "no_embed_class", False)
    if vit.pos_embed is None or vit.cls_token is None:
        raise ValueError("clip tokens need a ViT with absolute position embeddings and a CLS token")
    pos = vit.pos_embed if no_embed_class else vit.pos_embed[:, npt:]
    if pos.shape[1] != n:
        raise ValueError(f"clip frames give {n} patches, the ViT was built for {pos.shape[1]}: use img_size frames")
    x = (x + pos).reshape(b, t, n, d) + temporal[:t].to(x.dtype).view(1, t, 1, d)
    x = x.reshape(b, t * n, d)
    if keep is not None:
        x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, d))
    cls = vit.cls_token if no_embed_class else vit.cls_token + vit.pos_embed[:, :npt]
    x = torch.cat([cls.expand(b, -1, -1), x], dim=1)
    x = vit.norm_pre(x)
    x = vit.blocks(x)
    return vit.norm(x)


def sincos_1d(positions: int, dim: int) -> torch.Tensor:
    """Fixed sine-cosine embedding (positions, dim) as in MAE / Transformer."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = torch.arange(positions, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_3d(frames: int, height: int, width: int, dim: int) -> torch.Tensor:
    """(frames*height*width, dim): 2-D spatial plus 1-D temporal sine-cosine, frame-major."""
    spatial = sincos_2d(height, width, dim)
    if frames == 1:
        return spatial
    return (spatial[None] + sincos_1d(frames, dim)[:, None]).reshape(frames * height * width, dim)


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding (height*width, dim), row-major, as in MAE's decoder."""
    ey = sincos_1d(height, dim // 2)
    ex = sincos_1d(width, dim // 2)
    return torch.cat([ey[:, None, :].expand(-1, width, -1), ex[None, :, :].expand(height, -1, -1)], dim=-1).reshape(
        height * width, dim
    )
