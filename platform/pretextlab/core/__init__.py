"""Shared foundations: user-facing errors and typed, validated configuration."""

from pretextlab.core.config import ConfigError, load_config, parse_overrides
from pretextlab.core.errors import UserError

__all__ = ["ConfigError", "UserError", "load_config", "parse_overrides"]
