"""`--help` of every script answers without importing torch, and lists the options with their defaults."""

import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPTS = sorted(path.name for path in (ROOT / "scripts").glob("*.py") if not path.name.startswith("_"))
# An option of each argparse script whose default --help shows (HfArgumentParser scripts show theirs too).
DEFAULTS_SHOWN = {
    "analyze.py": "(default: 28)",
    "benchmark.py": "(default: sdpa)",
    "convert_checkpoint.py": "(default: source)",
    "export.py": "(default: classifier)",
    "predict.py": "(default: 5)",
    "pretrain.py": "(default: 20)",
}
PROBE = """
import json, os, runpy, sys
sys.argv = [sys.argv[1], "--help"]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python scripts/NAME.py` does
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def test_every_script_answers_help_without_importing_torch():
    assert {"convert_checkpoint.py", "predict.py", "plot_log.py", "pretrain.py", "evaluate_model.py"} <= set(SCRIPTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", PROBE, str(ROOT / "scripts" / name)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    for name, process in running.items():
        out, err = process.communicate(timeout=300)
        outcome = json.loads(err.strip().splitlines()[-1])
        assert outcome == {"code": 0, "torch": False}, f"{name}: {outcome}\n{err[-2000:]}"
        assert out.startswith("usage: ") and "--help" in out, name
        assert DEFAULTS_SHOWN.get(name, "") in " ".join(out.split()), name


def test_benchmark_choices_are_the_benchmark_modules():
    from conftest import load_script

    from benchmarks.benchmarking import DTYPES, IMPLEMENTATIONS, MODES

    script = load_script("benchmark")
    assert (tuple(DTYPES), IMPLEMENTATIONS, MODES) == (script.DTYPES, script.IMPLEMENTATIONS, script.MODES)
