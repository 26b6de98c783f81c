"""Benchmark hf_vit against transformers and timm: images/s, peak memory and MFU, as ratios ours / peer.

python scripts/benchmark.py --model ViT-B/16                        # GPU if there is one (bf16), else CPU (fp32)
python scripts/benchmark.py --model ViT-S/16,ViT-B/16 --device cpu --batch-size 8 --mode infer --json out.json
python scripts/benchmark.py --smoke                                 # a tiny model, one iteration: checks it runs
python scripts/benchmark.py --suite data                            # input pipelines, images/s per CPU core
python scripts/benchmark.py --suite gpu                             # every GPU figure, one command (--smoke on CPU)
python scripts/benchmark.py --suite contention                      # the README main job, quiet and under load
python scripts/benchmark.py --suite int8                            # int8 against fp32: accuracy and speed (CPU)
"""

import argparse
import importlib
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a developer tool beside the package

from _cli import HelpFormatter  # noqa: E402

# benchmarks.benchmarking's names, here so that --help does not import torch (tests/test_help.py checks they agree).
DTYPES = ("fp32", "bf16", "fp16")
IMPLEMENTATIONS = ("hf_vit", "transformers", "timm")
MODES = ("infer", "train")

SUITES = {
    "data": "benchmarks.data",
    "gpu": "benchmarks.gpu",
    "contention": "benchmarks.contention",
    "int8": "benchmarks.int8",
}


def split_suite(argv: list[str] | None) -> tuple[str, list[str]]:
    """`--suite NAME` picks a benchmark module with its own flags; without it, the model benchmark below."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--suite", choices=("models", *SUITES), default="models")
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.suite, rest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        help="A preset (hf_vit.list_presets()); repeat it or give a comma list. Default ViT-B/16.",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N. Default: cuda if available, else cpu.")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="bf16/fp16 run under torch.autocast. Default bf16 on GPU, fp32 on CPU.",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="Default 256 on GPU, 8 on CPU.")
    parser.add_argument("--compile", action="store_true", help="torch.compile every implementation.")
    parser.add_argument(
        "--attn-implementation",
        default="sdpa",
        help="sdpa (default) or eager; timm maps eager to its unfused attention and anything else to SDPA.",
    )
    parser.add_argument("--channels-last", action="store_true", help="Channels-last weights and inputs.")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS), help="Comma list; must hold hf_vit.")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps per implementation and mode.")
    parser.add_argument("--iters", type=int, default=None, help="Timed steps per repeat.")
    parser.add_argument("--repeats", type=int, default=None, help="Interleaved repeats; the median is reported.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the CPU.")
    parser.add_argument(
        "--cpu-memory",
        action="store_true",
        help="On CPU, also measure each implementation's peak "
        "RSS growth, in a fresh process per implementation and mode (slow).",
    )
    parser.add_argument(
        "--peak-matmul-size",
        type=int,
        default=None,
        help="Side of the matmul that measures the peak FLOP/s for MFU. Default 8192 on GPU, 2048 on CPU.",
    )
    parser.add_argument(
        "--profile-dir",
        default=None,
        help="Also write torch.profiler's top operators of every implementation and mode here (one text file each).",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="Also write the full report here.")
    parser.add_argument("--smoke", action="store_true", help="A tiny model, batch 2, one iteration: checks it runs.")
    parser.add_argument(
        "--suite", choices=("models", *SUITES), default="models", help="Another benchmark, with its own flags (--help)."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    suite, argv = split_suite(argv)
    if suite != "models":
        return importlib.import_module(SUITES[suite]).main(argv)
    args = parse_args(argv)
    import torch

    from benchmarks.benchmarking import Settings, format_markdown, report_suite, run_benchmark, settings_from

    presets = [name.strip() for item in args.model or ["ViT-B/16"] for name in item.split(",") if name.strip()]
    settings = settings_from(
        Settings,
        args,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        modes=MODES if args.mode == "both" else (args.mode,),
        implementations=tuple(name.strip() for name in args.implementations.split(",") if name.strip()),
    )
    return report_suite(partial(run_benchmark, presets), settings, format_markdown, args.json)


if __name__ == "__main__":
    sys.exit(main())
