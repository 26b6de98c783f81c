"""Few-shot linear evaluation of frozen features: closed-form regularised least squares, as in the paper.

python scripts/fewshot.py --model outputs/pretrain --shots 1 5 10 25 --seeds 3 --output outputs/fewshot.json
"""

import sys

from transformers import HfArgumentParser

from hf_vit.training.arguments import FewshotArguments


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(FewshotArguments, description=__doc__).parse_args_into_dataclasses(argv)
        from hf_vit.training.fewshot import run_fewshot

        results = run_fewshot(args)
    except (ValueError, OSError) as error:
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
