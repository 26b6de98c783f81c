"""Fine-tune a pre-trained ViT with the Hugging Face Trainer and the paper's recipe.

python scripts/finetune.py --model outputs/pretrain --image-size 48           # the built-in digits, 32 -> 48 px
accelerate launch scripts/finetune.py --model M --dataset D --image-size 384  # the paper's resolution, any GPUs
"""

import argparse
import sys

from hf_vit.tools.hub import HubError
from hf_vit.training.data import add_data_arguments
from hf_vit.training.finetuning import add_finetuning_arguments, finetune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_finetuning_arguments(parser)
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    try:
        results = finetune(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except HubError as error:
        print(f"error: {error} (the fine-tuned model is saved in {args.output_dir})", file=sys.stderr)
        return 1
    top5 = f", top-5 {results['eval_top5_accuracy']:.4f}" if "eval_top5_accuracy" in results else ""
    pushed = f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""
    print(f"held-out accuracy {results['eval_accuracy']:.4f}{top5}; saved to {args.output_dir}{pushed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
