"""How much of an index a PostgreSQL server process read: for tests of how statements read.

`count_from` flushes the store connection's pending counters and zeroes the indexes'; the
work under test runs; `index_reads` ends that server process (it reports its counters as it
exits, and the call waits up to 10 s for that) and reads them. The store reconnects on its
next call.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from legato.store.database import Database
from legato.store.postgres import PostgresDatabase


async def count_from(database: Database, url: str, indexes: Sequence[str]) -> int:
    """Zero the read counters of `indexes`; return the pid of `database`'s server process."""
    assert isinstance(database, PostgresDatabase)
    # Counters reach the shared statistics when the server process next goes idle.
    await database.run("SELECT pg_stat_force_next_flush()")
    (backend,) = await database.backend_pids()
    with psycopg.connect(url, autocommit=True) as connection:
        for index in indexes:
            connection.execute("SELECT pg_stat_reset_single_table_counters(%s::regclass)", [index])
    return backend


def index_reads(url: str, backend: int, indexes: Sequence[str]) -> dict[str, int]:
    """End server process `backend` and return {index: index entries read since count_from}."""
    with psycopg.connect(url, autocommit=True) as connection:
        ended = connection.execute("SELECT pg_terminate_backend(%s, 10000)", [backend])
        assert ended.fetchone() == (True,)
        rows = connection.execute(
            "SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes "
            "WHERE indexrelname = ANY(%s)",
            [list(indexes)],
        ).fetchall()
    return {name: int(count) for name, count in rows}
