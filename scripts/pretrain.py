"""Pre-train a ViT (or hybrid) from scratch with a named recipe (the paper's, or the built-in digits demo).

python scripts/pretrain.py                                                   # small ViT on the built-in digits
accelerate launch scripts/pretrain.py --model ViT-B/16 --dataset DATA ...   # any number of GPUs/TPUs
"""

import sys

from transformers import HfArgumentParser

from hf_vit.training.arguments import PretrainingArguments


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(PretrainingArguments, description=__doc__).parse_args_into_dataclasses(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from hf_vit.tools.hub import HubError, push_model
    from hf_vit.training.pretraining import pretrain
    from hf_vit.training.run import is_main_process
    from hf_vit.training.stops import TRAINING_ERRORS

    try:
        results = pretrain(args)
        if args.push_to_hub and is_main_process():
            push_model(args.output_dir, args.push_to_hub)
    except HubError as error:
        print(f"error: {error} (the trained model is saved in {args.output_dir})", file=sys.stderr)
        return 1
    except TRAINING_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if is_main_process():
        print(
            f"held-out accuracy {results['eval_accuracy']:.4f} (loss {results['eval_loss']:.4f}) after "
            f"{results['train_steps']} updates in {results['train_runtime_seconds']:.0f} s; saved to {args.output_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
