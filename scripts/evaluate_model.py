"""Top-1 / top-5 accuracy of an image classifier (hf_vit or any transformers one) on a dataset split.

python scripts/evaluate_model.py --model outputs/finetune                  # the split finetune.py held out
python scripts/evaluate_model.py --model M --dataset D --split validation --output results.json
"""

import argparse
import json
import sys

from hf_vit.training.data import add_data_arguments
from hf_vit.training.evaluation import add_inference_arguments, evaluate_classifier


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(parser)
    parser.add_argument("--split", default=None, help="Evaluate on this whole split (default: the held-out one).")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    try:
        results = evaluate_classifier(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
