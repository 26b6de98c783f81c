"""Pre-train a ViT (or hybrid) from scratch with the paper's recipe.

accelerate launch scripts/pretrain.py --model ViT-B/16 --dataset DATA ...   # any number of GPUs/TPUs
python scripts/pretrain.py                                                # small ViT on the built-in digits
"""

import argparse
import sys

from hf_vit.tools.hub import HubError
from hf_vit.training.data import add_data_arguments
from hf_vit.training.pretraining import NonFiniteLossError, Trainer, add_training_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser)
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    try:
        trainer = Trainer(args)
        results = trainer.train()
    except (NonFiniteLossError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except HubError as error:
        print(f"error: {error} (the trained model is saved in {args.output_dir})", file=sys.stderr)
        return 1
    trainer.print(
        f"held-out accuracy {results['eval_accuracy']:.4f} (loss {results['eval_loss']:.4f}) after "
        f"{results['train_steps']} updates in {results['train_runtime_seconds']:.0f} s; saved to {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
