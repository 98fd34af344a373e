"""Schema migrations: bring any Legato database to the current schema with Alembic.

`upgrade(url)` is what `legato db upgrade` runs. Opening a store with `open_store(url)`
also runs it, unless `upgrade=False` is passed, so an embedded SQLite desk works on first
start; a shared PostgreSQL should be upgraded once, by an operator, before workers start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine

from legato.store.url import StoreUrl

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["current", "head", "upgrade"]

_SCRIPTS = Path(__file__).with_name("migrations")


# Alembic is imported inside the functions: it costs ~0.4 s, and a worker restarting after
# a crash should be claiming again (and reaping its predecessor's leases) without that wait.


def _config(url: StoreUrl) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.set_main_option("sqlalchemy.url", url.sqlalchemy_url.replace("%", "%%"))
    return config


def head() -> str:
    """Return the newest schema revision this version of Legato knows."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(_config(StoreUrl.parse("sqlite://"))).get_current_head()
    assert revision is not None  # the package always ships at least one migration
    return revision


def upgrade(url: str | StoreUrl, revision: str = "head") -> str:
    """Migrate the database at `url` to `revision` (default: the newest); return it.

    Idempotent: a database already at the target is left unchanged. Each migration runs in
    a transaction, so a failure leaves the schema at the previous revision.
    """
    from alembic import command

    store_url = url if isinstance(url, StoreUrl) else StoreUrl.parse(url)
    store_url.prepare()
    engine = create_engine(store_url.sqlalchemy_url)
    try:
        with engine.begin() as connection:
            config = _config(store_url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        return current(store_url) or ""
    finally:
        engine.dispose()


def current(url: str | StoreUrl) -> str | None:
    """Return the schema revision of the database at `url`, or None if it has none yet."""
    from alembic.runtime.migration import MigrationContext

    store_url = url if isinstance(url, StoreUrl) else StoreUrl.parse(url)
    engine = create_engine(store_url.sqlalchemy_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
