"""Top-1 / top-5 accuracy of an image classifier (hf_vit or any transformers one) on a dataset split.

python scripts/evaluate_model.py --model outputs/finetune                  # the split finetune.py held out
python scripts/evaluate_model.py --model M --dataset D --eval-split validation --output results.json
python scripts/evaluate_model.py --onnx exported/model.onnx --dataset D   # through ONNX Runtime (scripts/export.py)
"""

import json
import sys

from transformers import HfArgumentParser

from hf_vit.training.arguments import EvaluationArguments


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(EvaluationArguments, description=__doc__).parse_args_into_dataclasses(argv)
        from hf_vit.training.evaluation import evaluate_classifier

        results = evaluate_classifier(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
