"""Database URLs, engines and migrations: SQLite file by default, PostgreSQL (psycopg 3) by URL.

``migrate(engine)`` runs the Alembic migrations shipped in this package (``migrations/``) up to head;
the app and every CLI command call it on start, so a new or old database is always current.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

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


def make_engine(db: str, pool_size: int = 20) -> Engine:
    """An engine for ``db``; SQLite gets WAL, foreign keys and a generous busy timeout.

    ``pool_size``: connections kept open, about the number of requests served at once (the app's
    threads); as many again may open for a burst (a request that opens a second session, the CLI).
    """
    url = database_url(db)
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")  # a committed answer survives power loss too
            cur.close()

        return engine
    # no pre-ping: it costs a round trip per checkout (several per page); stale connections are recycled
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


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


def serialise_sqlite_writes(sm: sessionmaker) -> sessionmaker:
    """Make the write transactions of ``sm``'s sessions take turns on a lock of this process (SQLite).

    SQLite lets one writer at a time hold the database; a second one waits in SQLite's busy handler,
    which polls with sleeps of up to 100 ms, so under many concurrent answers a write often sleeps far
    longer than the write before it held the database. Here a session takes the lock when it first
    flushes (where SQLite would take its write lock: the reads before it run outside any lock, as they
    did) and gives it back once its transaction has committed or rolled back, so the next writer wakes
    as soon as the database is free. Reads never wait (WAL). Every write is still its own committed
    transaction; other processes on the same file still meet the busy timeout.
    """
    lock = threading.Lock()

    @event.listens_for(sm, "before_flush")
    def _take(session: Session, _ctx: Any, _instances: Any) -> None:
        if not session.info.get("write_lock"):
            lock.acquire()
            session.info["write_lock"] = True

    @event.listens_for(sm, "after_transaction_end")  # after the commit or rollback, and on close
    def _give(session: Session, transaction: Any) -> None:
        if transaction.parent is None and session.info.pop("write_lock", False):
            lock.release()

    return sm


def open_database(db: str, pool_size: int = 20) -> tuple[Engine, sessionmaker]:
    """Engine + session factory for ``db``, migrated to head (SQLite: writes take turns in-process)."""
    engine = make_engine(db, pool_size)
    migrate(engine)
    sm = sessionmaker(engine, expire_on_commit=False)
    return engine, serialise_sqlite_writes(sm) if is_sqlite(str(engine.url)) else sm
