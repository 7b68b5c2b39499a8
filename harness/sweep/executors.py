"""Where shards run. `local`: one worker in this process, shard after shard (no Ray needed).
`ray`: one ShardWorker actor per device of a Ray cluster (num_gpus=1 each on GPU clusters, a
number of CPUs each on CPU ones), taking shards from the queue until it is empty; results come
back through Ray, not a shared filesystem. A shard whose actor dies (node lost, OOM, killed) is
put back in the queue and handed to a new actor, up to `retries` times.

Both yield (shard, result) as shards finish; the driver commits each one.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterator

from harness.sweep.shards import Shard, ShardWorker


class ExecutorError(RuntimeError):
    """The executor cannot run the sweep (Ray missing or unreachable, a shard failing every retry)."""


class LocalExecutor:
    name = "local"

    def __init__(self):
        self.worker = ShardWorker()
        self.overhead: list[float] = []  # seconds per shard outside the shard's own run (none here)

    def run(self, shards: list[Shard]) -> Iterator[tuple[Shard, dict]]:
        for shard in shards:
            yield shard, self.worker.run(shard)


class RayExecutor:
    """Shards on a Ray cluster. on_submit(actor, shard) is called as each shard is handed over
    (tests use it to kill an actor mid-shard)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
                 gpus: bool | None = None, retries: int = 3, on_submit: Callable | None = None):
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install 'spec-harness[ray]'") from None
        self.ray, self.address, self.retries, self.on_submit = ray, address, retries, on_submit
        self.workers, self.cpus, self.gpus = workers, cpus_per_worker, gpus
        self.overhead: list[float] = []  # per shard: wall time at the driver minus the worker's own run

    def _connect(self) -> None:
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=self.address, log_to_driver=False)
            except ConnectionError as err:
                raise ExecutorError(f"--address {self.address}: no Ray cluster there ({err})") from None
        gpus = self.ray.cluster_resources().get("GPU", 0)
        self.gpus = bool(gpus) if self.gpus is None else self.gpus
        if self.workers is None:
            self.workers = int(gpus) if self.gpus else max(1, int(self.ray.cluster_resources().get("CPU", 1) // self.cpus))

    def _actor(self):
        remote = self.ray.remote(_TimedWorker)
        return remote.options(num_gpus=1 if self.gpus else 0, num_cpus=self.cpus, max_restarts=0).remote()

    def run(self, shards: list[Shard]) -> Iterator[tuple[Shard, dict]]:
        self._connect()
        queue, tries = deque(shards), {s.id: 0 for s in shards}
        idle = [self._actor() for _ in range(min(self.workers, len(shards)))]
        flying: dict = {}  # object ref -> (actor, shard, submitted at)
        while queue or flying:
            while queue and idle:
                actor, shard = idle.pop(), queue.popleft()
                flying[actor.run.remote(shard)] = (actor, shard, time.perf_counter())
                if self.on_submit:
                    self.on_submit(actor, shard)
            (ref,), _ = self.ray.wait(list(flying), num_returns=1)
            actor, shard, start = flying.pop(ref)
            try:
                result, busy = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as err:  # the actor died: its shard goes to a new one
                tries[shard.id] += 1
                if tries[shard.id] > self.retries:
                    raise ExecutorError(f"shard {shard.id}: its worker died {tries[shard.id]} times ({err})") from None
                queue.appendleft(shard)
                idle.append(self._actor())
                continue
            self.overhead.append(time.perf_counter() - start - busy)
            idle.append(actor)
            yield shard, result


class _TimedWorker(ShardWorker):
    """A ShardWorker that also says how long the shard itself took (Ray's overhead is the rest)."""

    def run(self, shard: Shard) -> tuple[dict, float]:
        start = time.perf_counter()
        result = super().run(shard)
        return result, time.perf_counter() - start


def executor(name: str, **options):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(**options)
    raise ExecutorError(f"--executor {name!r}: expected local or ray")
