"""Push a model folder saved by hf_vit to the Hugging Face Hub, with its code, image processor and model card.

python scripts/push_to_hub.py --model outputs/pretrain --repo-id my-org/vit-digits [--private] [--revision BRANCH] \\
    [--include all_results.json ...]

Only the model goes up: weights, config, image processor config, modeling code and model card; other files of the
folder only when --include names them.

Log in first (`hf auth login`) or set HF_TOKEN; HF_ENDPOINT selects another Hub.
"""

import argparse
import sys

from _cli import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR", help="A folder written by save_pretrained.")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="The Hub repo (created if needed).")
    parser.add_argument("--private", action="store_true", help="Create the repo private (an existing repo is kept).")
    parser.add_argument("--revision", default=None, metavar="BRANCH", help="Push to this branch (created from main).")
    parser.add_argument("--commit-message", default=None, metavar="MSG")
    parser.add_argument(
        "--include",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="Also upload these files of the folder (paths relative to it), e.g. all_results.json.",
    )
    args = parser.parse_args(argv)
    from hf_vit.tools.hub import HubError, push_model

    try:
        commit = push_model(
            args.model,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            include=args.include,
        )
    except (HubError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    branch = args.revision or "main"
    print(f"Pushed {args.model} to {args.repo_id} ({branch}) at commit {commit.oid}: {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
