"""Group commit: concurrent writes share flushes, failures stay in their batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from legato.orchestrator.group_commit import GroupCommit
from legato.store.errors import StoreUnavailableError


class Recorder:
    """A flush that takes `delay` seconds and records each batch it was given."""

    def __init__(self, delay: float = 0.01, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.flushing = asyncio.Event()
        self.delay = delay
        self.fail_on = fail_on

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.flushing.set()
        await asyncio.sleep(self.delay)
        if self.fail_on in items:
            raise StoreUnavailableError("disk full")
        return [item * 10 for item in items]


async def test_writes_made_in_the_same_loop_pass_share_the_first_flush() -> None:
    # Five runs ready at once: the first to write does not flush alone.
    flush = Recorder()
    group: GroupCommit[int, int] = GroupCommit(flush)
    results = await asyncio.gather(*(group.submit(n) for n in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert flush.batches == [[0, 1, 2, 3, 4]]


async def test_writes_queued_during_a_flush_share_the_next_one() -> None:
    flush = Recorder()
    group: GroupCommit[int, int] = GroupCommit(flush)
    first = asyncio.ensure_future(group.submit(0))
    await flush.flushing.wait()  # the first flush is in flight
    later = [asyncio.ensure_future(group.submit(n)) for n in (1, 2, 3)]
    assert await asyncio.gather(first, *later) == [0, 10, 20, 30]
    assert flush.batches == [[0], [1, 2, 3]]


async def test_a_batch_larger_than_the_limit_is_split() -> None:
    flush = Recorder()
    group: GroupCommit[int, int] = GroupCommit(flush, limit=2)
    await asyncio.gather(*(group.submit(n) for n in range(5)))
    assert flush.batches == [[0, 1], [2, 3], [4]]


async def test_a_failed_flush_fails_only_the_writes_of_its_batch() -> None:
    flush = Recorder(fail_on=0)
    group: GroupCommit[int, int] = GroupCommit(flush)
    first = asyncio.ensure_future(group.submit(0))
    await flush.flushing.wait()  # the failing flush is in flight
    later = [asyncio.ensure_future(group.submit(n)) for n in (1, 2)]
    results = await asyncio.gather(first, *later, return_exceptions=True)
    assert isinstance(results[0], StoreUnavailableError)
    assert results[1:] == [10, 20]
    assert flush.batches == [[0], [1, 2]]


async def test_when_the_flushing_caller_is_cancelled_the_others_still_get_written() -> None:
    flush = Recorder(delay=1.0)
    group: GroupCommit[int, int] = GroupCommit(flush)
    async with asyncio.TaskGroup() as tasks:
        leader = tasks.create_task(group.submit(0))
        await asyncio.sleep(0.1)  # the leader's flush is in flight
        followers = [tasks.create_task(group.submit(n)) for n in (1, 2)]
        await asyncio.sleep(0.1)
        leader.cancel()
    assert leader.cancelled()
    assert [f.result() for f in followers] == [10, 20]
    # The interrupted batch held only the leader's write; the others were flushed after.
    assert flush.batches[0] == [0]
    assert sorted(n for batch in flush.batches[1:] for n in batch) == [1, 2]


def test_a_limit_below_one_is_rejected() -> None:
    from legato.kernel.errors import ValidationError

    with pytest.raises(ValidationError) as raised:
        GroupCommit(Recorder(), limit=0)
    assert raised.value.field == "limit"
