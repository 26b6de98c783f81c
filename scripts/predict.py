"""Classify images with a trained model: the top-k labels and scores of every file, as CSV or JSON.

python scripts/predict.py --model outputs/finetune --input photos/                       # CSV on stdout
python scripts/predict.py --model outputs/finetune --input photos/ a.jpg file:///data/b.png --output predictions.json
python scripts/predict.py --model google/vit-base-patch16-224 --input photos/ --top-k 3 --output predictions.csv

A folder contributes its image files (all subfolders, sorted); a file that cannot be read is listed with the reason
and the rest are classified. The scores are those of transformers' image-classification pipeline.
"""

import argparse
import sys

from _cli import HelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="A saved classifier folder or a Hub repo id.")
    parser.add_argument(
        "--input", nargs="+", required=True, metavar="PATH", help="Image files, file:// URLs or folders of images."
    )
    parser.add_argument(
        "--output", default=None, metavar="FILE", help="Write here: JSON for a .json file, else CSV. Default: stdout."
    )
    parser.add_argument("--format", choices=("csv", "json"), default="csv", help="The format on stdout.")
    parser.add_argument("--top-k", type=int, default=5, help="Labels per image, best first.")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per forward pass.")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, ... Default: cuda if available, else cpu.")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="Run the modeling code of a model that is not hf_vit's."
    )
    parser.add_argument(
        "--int8", action="store_true", help="int8 weights (dynamic quantisation of the Linear layers), on the CPU."
    )
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error(f"--top-k and --batch-size must be at least 1, got {args.top_k} and {args.batch_size}")

    import torch

    from hf_vit.loading import load_image_processor, load_model, model_source
    from hf_vit.tools.predict import predict, save_predictions, write_predictions
    from hf_vit.tools.quantize import quantize_int8

    try:
        if model_source(args.model) == "preset":
            raise ValueError(f"--model {args.model!r} is a preset, whose weights are random; name a trained model.")
        model, info = load_model(args.model, trust_remote_code=args.trust_remote_code, output_loading_info=True)
        if info["missing_keys"]:
            missing = ", ".join(sorted(info["missing_keys"])[:4])
            raise ValueError(f"--model {args.model!r} is not a trained classifier: its weights lack {missing}.")
        processor = load_image_processor(args.model, model.config, trust_remote_code=args.trust_remote_code)
        device = args.device or ("cpu" if args.int8 or not torch.cuda.is_available() else "cuda")
        model = model.to(device).eval()
        if args.int8:
            model = quantize_int8(model)
        top_k = min(args.top_k, model.config.num_labels)
        results = predict(model, processor, args.input, top_k, args.batch_size)
        if args.output:
            predictions = save_predictions(results, args.output, top_k)
        else:
            predictions = write_predictions(results, sys.stdout, args.format, top_k)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = [p for p in predictions if p.error]
    for p in failed:
        print(f"warning: {p.file}: {p.error}", file=sys.stderr)
    where = f" to {args.output}" if args.output else ""
    print(
        f"classified {len(predictions) - len(failed)} images{where}; {len(failed)} could not be read", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
