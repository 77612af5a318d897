"""Names that become folder, registry and deployment names: one short, path-safe slug rule."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RULE = "use 1-64 of a-z 0-9 . _ - starting with a letter or digit"


def check_name(value: str) -> str:
    """``value`` if it is a valid name, else ValueError (pydantic validators turn it into a field error)."""
    if not NAME_RE.match(value):
        raise ValueError(NAME_RULE)
    return value


#: a pydantic field type for such names: ``name: Name``
Name = Annotated[str, AfterValidator(check_name)]
