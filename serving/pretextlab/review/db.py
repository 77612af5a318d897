"""Database URLs, engines and migrations: SQLite file by default, PostgreSQL (psycopg 3) by URL.

``migrate(engine)`` runs the Alembic migrations shipped in this package (``migrations/``) up to head;
the app and every CLI command call it on start, so a new or old database is always current.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import sessionmaker

from pretextlab.core.errors import UserError

MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseError(UserError):
    """A database URL or file that cannot be used."""


def database_url(db: str) -> str:
    """``review.sqlite`` / ``sqlite:///x`` / ``postgresql://...`` -> a SQLAlchemy URL (psycopg 3 driver)."""
    db = str(db).strip()
    if not db:
        raise DatabaseError("--db: empty database name (give a SQLite file or a postgresql:// URL)")
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if "://" in db:
        try:
            url = make_url(db)
        except ArgumentError:
            raise DatabaseError(f"--db {db!r}: not a database URL") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise DatabaseError(f"--db {db!r}: only SQLite files and postgresql:// URLs are supported")
        return db
    path = Path(db).expanduser().absolute()
    if path.is_dir():
        raise DatabaseError(f"--db {db}: is a folder, expected a SQLite file")
    if not path.parent.is_dir():
        raise DatabaseError(f"--db {db}: folder {path.parent} does not exist")
    return f"sqlite:///{path}"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(db: str) -> Engine:
    """An engine for ``db``; SQLite gets WAL, foreign keys and a generous busy timeout."""
    url = database_url(db)
    if is_sqlite(url):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # no pre-ping: it costs a round trip per checkout (several per page); stale connections are recycled
    return create_engine(url, pool_size=20, max_overflow=20, pool_recycle=1800)


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema (Alembic ``upgrade head``); safe to run every start."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
        raise DatabaseError(f"database {engine.url.render_as_string(hide_password=True)}: {first}") from None


def open_database(db: str) -> tuple[Engine, sessionmaker]:
    """Engine + session factory for ``db``, migrated to head."""
    engine = make_engine(db)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
