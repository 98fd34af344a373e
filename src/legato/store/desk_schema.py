"""The desk's decision audit tables, on the store's one shared `MetaData`.

`legato.trading.decision_log.DecisionLog` reads and writes them: one row per decision
pipeline run (keyed by its idempotency key, symbol and bar time), one row per model vote,
and one row per conflicted entry with its resolution. Decimals are exact TEXT, times POSIX
seconds from a `Clock`, JSON as TEXT. Migration 0004 creates them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from legato.store.schema import metadata

__all__ = ["desk_conflicts", "desk_decisions", "desk_votes"]

_Id = BigInteger().with_variant(Integer(), "sqlite")

desk_decisions = Table(
    "legato_desk_decisions",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("decision_key", String(200), nullable=False, unique=True),
    Column("symbol", String(64), nullable=False),
    Column("bar_time", Float, nullable=False),
    Column("strategy", String(200), nullable=False),
    Column("correlation_id", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("leading_action", String(16), nullable=False),
    Column("consensus", Float, nullable=False),
    Column("split", Boolean, nullable=False),
    Column("entry", Text),
    Column("stop", Text),
    Column("target", Text),
    Column("reasoning", Text, nullable=False),
    Column("analysis", Text, nullable=False, doc="JSON: technical and regime readings"),
    Column("status", String(32), nullable=False),
    Column("detail", Text),
    Column("intent_id", String(64)),
    Column("proposal", Text, doc="JSON: TradeProposal.as_dict()"),
    Column("risk", Text, doc="JSON: RiskDecision.as_dict()"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_legato_desk_decisions_symbol", "symbol", "bar_time"),
    Index("ix_legato_desk_decisions_correlation", "correlation_id"),
)

desk_votes = Table(
    "legato_desk_votes",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("decision_key", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("action", String(16), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("reasoning", Text, nullable=False),
    Column("fallback_reason", Text),
    Column("error", Text),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost", Text, nullable=False),
    Index("ix_legato_desk_votes_decision", "decision_key"),
)

desk_conflicts = Table(
    "legato_desk_conflicts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("decision_key", String(200), nullable=False),
    Column("symbol", String(64), nullable=False),
    Column("conflicts", Text, nullable=False, doc="JSON: [{kind, description}]"),
    Column("resolution", String(16), nullable=False),
    Column("size_factor", Text, nullable=False),
    Column("reasoning", Text, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("source", String(16), nullable=False),
    Column("fallback_reason", Text),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_legato_desk_conflicts_decision", "decision_key"),
    Index("ix_legato_desk_conflicts_symbol", "symbol", "created_at"),
)
