"""How a training process uses the machine: loader workers, CPU threads that yield to other work, data-wait time.

On a shared machine (a laptop, a CI runner, a server with other jobs) a training step that uses every core with
torch's default thread count collapses: OpenMP's threads spin at every barrier and wait for a sibling that the
kernel has descheduled, so a job that should run at its fair share of the cores runs many times slower (measured:
the README's main job went from 0.18 s to 5-6 s per step at a load of 5 on 2 cores, where one thread took 0.9 s).
`ThreadGovernor` keeps the intra-op thread count at the number of cores the rest of the machine leaves free,
re-read every few seconds, so a quiet machine keeps every core and a busy one gets fewer threads than cores.
"""

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

MAX_DEFAULT_WORKERS = 8


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def accelerated() -> bool:
    """Whether the model will run on an accelerator (CUDA, or a TPU through PJRT), not on these cores."""
    return torch.cuda.is_available() or os.environ.get("PJRT_DEVICE", "CPU").upper() not in ("", "CPU")


def default_num_workers(on_accelerator: bool | None = None, processes_per_node: int | None = None) -> int:
    """DataLoader workers: none when the model trains on the CPU, else the cores per process less one.

    On the CPU the model's step uses every core and decoding in the main process costs a few percent of it (workers
    would only compete for the same cores); with an accelerator the cores are free to decode ahead of the step.
    """
    if on_accelerator is None:
        on_accelerator = accelerated()
    if not on_accelerator:
        return 0
    processes = processes_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(MAX_DEFAULT_WORKERS, available_cores() // max(1, processes) - 1))


def loader_options(num_workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader keywords for a device: pinned host memory for non-blocking copies to CUDA, prefetch with workers.

    Workers are not persistent: each epoch starts them afresh with the dataset's current epoch, which per-sample
    seeding (seed, epoch, index) needs.
    """
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        options["prefetch_factor"] = 4
    return options


def choose_threads(cores: int, other_load: float) -> int:
    """Intra-op threads for `cores` when other work keeps `other_load` cores busy: the free cores, at least one."""
    return max(1, min(cores, round(cores - max(0.0, other_load))))


class ThreadGovernor:
    """Re-chooses torch's intra-op thread count every `interval` seconds from the load of the rest of the machine.

    The rest of the machine's load is the 1-minute load average less this process's own use of the cores over the
    last interval (its CPU time over wall time). Disabled (`update` does nothing) with `threads` fixed.
    """

    def __init__(
        self,
        threads: int | None = None,
        cores: int | None = None,
        interval: float = 5.0,
        read_load: Callable[[], float] = lambda: os.getloadavg()[0],
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
        set_threads: Callable[[int], None] = torch.set_num_threads,
    ):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}.")
        self.adaptive = threads is None
        self.cores = cores or available_cores()
        self.interval = interval
        self.read_load = read_load
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.set_threads = set_threads
        self.threads = threads or choose_threads(self.cores, read_load())
        self.changes = 0
        set_threads(self.threads)
        self._mark = (clock(), cpu_clock())

    @classmethod
    def for_device(cls, device: torch.device, threads: int | None = None) -> "ThreadGovernor | None":
        """A governor when the model computes on these cores and nobody fixed the threads (OMP_NUM_THREADS)."""
        if device.type != "cpu":
            return None
        if threads is None and os.environ.get("OMP_NUM_THREADS"):
            threads = torch.get_num_threads()
        return cls(threads)

    def update(self) -> int:
        """Call once per step: every `interval` seconds, set the thread count the load allows; returns it."""
        if not self.adaptive:
            return self.threads
        now, cpu = self.clock(), self.cpu_clock()
        elapsed = now - self._mark[0]
        if elapsed < self.interval:
            return self.threads
        own = (cpu - self._mark[1]) / elapsed
        self._mark = (now, cpu)
        threads = choose_threads(self.cores, self.read_load() - own)
        if threads != self.threads:
            self.set_threads(threads)
            self.threads = threads
            self.changes += 1
        return self.threads


class DataWait:
    """The wall time a training loop spends waiting for its next batch (loading, collation, the copy to the device)."""

    def __init__(self):
        self.seconds = 0.0

    def iterate(self, loader: Iterable) -> Iterator:
        """Yield the loader's batches, adding the time each `next` took to `seconds`."""
        iterator = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield batch

    def share(self, elapsed: float) -> float:
        """The waiting time as a share of `elapsed` wall seconds."""
        return self.seconds / elapsed if elapsed > 0 else 0.0
