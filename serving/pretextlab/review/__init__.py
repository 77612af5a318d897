"""Blinded clinician review of encoder feature maps: a web app, its database and its statistics.

``create_app(settings)`` builds the FastAPI app (see :mod:`pretextlab.review.app`);
``pretextlab.review.cli`` is the ``pretextlab review`` command; :mod:`pretextlab.review.analysis` turns
answers into mean ratings with CIs, Bradley-Terry strengths and agreement statistics.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReviewSettings", "create_app"]


def __getattr__(name: str) -> Any:  # lazy: `import pretextlab.review.analysis` must not pull FastAPI
    if name == "create_app":
        from pretextlab.review.app import create_app

        return create_app
    if name == "ReviewSettings":
        from pretextlab.review.settings import ReviewSettings

        return ReviewSettings
    raise AttributeError(name)
