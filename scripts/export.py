"""Export a model to serve without its Python code: a torch.export program (model.pt2) and/or ONNX (model.onnx).

python scripts/export.py --model outputs/finetune --output exported                  # both formats, its own size
python scripts/export.py --model outputs/finetune --output exported --format onnx --dynamic-size --opset 18
python scripts/export.py --model ViT-B/16 --target encoder --output vit-b16 --dynamic-size   # a preset: random weights
python scripts/evaluate_model.py --onnx exported/model.onnx --dataset D                       # ONNX Runtime accuracy

The batch size is always free; --dynamic-size frees height and width too (any multiple of the token stride), with the
position embeddings resized inside the graph as the model's config says (official or bicubic). Without it the graph
takes the model's image size only. Beside the graph: preprocessor_config.json (the image processor) and export.json
(input, outputs, labels and preprocessing as plain values, for runtimes without Python). Every export is checked
against the PyTorch model on random inputs, and the largest difference printed.
"""

import argparse
import sys
from pathlib import Path

from _cli import HelpFormatter

TARGETS = ("classifier", "encoder")
FORMATS = ("pt2", "onnx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="A saved hf_vit folder, a Hub repo id, or a preset.")
    parser.add_argument("--output", required=True, help="Folder to write (must not exist, or be empty).")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="classifier",
        help="'classifier': logits; 'encoder': the tokens (last_hidden_state) and the pooled feature (pooler_output).",
    )
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS), help="Files to write.")
    parser.add_argument(
        "--dynamic-size", action="store_true", help="Serve any height and width divisible by the token stride."
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version.")
    parser.add_argument("--config-overrides", default=None, help='Config fields of a preset as "k=v,...".')
    args = parser.parse_args(argv)

    from hf_vit.loading import load_image_processor, load_model, model_source, parse_overrides
    from hf_vit.tools.export import GRAPH_FILES, ExportedModel, check_output_dir, compare_with_model, export_model

    try:
        check_output_dir(Path(args.output))
        task = "image-classification" if args.target == "classifier" else "feature-extraction"
        overrides = parse_overrides(args.config_overrides or "")
        if overrides and model_source(args.model) != "preset":
            raise ValueError("--config-overrides applies to presets only; a saved model keeps its config.")
        model, info = load_model(args.model, task, config_overrides=overrides, output_loading_info=True)
        if info["missing_keys"]:
            missing = ", ".join(sorted(info["missing_keys"])[:4])
            raise ValueError(f"--model {args.model!r} lacks weights for {missing}; is --target {args.target} right?")
        processor = load_image_processor(args.model, model.config)
        manifest = export_model(
            model,
            processor,
            args.output,
            target=args.target,
            formats=tuple(args.format),
            dynamic_size=args.dynamic_size,
            opset=args.opset,
            source=args.model,
        )
        size = "x".join(map(str, manifest["input"]["image_size"]))
        sizes = "any height and width divisible by the token stride" if args.dynamic_size else f"{size} only"
        print(
            f"exported {args.model} ({args.target}, {sizes}) to {args.output}: {', '.join(manifest['files'].values())}"
        )
        for name in args.format:
            exported = ExportedModel(Path(args.output) / GRAPH_FILES[name])
            differences = compare_with_model(model, exported, args.target)
            seconds = manifest["seconds"]["onnx" if name == "onnx" else "torch_export"]
            checked = ", ".join(f"{size}: {difference:.2g}" for size, difference in differences.items())
            print(f"{name}: exported in {seconds:.1f} s; largest difference from PyTorch: {checked}")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
