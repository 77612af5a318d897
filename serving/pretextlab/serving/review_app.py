"""The review web app as a Ray Serve application (a second application behind the same HTTP proxy).

    applications:
      - name: pretextlab-review
        route_prefix: /review        # or its own host name at the ingress
        import_path: pretextlab.serving.review_app:build_review_app
        args:
          db: ${PRETEXTLAB_REVIEW_DB}            # postgresql://... from a Secret (never in the file)
          assets: ${PRETEXTLAB_REVIEW_ASSETS}    # s3://bucket/review-assets
          base_url: https://review.example.org/review

The app is exactly :func:`pretextlab.review.create_app` (built on each replica at start, from the
validated ``args``); the organiser key is read from ``api_key_env`` on the replica. Use PostgreSQL
with more than one replica (a SQLite file is one writer on one disk), and keep the rate limits in
mind: they count per replica.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application

from pretextlab.core.errors import UserError


class ReviewAppArgs(BaseModel):
    """``args`` of the Serve application: the review settings plus replica sizing."""

    model_config = ConfigDict(extra="forbid")

    db: str = Field(..., min_length=1)
    assets: str | None = None
    base_url: str | None = None
    api_key_env: str = "PRETEXTLAB_API_KEY"
    admin_token_sha256: str | None = None
    session_hours: float = 12.0
    login_per_minute: int = 30
    answers_per_minute: int = 240
    threads: int = Field(8, ge=1, le=256)  # requests one replica serves at once (and its pooled connections)
    num_replicas: int = Field(1, ge=1, le=16)
    num_cpus: float = Field(0.5, gt=0)


def review_settings(args: ReviewAppArgs) -> dict[str, Any]:
    """The :class:`~pretextlab.review.settings.ReviewSettings` fields of ``args`` (a plain dict: picklable)."""
    return args.model_dump(exclude={"num_replicas", "num_cpus"})


def build_asgi(settings: dict[str, Any]):
    from pretextlab.review.app import create_app
    from pretextlab.review.settings import ReviewSettings

    return create_app(ReviewSettings.model_validate(settings))


@serve.ingress()
class ReviewIngress:
    """One replica: holds the settings; Serve asks it for the ASGI app once, at replica start."""

    def __init__(self, settings: dict[str, Any]):
        self._settings = settings

    def __serve_build_asgi_app__(self):
        return build_asgi(self._settings)


def build_review_app(args: dict[str, Any]) -> Application:
    """The Serve application from the config's ``args`` (validated here: a bad field is a one-line error)."""
    try:
        cfg = ReviewAppArgs.model_validate(args or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"review app args: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    return serve.deployment(
        name="review",
        num_replicas=cfg.num_replicas,
        ray_actor_options={"num_cpus": cfg.num_cpus},
        logging_config={"enable_access_log": False},  # invite links carry a secret
    )(ReviewIngress).bind(review_settings(cfg))
