"""Command-line flags that more than one script takes, defined once."""

import argparse


def add_run_arguments(parser: argparse.ArgumentParser, output_dir: str) -> None:
    """Output, checkpointing, logging, seeding and publishing flags shared by pretrain.py and finetune.py."""
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", default=output_dir)
    run.add_argument("--eval-every", type=int, default=None, help="Evaluate every N updates (and at the end).")
    run.add_argument("--save-every", type=int, default=1000, help="Checkpoint every N updates (and at the end).")
    run.add_argument("--save-total-limit", type=int, default=2, help="Rotating checkpoints kept.")
    run.add_argument("--logging-every", type=int, default=20)
    run.add_argument("--resume-from-checkpoint", default=None, metavar="PATH|latest")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--report-to", default="none", help="Trackers: tensorboard, wandb, ... or none.")
    run.add_argument("--push-to-hub", default=None, metavar="REPO", help="Push the final model to this Hub repo.")
