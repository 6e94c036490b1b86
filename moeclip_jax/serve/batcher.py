"""Dynamic batching: concurrent requests -> one jitted call per class.

Each image is a job on an asyncio queue. The worker takes the first job,
then every queued job, until it holds --max-batch images; while it has
room and more images are on their way (requests being read or decoded,
counted with `expect` / `settle`) it waits for them, at most --max-wait-ms
after the first job. With nothing on its way it runs at once, so a lone
request pays no batching delay. The jobs are grouped by class (one call per
class, a class's jobs keep their order) and every call runs on one compute
thread, off the event loop. A job's future gets (result, timings).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from typing import Any, Callable

from moeclip_jax.serve import errors

POLL_S = 0.001  # re-checks of the incoming count while waiting


@dataclasses.dataclass
class Job:
  image: Any  # uint8 [H, W, 3]
  class_name: str
  future: asyncio.Future
  queued: float = dataclasses.field(default_factory=time.perf_counter)


class Batcher:
  """Coalesces jobs (see the module docstring).

  Args:
    run: (images, class_name) -> (list of per-image results, bucket size);
      called on the compute thread.
    max_batch: images per call.
    max_wait_ms: how long the first job of a batch waits for company.
  """

  def __init__(self, run: Callable, max_batch: int, max_wait_ms: float):
    self.run = run
    self.max_batch = max_batch
    self.max_wait = max_wait_ms / 1000.0
    self.compute = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="moeclip-compute")
    self._queue: asyncio.Queue | None = None
    self._task: asyncio.Task | None = None
    self._incoming = 0  # images on their way (read / decoded now)

  def expect(self, n: int = 1) -> None:
    self._incoming += n

  def settle(self, n: int = 1) -> None:
    self._incoming -= n

  def start(self) -> None:
    self._queue = asyncio.Queue()
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def call(self, fn, *args):
    """Runs `fn(*args)` on the compute thread (model state lives there)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(self.compute, fn, *args)

  def submit(self, image, class_name: str) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    self._queue.put_nowait(Job(image, class_name, fut))
    return fut

  async def stop(self) -> None:
    """Finishes queued jobs, then stops the worker and the thread."""
    if self._task is not None:
      await self._queue.join()
      self._task.cancel()
      try:
        await self._task
      except asyncio.CancelledError:
        pass
    self.compute.shutdown(wait=True)

  async def _take(self) -> list[Job]:
    jobs = [await self._queue.get()]
    deadline = jobs[0].queued + self.max_wait
    while len(jobs) < self.max_batch:
      if not self._queue.empty():
        jobs.append(self._queue.get_nowait())
        continue
      left = deadline - time.perf_counter()
      if left <= 0 or self._incoming <= 0:
        break
      try:  # short waits: `_incoming` may drop (a failed decode)
        jobs.append(await asyncio.wait_for(self._queue.get(),
                                           min(left, POLL_S)))
      except asyncio.TimeoutError:
        continue
    return jobs

  async def _loop(self) -> None:
    while True:
      jobs = await self._take()
      try:
        by_class: dict[str, list[Job]] = {}
        for job in jobs:
          if not job.future.done():  # timed out / cancelled: skip
            by_class.setdefault(job.class_name, []).append(job)
        for name, group in by_class.items():
          await self._run_group(name, group)
      finally:
        for _ in jobs:
          self._queue.task_done()

  async def _run_group(self, name: str, group: list[Job]) -> None:
    start = time.perf_counter()
    try:
      results, bucket = await self.call(self.run,
                                        [j.image for j in group], name)
    except errors.ApiError as err:
      for job in group:
        if not job.future.done():
          job.future.set_exception(err)
      return
    except Exception as err:  # pylint: disable=broad-except
      for job in group:
        if not job.future.done():
          job.future.set_exception(errors.ApiError(
              "internal", f"model call failed: {type(err).__name__}: {err}"))
      return
    compute_ms = (time.perf_counter() - start) * 1000.0
    for job, result in zip(group, results):
      if not job.future.done():
        job.future.set_result((result, {
            "queue_ms": round((start - job.queued) * 1000.0, 3),
            "compute_ms": round(compute_ms, 3), "batch_size": bucket}))
