"""The decision log on both store backends: claims are once per key, records round-trip."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from legato.kernel.clock import Clock
from legato.kernel.errors import ValidationError
from legato.store.database import Database, Row, Transaction
from legato.trading.agents.models import ModelDecision, TradeAction
from legato.trading.conflicts import Conflict, ConflictKind, Resolution, ResolutionAction
from legato.trading.decision_log import (
    ConflictRecord,
    DecisionLog,
    DecisionRecord,
    PipelineStatus,
)

from .desk_harness import empty_desk_tables

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def desk_url(store_url: str) -> str:
    """An empty, migrated store on each backend."""
    empty_desk_tables(store_url)
    return store_url


def record(key: str = "BTC@1", bar: int = 0, correlation: str = "c1") -> DecisionRecord:
    return DecisionRecord(
        key=key,
        symbol="BTC",
        bar_time=T0 + timedelta(minutes=5 * bar),
        strategy="consensus",
        correlation_id=correlation,
        action=TradeAction.BUY,
        leading_action=TradeAction.BUY,
        consensus=0.75,
        split=False,
        entry=Decimal("100.10"),
        stop=Decimal("98.00"),
        target=Decimal("104.30"),
        reasoning="3 of 4 models chose BUY",
        analysis={"technical": {"bias": "long"}, "regime": {"regime": "trending_bull"}},
        status=PipelineStatus.CLAIMED,
        created_at=T0,
        updated_at=T0,
    )


VOTES = (
    ModelDecision("trend", TradeAction.BUY, 0.8, "trend up"),
    ModelDecision(
        "llm",
        TradeAction.HOLD,
        0.3,
        "fallback",
        fallback_reason="slow",
        prompt_tokens=10,
        completion_tokens=2,
        cost=Decimal("0.0001"),
    ),
)


async def test_a_claimed_decision_and_its_votes_round_trip_exactly(
    clock: Clock, desk_url: str
) -> None:
    log = await DecisionLog.open(desk_url, upgrade=False)
    try:
        assert await log.claim(record(), VOTES)
        stored = await log.decision("BTC@1")
        votes = await log.votes("BTC@1")
    finally:
        await log.close()
    assert stored == record()
    assert tuple(votes) == VOTES


def many_votes(count: int) -> tuple[ModelDecision, ...]:
    """`count` votes that all differ, so a reordering or a mix-up shows."""
    actions = (TradeAction.BUY, TradeAction.SELL, TradeAction.HOLD)
    return tuple(
        ModelDecision(
            f"model-{index}",
            actions[index % 3],
            (index % 101) / 100,
            f"reason {index}",
            fallback_reason=f"fallback {index}" if index % 2 else None,
            error=f"error {index}" if index % 5 == 0 else None,
            prompt_tokens=index,
            completion_tokens=2 * index,
            cost=Decimal(index) / Decimal(10_000),
        )
        for index in range(count)
    )


@pytest.mark.parametrize("count", [0, 1, 7, 1201])
async def test_a_decision_with_n_votes_reads_them_back_in_order_and_exactly(
    clock: Clock, desk_url: str, count: int
) -> None:
    # 1201 crosses the per-statement chunk of the votes insert twice.
    votes = many_votes(count)
    log = await DecisionLog.open(desk_url, upgrade=False, no_trade_batch=2)
    try:
        assert await log.claim(record("BTC@1"), votes)
        # Batched no-trade runs write several decisions' votes in one transaction.
        assert await log.record_no_trade(record("BTC@2", bar=1, correlation="c2"), votes[::-1])
        assert await log.record_no_trade(record("BTC@3", bar=2, correlation="c3"), votes[:3])
        claimed = await log.votes("BTC@1")
        second = await log.votes("BTC@2")
        third = await log.votes("BTC@3")
    finally:
        await log.close()
    assert tuple(claimed) == votes
    assert tuple(second) == votes[::-1]
    assert tuple(third) == votes[:3]


async def test_a_claim_whose_votes_fail_to_insert_stores_nothing(
    clock: Clock, desk_url: str
) -> None:
    # A vote without reasoning breaks the table's NOT NULL: the decision goes with it.
    broken = (*VOTES, dataclasses.replace(VOTES[0], reasoning=None))  # type: ignore[arg-type]
    log = await DecisionLog.open(desk_url, upgrade=False)
    try:
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.NotNullViolation)):
            await log.claim(record(), broken)
        assert not await log.has("BTC@1")
        assert await log.votes("BTC@1") == []
        assert await log.claim(record(), VOTES)
        votes = await log.votes("BTC@1")
    finally:
        await log.close()
    assert tuple(votes) == VOTES


async def test_a_second_claim_of_the_same_key_writes_nothing(clock: Clock, desk_url: str) -> None:
    log = await DecisionLog.open(desk_url, upgrade=False)
    try:
        assert await log.claim(record(), VOTES)
        assert not await log.claim(record(correlation="c2"), VOTES)
        stored = await log.decision("BTC@1")
        votes = await log.votes("BTC@1")
    finally:
        await log.close()
    assert stored is not None
    assert stored.correlation_id == "c1"
    assert len(votes) == 2


async def test_finish_and_conflicts_are_queryable_by_symbol_status_and_correlation(
    clock: Clock, desk_url: str
) -> None:
    resolution = Resolution(
        ResolutionAction.MODIFY_SIZE, Decimal("0.5"), "thin agreement", 0.6, "llm"
    )
    conflict = ConflictRecord(
        "BTC@2",
        "BTC",
        (Conflict(ConflictKind.WEAK_CONSENSUS, "0.55 < 0.6"),),
        resolution,
        T0 + timedelta(minutes=5),
    )
    log = await DecisionLog.open(desk_url, upgrade=False)
    try:
        await log.claim(record(), ())
        await log.claim(record("BTC@2", bar=1, correlation="c2"), ())
        await log.record_conflict(conflict)
        await log.finish(
            "BTC@2",
            PipelineStatus.EXECUTED,
            T0 + timedelta(minutes=6),
            detail="bracketed",
            intent_id="abc",
            proposal={"symbol": "BTC", "quantity": "0.5"},
        )
        newest_first = await log.decisions(symbol="BTC")
        executed = await log.decisions(status=PipelineStatus.EXECUTED)
        traced = await log.by_correlation("c2")
        conflicts = await log.conflicts(symbol="BTC")
    finally:
        await log.close()
    assert [r.key for r in newest_first] == ["BTC@2", "BTC@1"]
    assert [r.key for r in executed] == ["BTC@2"]
    assert traced is not None
    assert (traced.intent_id, traced.detail, traced.proposal) == (
        "abc",
        "bracketed",
        {"symbol": "BTC", "quantity": "0.5"},
    )
    assert conflicts == [conflict]
    assert dataclasses.replace(traced, status=PipelineStatus.CLAIMED).entry == Decimal("100.10")


async def test_a_bad_limit_is_refused(clock: Clock, desk_url: str) -> None:
    log = await DecisionLog.open(desk_url, upgrade=False)
    try:
        with pytest.raises(ValidationError) as raised:
            await log.decisions(limit=0)
    finally:
        await log.close()
    assert raised.value.field == "limit"


def no_trade(key: str, bar: int) -> DecisionRecord:
    return dataclasses.replace(
        record(key, bar=bar, correlation=f"c-{key}"),
        action=TradeAction.HOLD,
        leading_action=TradeAction.HOLD,
        status=PipelineStatus.NO_TRADE,
        detail="4 of 6 models chose HOLD",
    )


async def test_no_trade_runs_are_written_together_when_the_batch_fills(
    clock: Clock, desk_url: str
) -> None:
    log = await DecisionLog.open(desk_url, upgrade=False, no_trade_batch=3)
    reader = await DecisionLog.open(desk_url, upgrade=False)
    try:
        assert await log.record_no_trade(no_trade("BTC@1", 0), VOTES)
        assert await log.record_no_trade(no_trade("BTC@2", 1), VOTES)
        before = await reader.decisions()
        assert await log.record_no_trade(no_trade("BTC@3", 2), VOTES)
        after = await reader.decisions()
        votes = await reader.votes("BTC@2")
    finally:
        await reader.close()
        await log.close()
    assert before == []
    assert [r.key for r in after] == ["BTC@3", "BTC@2", "BTC@1"]
    assert after[1] == no_trade("BTC@2", 1)
    assert tuple(votes) == VOTES


async def test_a_batched_run_counts_as_stored_for_idempotency(clock: Clock, desk_url: str) -> None:
    log = await DecisionLog.open(desk_url, upgrade=False)
    try:
        assert await log.record_no_trade(no_trade("BTC@1", 0), VOTES)
        assert await log.has("BTC@1")
        assert not await log.record_no_trade(no_trade("BTC@1", 0), VOTES)
        assert not await log.claim(record("BTC@1"), VOTES)
        assert log.batched == 1
    finally:
        await log.close()


async def test_queries_and_close_write_the_batch_first(clock: Clock, desk_url: str) -> None:
    log = await DecisionLog.open(desk_url, upgrade=False)
    try:
        await log.record_no_trade(no_trade("BTC@1", 0), ())
        seen = await log.decision("BTC@1")
        await log.record_no_trade(no_trade("BTC@2", 1), ())
    finally:
        await log.close()
    reader = await DecisionLog.open(desk_url, upgrade=False)
    try:
        stored = [r.key for r in await reader.decisions()]
    finally:
        await reader.close()
    assert seen == no_trade("BTC@1", 0)
    assert stored == ["BTC@2", "BTC@1"]


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValidationError, match="no_trade_batch"):
        DecisionLog(database=None, no_trade_batch=0)  # type: ignore[arg-type]


async def test_buffered_claims_wait_in_the_batch_and_store_what_a_live_claim_stores(
    clock: Clock, desk_url: str
) -> None:
    # The same runs through a live log (each claim written at once) and a buffered one (a
    # backtest's): the buffered one writes nothing before its batch, then the same rows.
    async def runs(log: DecisionLog, prefix: str) -> tuple[bool, bool]:
        claimed = await log.claim(record(f"{prefix}@1", 0), VOTES)
        at = T0 + timedelta(minutes=1)
        await log.finish(
            f"{prefix}@1",
            PipelineStatus.CLAIMED,
            at,
            intent_id="intent-1",
            proposal={"quantity": "0.010"},
            risk={"approved": True},
        )
        await log.finish(f"{prefix}@1", PipelineStatus.EXECUTED, at + timedelta(minutes=1))
        await log.record_no_trade(no_trade(f"{prefix}@2", 1), VOTES)
        again = await log.claim(record(f"{prefix}@1", 0), VOTES)
        return claimed, again

    live = await DecisionLog.open(desk_url, upgrade=False)
    buffered = await DecisionLog.open(desk_url, upgrade=False, buffer_claims=True)
    reader = await DecisionLog.open(desk_url, upgrade=False)
    try:
        live_claims = await runs(live, "L")
        await live.flush()
        buffered_claims = await runs(buffered, "B")
        before_flush = [r.key for r in await reader.decisions()]
        seen = await buffered.has("B@1")
        written = await buffered.flush()
        stored = {r.key: r for r in await reader.decisions()}
        votes = (await reader.votes("L@1"), await reader.votes("B@1"))
    finally:
        await reader.close()
        await buffered.close()
        await live.close()
    assert live_claims == buffered_claims == (True, False)
    assert before_flush == ["L@2", "L@1"]
    assert seen
    assert written == 2
    assert stored["B@1"].status is PipelineStatus.EXECUTED
    assert stored["B@1"].intent_id == "intent-1"
    assert dataclasses.replace(stored["B@1"], key="L@1") == stored["L@1"]
    assert dataclasses.replace(stored["B@2"], key="L@2", correlation_id="c-L@2") == stored["L@2"]
    assert votes[0] == votes[1] == list(VOTES)


class _CountingRuns:
    """A `Database` that counts the single statements (`run`) it is asked for."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.runs = 0

    @property
    def dialect(self) -> str:
        return self.database.dialect

    def transaction(
        self, *, write: bool = True, durable: bool = True
    ) -> AbstractAsyncContextManager[Transaction]:
        return self.database.transaction(write=write, durable=durable)

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self.runs += 1
        return await self.database.run(sql, params)

    async def close(self) -> None:
        await self.database.close()


async def test_a_buffered_log_on_an_empty_store_knows_what_it_stored_without_asking(
    clock: Clock, desk_url: str
) -> None:
    opened = await DecisionLog.open(desk_url, upgrade=False)
    counting = _CountingRuns(opened.database)
    log = DecisionLog(counting, buffer_claims=True)  # type: ignore[arg-type]
    try:
        first = await log.has("BTC@1")  # sees the table empty: the one read it makes
        await log.record_no_trade(no_trade("BTC@1", 0), VOTES)
        await log.claim(record("BTC@2", 1), VOTES)
        await log.flush()
        answers = [await log.has(key) for key in ("BTC@1", "BTC@2", "BTC@3")]
        stored = [r.key for r in await opened.decisions()]
    finally:
        await log.close()
    assert not first
    assert answers == [True, True, False]
    assert stored == ["BTC@2", "BTC@1"]
    assert counting.runs == 1


async def test_a_buffered_log_on_a_store_with_decisions_asks_the_store(
    clock: Clock, desk_url: str
) -> None:
    earlier = await DecisionLog.open(desk_url, upgrade=False)
    try:
        assert await earlier.claim(record("BTC@1"), VOTES)
    finally:
        await earlier.close()
    log = await DecisionLog.open(desk_url, upgrade=False, buffer_claims=True)
    try:
        answers = [await log.has("BTC@1"), await log.has("BTC@2")]
        await log.record_no_trade(no_trade("BTC@2", 1), VOTES)
        await log.flush()
        after = await log.has("BTC@2")
    finally:
        await log.close()
    assert answers == [True, False]
    assert after


async def test_a_buffered_log_on_an_empty_store_writes_its_batches_as_a_live_log_would(
    clock: Clock, desk_url: str
) -> None:
    # More runs and votes than one statement takes: the batch insert splits them, and every
    # run reads back as a live log, writing each run on its own, stores it.
    panel = tuple(
        dataclasses.replace(VOTES[index % 2], model=f"model-{index}") for index in range(7)
    )
    runs = [(no_trade(f"BTC@{bar}", bar), panel[: 1 + bar % 7]) for bar in range(450)]
    buffered = await DecisionLog.open(desk_url, upgrade=False, buffer_claims=True)
    try:
        assert not await buffered.has("BTC@0")
        for run, votes in runs:
            assert await buffered.record_no_trade(run, votes)
        await buffered.flush()
        stored = await buffered.decisions(limit=1000)
        stored_votes = [await buffered.votes(run.key) for run, _ in runs]
        vote_ids = await buffered.database.run(
            "SELECT decision_key, model FROM legato_desk_votes ORDER BY id"
        )
    finally:
        await buffered.close()
    assert stored == [run for run, _ in reversed(runs)]
    assert stored_votes == [list(votes) for _, votes in runs]
    # Ids in the order a run-by-run insert gives them.
    assert [tuple(row) for row in vote_ids] == [
        (run.key, vote.model) for run, votes in runs for vote in votes
    ]


async def test_buffered_conflicts_are_written_with_the_batch_as_the_live_log_writes_them(
    clock: Clock, desk_url: str
) -> None:
    resolution = Resolution(ResolutionAction.WAIT, Decimal("1"), "mixed signals", 0.4, "rules")

    def conflict(key: str, minute: int) -> ConflictRecord:
        return ConflictRecord(
            key,
            "BTC",
            (
                Conflict(ConflictKind.WEAK_CONSENSUS, "0.55 < 0.6"),
                Conflict(ConflictKind.HIGH_VOLATILITY, "ATR 3x baseline"),
            ),
            resolution,
            T0 + timedelta(minutes=minute),
        )

    live = await DecisionLog.open(desk_url, upgrade=False)
    buffered = await DecisionLog.open(desk_url, upgrade=False, buffer_claims=True)
    reader = await DecisionLog.open(desk_url, upgrade=False)
    try:
        for minute in range(3):
            await live.record_conflict(conflict(f"L@{minute}", minute))
        for minute in range(3):
            await buffered.record_conflict(conflict(f"B@{minute}", minute))
        before_flush = [c.key for c in await reader.conflicts()]
        # A query on the buffering log sees its own conflicts (it writes them first).
        own = [c.key for c in await buffered.conflicts(symbol="BTC")]
        stored = await reader.conflicts(limit=10)
    finally:
        await reader.close()
        await buffered.close()
        await live.close()
    assert before_flush == ["L@2", "L@1", "L@0"]
    assert own == ["B@2", "L@2", "B@1", "L@1", "B@0", "L@0"]
    by_key = {c.key: c for c in stored}
    for minute in range(3):
        assert (
            dataclasses.replace(by_key[f"B@{minute}"], key=f"L@{minute}") == by_key[f"L@{minute}"]
        )
