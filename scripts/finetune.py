"""Fine-tune a pre-trained ViT with the Hugging Face Trainer and a named recipe (default: the paper's).

python scripts/finetune.py --model outputs/pretrain --image-size 48           # the built-in digits, 32 -> 48 px
accelerate launch scripts/finetune.py --model M --dataset D --image-size 384  # the paper's resolution, any GPUs
"""

import sys

from transformers import HfArgumentParser

from hf_vit.training.arguments import FinetuningArguments


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(FinetuningArguments, description=__doc__).parse_args_into_dataclasses(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    from hf_vit.tools.hub import HubError, push_model
    from hf_vit.training.finetuning import finetune
    from hf_vit.training.run import is_main_process
    from hf_vit.training.stops import TRAINING_ERRORS

    try:
        results = finetune(args)
        if args.push_to_hub and is_main_process():
            push_model(args.output_dir, args.push_to_hub)
    except HubError as error:
        print(f"error: {error} (the fine-tuned model is saved in {args.output_dir})", file=sys.stderr)
        return 1
    except TRAINING_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if is_main_process():
        top5 = f", top-5 {results['eval_top5_accuracy']:.4f}" if "eval_top5_accuracy" in results else ""
        pushed = f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""
        print(f"held-out accuracy {results['eval_accuracy']:.4f}{top5}; saved to {args.output_dir}{pushed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
