"""A SQLite store used as scratch space: faster commits, no durability promise.

A backtest writes a fresh store that nothing resumes from. `use_as_scratch(database)` sets
`SCRATCH_PRAGMAS` on such a store: `synchronous=OFF` (no fsync at WAL checkpoints: an OS
crash or power loss can corrupt the file, a process crash cannot) and
`locking_mode=EXCLUSIVE` (the one connection keeps the file lock until it closes; no other
connection may open the store meanwhile). What is written, and in which transactions, does
not change; only the cost of each commit does. Other backends are left as they are.
"""

from __future__ import annotations

from legato.store.database import Database

__all__ = ["SCRATCH_PRAGMAS", "use_as_scratch"]

SCRATCH_PRAGMAS = ("PRAGMA synchronous=OFF", "PRAGMA locking_mode=EXCLUSIVE")
"""What a scratch SQLite store gives up for speed (see the module docstring)."""


async def use_as_scratch(database: Database) -> None:
    """Set `SCRATCH_PRAGMAS` on a SQLite `database`; any other backend: no change."""
    if database.dialect != "sqlite":
        return
    for pragma in SCRATCH_PRAGMAS:
        await database.run(pragma)
