"""A backtest's store: a fresh SQLite file at the current schema, made by a copy.

Every backtest starts from an empty store. Migrating an empty file to the current schema
costs tens of milliseconds of Alembic work per run (more than a thousand bars of a
backtest); `fresh_store(path)` migrates one empty database per process, keeps its bytes,
and writes them to `path`. The file is the same as `legato db upgrade` would make: same
schema, same revision, no rows.

A backtest's store is scratch space: nothing resumes from it, so it is replaced whole.
That is also why a backtest may trade durability for speed while it writes the store, with
`use_as_scratch(database)` (from `legato.store.scratch`, re-exported here): no fsyncs and an
exclusive lock. The execution manager's journal still writes in the same order and the same
transactions; only the cost of each commit changes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from legato.store import migrate
from legato.store.scratch import SCRATCH_PRAGMAS, use_as_scratch

__all__ = ["SCRATCH_PRAGMAS", "fresh_store", "use_as_scratch"]

_template: bytes | None = None


def _migrated_empty_database() -> bytes:
    global _template
    if _template is None:
        with tempfile.TemporaryDirectory(prefix="legato-backtest-") as directory:
            path = Path(directory) / "template.db"
            migrate.upgrade(f"sqlite:///{path}")
            # The migration's connection is closed: the file holds everything (no WAL left).
            _template = path.read_bytes()
    return _template


def fresh_store(path: Path | str) -> str:
    """Replace `path` with an empty SQLite store at the current schema; return its URL."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    target.write_bytes(_migrated_empty_database())
    return f"sqlite:///{target}"
