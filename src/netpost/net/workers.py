"""Background workers: jobs beside the listeners (garbage collection, later the outbound queue
runner, lease expiry, NTP polling), started and stopped by the supervisor.

A worker is a coroutine function that runs until the `stop` event it is given is set.  One that
raises is logged and started again after a pause that grows (up to a minute), so a bug in one
job neither stops the server nor stops that job for good.  At shutdown every worker is asked to
stop and given the grace period; what is still running then is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("netpost.workers")

RESTART_DELAY = 1.0
RESTART_MAX_DELAY = 60.0


@dataclass(frozen=True)
class Worker:
    name: str
    run: Callable[[asyncio.Event], Awaitable[None]]  # returns once the event is set


def periodic(name: str, interval: float, job: Callable[[], Awaitable[object]], *,
             first: float | None = None) -> Worker:
    """A worker that runs `job` every `interval` seconds (the first time after `first`,
    default `interval`); an exception from one run is logged and the next run goes ahead."""

    async def run(stop: asyncio.Event) -> None:
        delay = interval if first is None else first
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            delay = interval
            try:
                await job()
            except Exception:
                log.exception("%s failed; next run in %.0f s", name, interval)

    return Worker(name, run)


class WorkerPool:
    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for worker in self.workers:
            self._tasks.append(asyncio.create_task(self._keep(worker), name=worker.name))

    async def _keep(self, worker: Worker) -> None:
        delay = RESTART_DELAY
        while not self._stop.is_set():
            try:
                await worker.run(self._stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker %s failed; restarting in %.0f s", worker.name, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, RESTART_MAX_DELAY)

    async def stop(self, grace: float) -> None:
        """Ask every worker to stop; cancel those still running after `grace` seconds."""
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            log.warning("worker %s did not stop in %.0f s: cancelled", task.get_name(), grace)
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
