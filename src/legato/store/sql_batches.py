"""SQL for batches: placeholders, IN lists and row sets, the same on SQLite and PostgreSQL.

On PostgreSQL a batch travels as one array parameter per column, so a statement's text does
not change with the batch size: psycopg parses it once and the server plans it once. SQLite
gets plain placeholder lists. Statements use `?` placeholders everywhere (the PostgreSQL
driver wrapper translates them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

__all__ = ["chunks", "in_list", "placeholders", "row_set"]

T = TypeVar("T")


def placeholders(count: int) -> str:
    """`?, ?, ...` for `count` parameters."""
    return ", ".join("?" * count)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_list(
    column: str, values: Sequence[Any], *, postgres: bool, sql_type: str | None = None
) -> tuple[str, list[Any]]:
    """`column IN (...)` and its parameters; one array parameter on PostgreSQL.

    With `sql_type` (values all of the matching Python type, as for `row_set`'s `binary`),
    PostgreSQL gets the array typed and in binary format, cheaper to encode.
    """
    if postgres and sql_type is not None:
        return f"{column} = ANY(CAST(%b AS {sql_type}[]))", [list(values)]
    if postgres:
        return f"{column} = ANY(?)", [list(values)]
    return f"{column} IN ({placeholders(len(values))})", list(values)


def row_set(
    types: Sequence[str], rows: Sequence[Sequence[Any]], *, postgres: bool, binary: bool = False
) -> tuple[str, list[Any]]:
    """A table expression `v` with columns column1..N holding `rows`, and its parameters.

    PostgreSQL gets `unnest` over one typed array per column; a single row (the common case
    at low rates: one submit, one completion) gets typed scalar parameters instead, several
    times cheaper to encode than arrays. SQLite gets a VALUES list.

    `binary` sends PostgreSQL's arrays in binary format, about 2.5 times cheaper for the
    driver to encode than text (no quoting and escaping per element). The caller must then
    give each column values of one Python type that fits its SQL type (int for integer
    types, float for double precision, str for text, bool for boolean; None anywhere):
    the driver picks one binary encoder per array.
    """
    names = ", ".join(f"column{index + 1}" for index in range(len(types)))
    if postgres and len(rows) == 1:
        casts = ", ".join(f"CAST(? AS {sql_type})" for sql_type in types)
        return f"(VALUES ({casts})) AS v({names})", list(rows[0])
    if postgres:
        # `%b` passes the driver wrapper's `?` translation untouched and asks psycopg for
        # binary format.
        marker = "%b" if binary else "?"
        arrays = ", ".join(f"CAST({marker} AS {sql_type}[])" for sql_type in types)
        return f"unnest({arrays}) AS v({names})", [
            list(column) for column in zip(*rows, strict=True)
        ]
    row = f"({placeholders(len(types))})"
    return "(VALUES " + ", ".join(row for _ in rows) + ") AS v", [
        value for values in rows for value in values
    ]
