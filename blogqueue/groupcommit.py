"""Group commit: the writes a worker's concurrent attempts make at the same moment go to
PostgreSQL as one round trip and one transaction (issue #14).

A `GroupCommit` has at most one write in flight. Calls that arrive while it runs wait,
and the next write takes all of them. An idle worker writes at once (no timer, no added
latency); a busy one pays one round trip and one commit for many rows instead of one
each. Each caller awaits its own row's answer, so whatever it does next (the next paid
call, ending its attempt) still starts only after its own row is committed.

Used by the worker for claims (`claim_attempts`: one statement over arrays), and for
checkpoints (`save_stages`) and finishes (`finish_attempt`): the same named statement
once per row, pipelined in one implicit transaction (`fetchmany`). Every row stays
fenced by its own attempt exactly as when written alone: a stale one gets its refusal
and changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import asyncpg

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Batches `submit(item)` calls into `write(items) -> results` (one result per item, in order).

    key: items with the same key never share a write; a second one waits for the next
      (two writes of one job in one transaction would have to tell their rows apart).
    orphan: called with (item, result) when the caller stopped waiting (cancelled) before
      its row's answer came back, so the writer can undo or give back what it took.
    A server error (not a lost connection) in a write of several rows is retried one row
    per write, so one bad row fails only its own caller.
    """

    def __init__(self, name: str, write: Callable[[list[T]], Awaitable[Sequence[R]]], *,
                 key: Callable[[T], Hashable] | None = None,
                 orphan: Callable[[T, R], Awaitable[None]] | None = None) -> None:
        self.name = name
        self._write, self._key, self._orphan = write, key, orphan
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.statements = 0  # writes run (a batch each), for the engine benchmark
        self.rows = 0

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"blogqueue-{self.name}")
        return await fut

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        if self._key is None:
            taken, self._waiting = self._waiting, []
            return taken
        batch: list[tuple[T, asyncio.Future[R]]] = []
        rest: list[tuple[T, asyncio.Future[R]]] = []
        seen: set[Hashable] = set()
        for entry in self._waiting:
            k = self._key(entry[0])
            (rest if k in seen else batch).append(entry)
            seen.add(k)
        self._waiting = rest
        return batch

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # calls made in this same loop turn join the first write
        while self._waiting:
            batch = self._take()
            try:
                results = await self._run([item for item, _ in batch])
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    for _, fut in batch:
                        if not fut.done():
                            fut.cancel()
                    for _, fut in self._waiting:
                        if not fut.done():
                            fut.cancel()
                    self._waiting = []
                    raise
                if len(batch) > 1 and isinstance(exc, asyncpg.PostgresError):
                    await self._one_by_one(batch)
                    continue
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (item, fut), result in zip(batch, results, strict=True):
                await self._deliver(item, fut, result)

    async def _run(self, items: list[T]) -> Sequence[R]:
        results = await self._write(items)
        self.statements += 1
        self.rows += len(items)
        return results

    async def _one_by_one(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        for item, fut in batch:
            try:
                (result,) = await self._run([item])
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
                continue
            await self._deliver(item, fut, result)

    async def _deliver(self, item: T, fut: asyncio.Future[R], result: R) -> None:
        if not fut.done():
            fut.set_result(result)
        elif self._orphan is not None:
            await self._orphan(item, result)


def by_id(rows: Sequence[Any], ids: Sequence[Any], field: str = "id") -> list[Any]:
    """Rows of a pipelined write (one statement per id, zero or one row each) back in the
    order of `ids`; None for an id whose statement returned nothing. Ids are distinct."""
    found = {r[field]: r for r in rows}
    return [found.get(i) for i in ids]
