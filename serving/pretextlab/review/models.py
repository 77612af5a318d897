"""The review database schema (SQLAlchemy 2 ORM). Alembic migrations in ``migrations/`` create it.

Public ids (``pid``) are random, opaque and the only ids a reviewer ever sees; integer primary keys
stay inside the server. Names that could unblind a reviewer (encoder names and sources, item ids,
modality) live only in organiser-facing columns and are never rendered on reviewer pages.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> _dt.datetime:
    """Timezone-aware UTC now (stored as naive UTC: SQLite has no time zones)."""
    return _dt.datetime.now(_dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # questions, map types, store, panel (organiser only)
    asset_root: Mapped[str] = mapped_column(Text)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    closed_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Encoder(Base):
    __tablename__ = "encoders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))  # organiser only
    source: Mapped[str] = mapped_column(Text)  # registry address or folder: organiser only
    objective: Mapped[str | None] = mapped_column(String(100), nullable=True)  # organiser only


class Image(Base):
    """One image of the panel: its display PNG and, per encoder and map type, a map PNG (see MapAsset)."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[str] = mapped_column(Text)  # organiser only (may carry PHI)
    modality: Mapped[str | None] = mapped_column(String(64), nullable=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    asset: Mapped[str] = mapped_column(String(64))  # random file key under the review's asset root


class MapAsset(Base):
    __tablename__ = "maps"
    __table_args__ = (UniqueConstraint("image_id", "encoder_id", "map_type"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    encoder_id: Mapped[int] = mapped_column(ForeignKey("encoders.id", ondelete="CASCADE"))
    map_type: Mapped[str] = mapped_column(String(32))
    asset: Mapped[str] = mapped_column(String(64))


class Reviewer(Base):
    __tablename__ = "reviewers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(200))  # organiser's name for the reviewer
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # sha256 of the invite token
    letters: Mapped[dict[str, str]] = mapped_column(JSON)  # encoder id (str) -> shuffled letter
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[_dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Case(Base):
    """One item of one reviewer's randomised queue: an image with one map (or two, pairwise)."""

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("reviewer_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # likert | pairwise
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    map_type: Mapped[str] = mapped_column(String(32))
    encoder_id: Mapped[int] = mapped_column(ForeignKey("encoders.id", ondelete="CASCADE"))
    encoder_b_id: Mapped[int | None] = mapped_column(ForeignKey("encoders.id", ondelete="CASCADE"), nullable=True)


class Session(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    role: Mapped[str] = mapped_column(String(16))  # reviewer | organiser
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id", ondelete="CASCADE"), nullable=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[_dt.datetime] = mapped_column(DateTime)


class Answer(Base):
    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("reviewer_id", "case_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id", ondelete="CASCADE"), index=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    preference: Mapped[str | None] = mapped_column(String(8), nullable=True)  # a | b | equal
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    region_x: Mapped[float | None] = mapped_column(Float, nullable=True)
    region_y: Mapped[float | None] = mapped_column(Float, nullable=True)
    nonce: Mapped[str] = mapped_column(String(64))  # the submission that wrote this version
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)


class AnswerHistory(Base):
    """Every version of every answer (the first included), written in the answer's transaction."""

    __tablename__ = "answer_history"
    __table_args__ = (UniqueConstraint("answer_id", "version"), UniqueConstraint("reviewer_id", "nonce"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    answer_id: Mapped[int] = mapped_column(ForeignKey("answers.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    nonce: Mapped[str] = mapped_column(String(64))
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    written_at: Mapped[_dt.datetime] = mapped_column(DateTime, default=utcnow)
