"""Multi-row INSERTs and UPDATEs on PostgreSQL as one statement over one array per column (`unnest`).

SQLAlchemy's multi-row INSERT binds and type-processes every value of every row in Python and renders a new SQL text
(so a new prepared statement) for each number of rows; over arrays the statement's text is the same whatever the
batch, asyncpg encodes each column's list in one go, and the values are those SQLAlchemy's types would have bound
(JSON columns as `json.dumps` text, aware datetimes as they are). The hot path of a decision uses these on
PostgreSQL; SQLite keeps the Core statements.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

# Column kinds: the array's element type; `json` travels as text and is cast per row.
_ARRAY_TYPE = {"text": "text", "int": "int4", "float": "float8", "time": "timestamptz", "json": "text", "bool": "bool"}


@dataclass(frozen=True, slots=True)
class ArrayStatement:
    """A statement over arrays: `sql`, and the columns (name, kind) whose values it binds, in order."""

    sql: str
    columns: tuple[tuple[str, str], ...]

    def arrays(self, rows: Sequence[dict]) -> tuple[list, ...]:
        """One list per column from the rows' values (JSON columns serialised as SQLAlchemy's JSON type does)."""
        out = []
        for name, kind in self.columns:
            if kind == "json":
                out.append([json.dumps(row[name]) for row in rows])
            else:
                out.append([row[name] for row in rows])
        return tuple(out)

    async def execute(self, connection, rows: Sequence[dict]):
        """Run it on `connection` (an AsyncConnection in the caller's transaction) with one array per column."""
        return await connection.exec_driver_sql(self.sql, self.arrays(rows))


def _select_list(columns: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"u.{name}::json" if kind == "json" else f"u.{name}" for name, kind in columns)


def _unnest(columns: Sequence[tuple[str, str]], *, ordinality: bool) -> str:
    arrays = ", ".join(f"${i}::{_ARRAY_TYPE[kind]}[]" for i, (_, kind) in enumerate(columns, start=1))
    names = ", ".join(name for name, _ in columns)
    if ordinality:
        return f"unnest({arrays}) WITH ORDINALITY AS u({names}, row_number)"
    return f"unnest({arrays}) AS u({names})"


def insert(table: str, columns: Sequence[tuple[str, str]], *, returning: Sequence[str] = (), on_conflict_do_nothing: bool = False) -> ArrayStatement:
    """INSERT INTO table (columns) SELECT .. FROM unnest(..), rows in the order given (ORDER BY their position: a
    serial id is drawn in that order, as SQLAlchemy's sorted multi-row INSERT relies on too)."""
    columns = tuple(columns)
    sql = (
        f"INSERT INTO {table} ({', '.join(name for name, _ in columns)}) "
        f"SELECT {_select_list(columns)} FROM {_unnest(columns, ordinality=True)} ORDER BY u.row_number"
    )
    if on_conflict_do_nothing:
        sql += " ON CONFLICT DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    return ArrayStatement(sql=sql, columns=columns)


def update(table: str, key: tuple[str, str], columns: Sequence[tuple[str, str]]) -> ArrayStatement:
    """UPDATE table SET columns FROM unnest(..) WHERE table.key = the row's key: each row its own values."""
    columns = tuple(columns)
    sets = ", ".join(f"{name} = u.{name}::json" if kind == "json" else f"{name} = u.{name}" for name, kind in columns)
    sql = f"UPDATE {table} SET {sets} FROM {_unnest((key, *columns), ordinality=False)} WHERE {table}.{key[0]} = u.{key[0]}"
    return ArrayStatement(sql=sql, columns=(key, *columns))
