"""The PostgreSQL driver seam: statements marked ByKey run with sequential scans off.

Against the real server on loopback (skipped without one, failing under CI=true).
"""

from __future__ import annotations

from legato.store import PostgresDatabase
from legato.store.database import ByKey

SETTING = "SELECT current_setting('enable_seqscan')"


async def test_a_by_key_statement_runs_without_sequential_scans_and_the_setting_ends_with_it(
    postgres_server: str,
) -> None:
    database = PostgresDatabase(postgres_server)
    try:
        async with database.transaction() as tx:
            before, marked, after = await tx.fetch_many(
                [(SETTING, ()), (ByKey(SETTING), ()), (SETTING, ())], commit=True
            )
        async with database.transaction(durable=False) as tx:
            alone = await tx.fetch(ByKey(SETTING))
            # Consecutive ByKey statements, in one call or across calls, keep it off.
            run_of_two = await tx.fetch_many([(ByKey(SETTING), ()), (ByKey(SETTING), ())])
            third = await tx.fetch(ByKey(SETTING))
            following = await tx.fetch(SETTING)
        autocommitted = await database.run(ByKey(SETTING))
        next_statement = await database.run(SETTING)
    finally:
        await database.close()
    assert (before, marked, after) == ([("on",)], [("off",)], [("on",)])
    assert (alone, run_of_two, third, following) == (
        [("off",)],
        [[("off",)], [("off",)]],
        [("off",)],
        [("on",)],
    )
    assert (autocommitted, next_statement) == ([("off",)], [("on",)])


async def test_a_by_key_lookup_reads_the_index_of_a_table_never_analyzed(
    postgres_server: str,
) -> None:
    # A few thousand rows and no statistics: planned plainly, a lookup of 64 ids scans the
    # whole table; marked ByKey, it reads them through the primary key.
    database = PostgresDatabase(postgres_server)
    explain = (
        "EXPLAIN SELECT id FROM legato_t_by_key WHERE id = ANY(CAST(? AS bigint[])) FOR UPDATE"
    )
    ids = list(range(100, 164))
    try:
        async with database.transaction() as tx:
            await tx.execute(
                "CREATE TEMPORARY TABLE legato_t_by_key (id bigint PRIMARY KEY, v text)"
            )
            await tx.execute(
                "INSERT INTO legato_t_by_key "
                "SELECT g, repeat('x', 40) FROM generate_series(1, 3000) g"
            )
            plain = await tx.fetch(explain, [ids])
            marked = await tx.fetch(ByKey(explain), [ids])
    finally:
        await database.close()
    assert any("Seq Scan" in line for (line,) in plain)  # the problem is real here
    assert not any("Seq Scan" in line for (line,) in marked)
    assert any("legato_t_by_key_pkey" in line for (line,) in marked)
