"""Few-shot linear evaluation of frozen features: closed-form regularised least squares, as in the paper.

python scripts/fewshot.py --model outputs/pretrain --shots 1 5 10 25 --seeds 3 --output fewshot.json
"""

import argparse
import sys

from hf_vit.training.data import add_data_arguments
from hf_vit.training.evaluation import add_inference_arguments
from hf_vit.training.fewshot import add_fewshot_arguments, run_fewshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(parser)
    add_fewshot_arguments(parser)
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    try:
        results = run_fewshot(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{results['num_classes']}-class few-shot accuracy on {results['eval_samples']} images "
        f"({results['feature_size']}-d features, l2 {results['l2_reg']:g}):"
    )
    for shots, accuracy in results["accuracy"].items():
        seeds = ", ".join(f"{value:.4f}" for value in accuracy["per_seed"])
        print(f"  {shots:>3}-shot: {accuracy['mean']:.4f}  (seeds: {seeds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
