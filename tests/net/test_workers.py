"""Background workers: periodic jobs, restart after a crash, cancellation after the grace."""

from __future__ import annotations

import asyncio

from netpost.net.workers import Worker, WorkerPool, periodic


def test_periodic_runs_and_survives_a_failing_run() -> None:
    calls: list[int] = []

    async def job() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("one bad run")

    async def main() -> None:
        pool = WorkerPool([periodic("job", 0.01, job, first=0)])
        pool.start()
        await asyncio.sleep(0.1)
        await pool.stop(1)

    asyncio.run(main())
    assert len(calls) >= 3  # the failure did not stop the job


def test_a_crashed_worker_is_restarted_and_a_stuck_one_cancelled(monkeypatch: object) -> None:
    import netpost.net.workers as workers

    workers.RESTART_DELAY = 0.01  # type: ignore[misc]
    starts: list[str] = []
    cancelled: list[bool] = []

    async def crashy(stop: asyncio.Event) -> None:
        starts.append("crashy")
        if len(starts) < 3:
            raise RuntimeError("boom")
        await stop.wait()

    async def stuck(stop: asyncio.Event) -> None:
        try:
            await asyncio.sleep(3600)  # ignores stop
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        pool = WorkerPool([Worker("crashy", crashy), Worker("stuck", stuck)])
        pool.start()
        await asyncio.sleep(0.2)
        await pool.stop(0.1)

    try:
        asyncio.run(main())
    finally:
        workers.RESTART_DELAY = 1.0  # type: ignore[misc]
    assert starts.count("crashy") == 3 and cancelled == [True]
