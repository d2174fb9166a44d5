"""Concurrent requests into one batch: a bounded asyncio queue in front of one worker thread that runs the model.

    batcher = Batcher(run=lambda rows: ..., max_batch_size=8, max_queue=64, wait_s=0.005)
    await batcher.start()                      # inside the event loop (the app's lifespan)
    results = await batcher.submit(rows)       # this request's rows, batched with whatever else is waiting
    await batcher.call(fn, *args)              # anything else that touches the model (adapter load / unload)
    await batcher.stop()

The collector takes the first waiting request, then more until the batch holds max_batch_size rows or nothing
arrives within wait_s; `run` gets all their rows (mixed adapters) and returns one result per row. While a batch
runs on the worker thread, new requests queue up (at most max_queue; one more gets QueueFull, HTTP 503), so under
load batches fill without waiting. `call` runs on the same single worker thread: nothing changes the adapters
during a forward pass. When a batch of several requests fails, each request runs again alone: only the one that
fails by itself answers the error.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

POLL_S = 0.001  # how often the collector looks for more requests while it waits


@dataclass
class Job:
    rows: list
    future: asyncio.Future  # -> the results of `rows`, in order


class Batcher:
    def __init__(self, run: Callable[[list], list], max_batch_size: int, max_queue: int, wait_s: float):
        self.run, self.max_batch_size, self.max_queue, self.wait_s = run, max_batch_size, max_queue, wait_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorakit-model")
        self.queue: asyncio.Queue[Job] | None = None
        self.task: asyncio.Task | None = None
        self.held: Job | None = None  # a request that did not fit the last batch: it opens the next one
        self.batches = 0  # batches run, and their rows (the batch sizes a test or a log can check)
        self.rows = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self.task = asyncio.create_task(self.collect())

    async def stop(self) -> None:
        """After the requests in flight: end the collector and the worker thread."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    def submit(self, rows: list) -> asyncio.Future:
        """Queue `rows` (one request); raises asyncio.QueueFull when max_queue requests are waiting."""
        job = Job(rows, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return job.future

    async def call(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def next_batch(self) -> list[Job]:
        """The first waiting job, then more until max_batch_size rows or wait_s without a new one."""
        jobs = [self.held if self.held is not None else await self.queue.get()]
        self.held = None
        size = len(jobs[0].rows)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while size < self.max_batch_size:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(POLL_S)
                continue
            if size + len(job.rows) > self.max_batch_size:
                self.held = job
                break
            jobs.append(job)
            size += len(job.rows)
            deadline = loop.time() + self.wait_s
        return jobs

    async def collect(self) -> None:
        while True:
            jobs = await self.next_batch()
            rows = [row for job in jobs for row in job.rows]
            try:
                results = await self.call(self.run, rows)
            except Exception as err:  # the batch failed: each request again alone, so only the culprit fails
                if len(jobs) == 1:
                    self.answer(jobs[0], err=err)
                else:
                    await self.run_alone(jobs)
                continue
            self.batches, self.rows = self.batches + 1, self.rows + len(rows)
            start = 0
            for job in jobs:
                self.answer(job, results[start:start + len(job.rows)])
                start += len(job.rows)

    async def run_alone(self, jobs: list[Job]) -> None:
        """After a failed batch: each job as a batch of its own (`run` starts its rows afresh)."""
        for job in jobs:
            try:
                results = await self.call(self.run, job.rows)
            except Exception as err:
                self.answer(job, err=err)
                continue
            self.batches, self.rows = self.batches + 1, self.rows + len(job.rows)
            self.answer(job, results)

    @staticmethod
    def answer(job: Job, results: list | None = None, err: Exception | None = None) -> None:
        if job.future.done():  # a cancelled request (client gone) is not answered
            return
        if err is not None:
            job.future.set_exception(err)
        else:
            job.future.set_result(results)
