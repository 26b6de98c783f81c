"""The README's main job (`python scripts/pretrain.py`) alone and next to one busy process per core.

Each run trains the main job for `--steps` updates in a fresh process and reads the time per update from its
`all_results.json` (training time, without start-up and the final evaluation). "before" fixes torch's threads at
every core (`--threads CORES`, torch's default and the old behaviour); "after" is the default, whose thread count
follows the load of the rest of the machine (hf_vit.training.runtime.ThreadGovernor).

The load is started here: one Python process per core spinning in a loop, each stopping by itself after
`--load-seconds` at the latest and stopped as soon as the run it loads ends. With N such processes on C cores a fair
share of the cores slows a job that uses them all by (C + N) / C, i.e. 2x with one per core.

Runs are interleaved (quiet and loaded, before and after, in a rotating order) and the report gives the median
seconds per update of each, the load average around each run, and the loaded / quiet slowdowns.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.benchmarking import cpu_model, report_suite, settings_from
from hf_vit.training.runtime import available_cores

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("before", "after")
CONDITIONS = ("quiet", "loaded")
SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@dataclass
class ContentionSettings:
    steps: int = 40
    repeats: int = 2
    busy_processes: int | None = None  # default: one per core
    load_seconds: float = 900.0
    smoke: bool = False

    def resolve(self) -> "ContentionSettings":
        settings = ContentionSettings(**asdict(self))
        settings.busy_processes = self.busy_processes if self.busy_processes is not None else available_cores()
        if self.smoke:
            settings.steps, settings.repeats, settings.load_seconds = 2, 1, 120.0
        for name in ("steps", "repeats"):
            if getattr(settings, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}.")
        if settings.busy_processes < 1 or settings.load_seconds <= 0:
            raise ValueError("busy-processes must be at least 1 and load-seconds positive.")
        return settings


@contextmanager
def busy_load(processes: int, seconds: float) -> Iterator[list[subprocess.Popen]]:
    """`processes` CPU-bound Python loops, each ending by itself after `seconds`, and stopped on leaving."""
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)]) for _ in range(processes)]
    try:
        yield spinners
    finally:
        for spinner in spinners:
            spinner.terminate()
        for spinner in spinners:
            spinner.wait(timeout=30)


def run_main_job(policy: str, steps: int, cores: int) -> dict[str, Any]:
    """The README's main job for `steps` updates in a fresh process; seconds per update from its results."""
    with tempfile.TemporaryDirectory() as output:
        command = [sys.executable, str(ROOT / "scripts" / "pretrain.py"), "--max-steps", str(steps)]
        command += ["--output-dir", output, "--save-every", str(10 * steps)]
        if policy == "before":
            command += ["--threads", str(cores)]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env["PYTHONPATH"] = str(ROOT)
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(f"the main job failed: {result.stderr[-2000:]}")
        results = json.loads((Path(output) / "all_results.json").read_text())
    return {
        "seconds_per_step": results["train_runtime_seconds"] / results["train_steps"],
        "threads_at_end": results.get("train_cpu_threads"),
        "data_wait_share": results.get("train_data_wait_share"),
    }


def run_contention(
    settings: ContentionSettings,
    run_job: Callable[[str, int, int], dict[str, Any]] = run_main_job,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Every (policy, condition) `repeats` times, interleaved; the report is plain JSON-able data."""
    start = time.monotonic()
    settings = settings.resolve()
    cores = available_cores()
    cases = [(policy, condition) for condition in CONDITIONS for policy in POLICIES]
    runs: dict[str, list[dict[str, Any]]] = {f"{policy}/{condition}": [] for policy, condition in cases}
    for repeat in range(settings.repeats):
        turn = repeat % len(cases)
        for policy, condition in cases[turn:] + cases[:turn]:
            load_before = os.getloadavg()[0]
            if condition == "loaded":
                with busy_load(settings.busy_processes, settings.load_seconds):
                    run = run_job(policy, settings.steps, cores)
            else:
                run = run_job(policy, settings.steps, cores)
            run["load_average"] = [load_before, os.getloadavg()[0]]
            runs[f"{policy}/{condition}"].append(run)
            log(f"repeat {repeat + 1}: {policy} {condition}: {run['seconds_per_step']:.3f} s per update")
    medians = {case: statistics.median(r["seconds_per_step"] for r in results) for case, results in runs.items()}
    slowdown = {policy: medians[f"{policy}/loaded"] / medians[f"{policy}/quiet"] for policy in POLICIES}
    return {
        "settings": asdict(settings),
        "environment": {"cpu": cpu_model(), "cores": cores},
        "fair_share_slowdown": (cores + settings.busy_processes) / cores,
        "seconds_per_step": medians,
        "slowdown": slowdown,
        "runs": runs,
        "wall_seconds": time.monotonic() - start,
    }


def format_markdown(report: dict[str, Any]) -> str:
    settings, env, medians = report["settings"], report["environment"], report["seconds_per_step"]
    loads = [load for runs in report["runs"].values() for run in runs for load in run["load_average"]]
    lines = [
        f"cpu: {env['cpu']}, {env['cores']} cores; the main job for {settings['steps']} updates, median of "
        f"{settings['repeats']} interleaved runs; loaded = {settings['busy_processes']} busy processes; load average "
        f"{min(loads):.1f}-{max(loads):.1f} around the runs; fair-share slowdown {report['fair_share_slowdown']:.1f}x",
        "",
        "| threads | quiet (s/update) | loaded (s/update) | loaded / quiet | threads at the end (quiet, loaded) |",
        "|---|---:|---:|---:|---|",
    ]
    names = {"before": "fixed at every core (before)", "after": "follow the load (after, default)"}
    for policy in POLICIES:
        ends = [report["runs"][f"{policy}/{condition}"][-1]["threads_at_end"] for condition in CONDITIONS]
        lines.append(
            f"| {names[policy]} | {medians[f'{policy}/quiet']:.3f} | {medians[f'{policy}/loaded']:.3f} "
            f"| {report['slowdown'][policy]:.1f}x | {ends[0]}, {ends[1]} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmark.py --suite contention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=40, help="Updates of the main job per run.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy-processes", type=int, default=None, help="Default: one per core.")
    parser.add_argument("--load-seconds", type=float, default=900.0, help="Each busy process stops by then.")
    parser.add_argument("--json", default=None, metavar="PATH", help="Also write the full report here.")
    parser.add_argument("--smoke", action="store_true", help="Two updates per run, one repeat: checks it runs.")
    args = parser.parse_args(argv)
    settings = settings_from(ContentionSettings, args)
    return report_suite(run_contention, settings, format_markdown, args.json)
