"""hf_vit.training.runtime: thread counts that follow the machine's load, worker defaults, data-wait time."""

import time

import pytest
import torch
from conftest import TINY_RUN, load_script

from hf_vit.training import runtime
from hf_vit.training.runtime import DataWait, ThreadGovernor, choose_threads, default_num_workers, loader_options


class FakeMachine:
    """A load average, a wall clock and this process's CPU clock that the test moves by hand."""

    def __init__(self, load: float = 0.0):
        self.load, self.now, self.cpu, self.threads = load, 0.0, 0.0, []

    def run(self, seconds: float, busy_cores: float, load: float) -> None:
        self.now += seconds
        self.cpu += seconds * busy_cores
        self.load = load

    def governor(self, **kwargs) -> ThreadGovernor:
        return ThreadGovernor(
            cores=4,
            interval=5.0,
            read_load=lambda: self.load,
            clock=lambda: self.now,
            cpu_clock=lambda: self.cpu,
            set_threads=self.threads.append,
            **kwargs,
        )


def test_choose_threads_leaves_the_busy_cores_to_others():
    assert choose_threads(4, 0.0) == 4
    assert choose_threads(4, 1.3) == 3
    assert choose_threads(4, 3.8) == 1
    assert choose_threads(2, 7.0) == 1
    assert choose_threads(2, -1.0) == 2


def test_governor_follows_the_load_of_the_rest_of_the_machine():
    machine = FakeMachine(load=0.2)
    governor = machine.governor()
    assert governor.threads == 4 and machine.threads == [4]
    machine.run(2.0, busy_cores=4, load=6.0)
    assert governor.update() == 4  # not yet: the load is read every 5 s
    machine.run(3.0, busy_cores=4, load=6.0)  # 4 of ours busy, 2 cores' worth of other work
    assert governor.update() == 2
    machine.run(5.0, busy_cores=1.5, load=9.5)  # others now keep 8 cores busy: one thread
    assert governor.update() == 1
    machine.run(5.0, busy_cores=1.0, load=1.2)  # the others stopped
    assert governor.update() == 4
    assert machine.threads == [4, 2, 1, 4] and governor.changes == 3


def test_fixed_threads_do_not_move_and_only_the_cpu_is_governed(monkeypatch):
    machine = FakeMachine(load=0.0)
    governor = machine.governor(threads=3)
    machine.run(10.0, busy_cores=3, load=12.0)
    assert governor.update() == 3 and machine.threads == [3]
    with pytest.raises(ValueError, match="threads must be at least 1, got 0."):
        machine.governor(threads=0)
    assert ThreadGovernor.for_device(torch.device("cuda")) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert not ThreadGovernor.for_device(torch.device("cpu")).adaptive


def test_a_run_leaves_torch_threads_as_it_found_them(digits_folder, tmp_path):
    """The governor sets torch's process-wide thread count for the run only: code after it (a test comparing
    logits with another process, a notebook) computes with the threads it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        argv = [*TINY_RUN, "--dataset", str(digits_folder), "--max-steps", "2", "--threads", "1"]
        assert load_script("pretrain").main([*argv, "--output-dir", str(tmp_path / "run")]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_worker_and_loader_defaults(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 16)
    assert default_num_workers(on_accelerator=False) == 0  # the CPU's cores train the model
    assert default_num_workers(on_accelerator=True, processes_per_node=1) == 8
    assert default_num_workers(on_accelerator=True, processes_per_node=2) == 7
    assert default_num_workers(on_accelerator=True, processes_per_node=16) == 0
    assert loader_options(0, torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(3, torch.device("cuda")) == {"num_workers": 3, "pin_memory": True, "prefetch_factor": 4}


def test_data_wait_counts_the_time_spent_in_next():
    def slow_loader():
        for item in range(3):
            time.sleep(0.02)
            yield item

    wait = DataWait()
    start = time.perf_counter()
    items = []
    for item in wait.iterate(slow_loader()):
        items.append(item)
        time.sleep(0.02)  # the step
    elapsed = time.perf_counter() - start
    assert items == [0, 1, 2]
    assert 0.06 <= wait.seconds < elapsed
    assert 0.2 < wait.share(elapsed) < 0.8
    assert DataWait().share(0.0) == 0.0
