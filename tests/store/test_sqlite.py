"""The embedded backend's parameter binding: NULLs and flags take the short way, unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from legato.store.sqlite import SqliteDatabase


async def test_none_and_bools_are_stored_as_null_and_integers(tmp_path: Path) -> None:
    database = SqliteDatabase(str(tmp_path / "binding.db"))
    try:
        await database.run("CREATE TABLE t (a, b, c)")
        async with database.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (?, ?, ?)", (None, True, False))
            rows = await tx.fetch("SELECT typeof(a), typeof(b), typeof(c), a, b, c FROM t")
    finally:
        await database.close()
    assert rows == [("null", "integer", "integer", None, 1, 0)]


def test_none_and_bool_have_adapters_so_binding_skips_the_protocol_lookups() -> None:
    # Without them sqlite3 looks up __adapt__ and __conform__ for every NULL and flag bound,
    # building and clearing an AttributeError each time (about a quarter of a bind's cost).
    protocol = sqlite3.PrepareProtocol
    assert sqlite3.adapters[(type(None), protocol)](None) is None
    assert sqlite3.adapters[(bool, protocol)](True) == 1
