"""Settings of one review server (validated at the edge: unknown fields are an error)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pretextlab.review.db import database_url, is_sqlite


class ReviewSettings(BaseModel):
    """Where the data lives, who the organiser is, and the request limits."""

    model_config = ConfigDict(extra="forbid")

    db: str = Field("review.sqlite", description="SQLite file or postgresql:// URL")
    assets: str | None = Field(
        None,
        description="folder or s3:// prefix for rendered images and maps (default: <db>-assets beside a SQLite file)",
    )
    api_key_env: str = "PRETEXTLAB_API_KEY"
    admin_token_sha256: str | None = Field(None, description="sha256 hex of an extra organiser token")
    session_hours: float = Field(12.0, gt=0)
    secure_cookies: bool | None = Field(None, description="None: Secure when the request came over https")
    trust_forwarded_proto: bool = Field(True, description="honour X-Forwarded-Proto from the proxy in front")
    login_per_minute: int = Field(30, ge=1, description="invite/organiser logins per client address per minute")
    answers_per_minute: int = Field(240, ge=1, description="answers per reviewer session per minute")
    base_url: str | None = Field(None, description="public URL prefix for invite links (default: the request's)")
    threads: int = Field(
        8,
        ge=1,
        le=256,
        description="requests handled at once (worker threads; also the size of the database connection pool)",
    )

    def asset_root(self) -> str:
        """The folder/prefix for rendered assets."""
        if self.assets:
            from pretextlab.storage import fs as sfs

            return sfs.normalize(self.assets)
        url = database_url(self.db)
        if not is_sqlite(url):
            from pretextlab.core.errors import UserError

            raise UserError("--assets: a PostgreSQL review needs an asset folder or s3:// prefix")
        path = Path(url.removeprefix("sqlite:///"))
        return str(path.with_name(path.stem + "-assets"))
