"""ViT backbones from timm, token-level forward passes, and safetensors encoder files with JSON cards."""

from pretextlab.models.encoder_io import EncoderCard, EncoderFileError, load_encoder, save_encoder
from pretextlab.models.vit import BackboneConfig, create_backbone, encode_tokens

__all__ = [
    "BackboneConfig",
    "EncoderCard",
    "EncoderFileError",
    "create_backbone",
    "encode_tokens",
    "load_encoder",
    "save_encoder",
]
