"""Where trained encoders live: a versioned registry (local or s3) that pretraining writes and
serving, evaluation, sweeps and the study read."""

from pretextlab.registry.encoders import EncoderRef, EncoderRegistry, RegistryError

__all__ = ["EncoderRef", "EncoderRegistry", "RegistryError"]
