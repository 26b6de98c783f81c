"""Draw a training run's curve: loss (training and held out), held-out accuracy and learning rate per update.

python scripts/plot_log.py --run outputs/pretrain                        # -> outputs/pretrain/training_curve.png
python scripts/plot_log.py --run outputs/mpp --output /tmp/mpp_curve.png

Reads the run's log.jsonl, as scripts/pretrain.py writes it (also while the run goes on). Needs matplotlib
(pip install 'hf_vit[analysis]').
"""

import argparse
import sys
from pathlib import Path

from _cli import HelpFormatter

LOG_FILE = "log.jsonl"
CURVE_FILE = "training_curve.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--run", required=True, type=Path, metavar="DIR", help=f"The run's output folder (its {LOG_FILE})."
    )
    parser.add_argument("--output", type=Path, metavar="PNG", help=f"Where the PNG goes. Default: DIR/{CURVE_FILE}.")
    args = parser.parse_args(argv)
    from hf_vit.tools.plotting import require_matplotlib, save_training_curve

    log = args.run / LOG_FILE
    try:
        require_matplotlib()
        if not log.is_file():
            raise ValueError(f"{args.run} holds no {LOG_FILE}: point --run at the output folder of a training run.")
        path = save_training_curve(log, args.output or args.run / CURVE_FILE)
    except (ImportError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
