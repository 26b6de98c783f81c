"""Draw the paper's analyses of a ViT (Figures 6 and 7) and save the numbers behind them.

python scripts/analyze.py --model path/to/saved_model --image photo.jpg --output-dir analysis/
python scripts/analyze.py --model ViT-Ti/16 --image a.jpg --image b.jpg --output-dir out/   # random init

Writes attention_rollout_<n>.png per image, mean_attention_distance.png, position_embedding_similarity.png,
patch_embedding_filters.png (not for hybrids), overview.png and analysis.json.
"""

import argparse
import json
import sys
from pathlib import Path

from _cli import HelpFormatter


def load_images(paths: list[str]) -> list:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            images.append(Image.open(path).convert("RGB"))
        except FileNotFoundError:
            raise ValueError(f"--image {path}: no such file.") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"--image {path}: not a readable image ({error}).") from None
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="a saved model folder, or a preset name (random weights)")
    parser.add_argument("--image", action="append", required=True, help="an input image; repeat for more")
    parser.add_argument("--output-dir", required=True, type=Path, help="where the PNGs and analysis.json go")
    parser.add_argument("--num-components", type=int, default=28, help="principal components of the filters")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs (dots per inch)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for a preset")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, ... Default: cuda if available, else cpu.")
    args = parser.parse_args(argv)
    if args.num_components < 1:
        parser.error(f"--num-components must be at least 1, got {args.num_components}")
    if args.dpi < 10:
        parser.error(f"--dpi must be at least 10, got {args.dpi}")
    import numpy as np
    import torch
    from PIL import Image

    from hf_vit.loading import load_image_processor, load_model
    from hf_vit.tools import plotting
    from hf_vit.tools.analysis import analyze

    try:
        plotting.require_matplotlib()
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        images = load_images(args.image)
        torch.manual_seed(args.seed)  # the initialisation of a preset
        model = load_model(args.model, task="auto")
        processor = load_image_processor(args.model, model.config)
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
        model = model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        result = analyze(model, pixel_values.to(args.device), args.num_components)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    height, width = pixel_values.shape[-2:]
    shown = [np.asarray(image.resize((width, height), Image.BICUBIC)) for image in images]
    readout = "class token" if result.num_prefix_tokens else "mean over tokens"
    drawn = {
        f"attention_rollout_{index}": plotting.rollout_figure(image, rollout, readout)
        for index, (image, rollout) in enumerate(zip(shown, result.rollout_maps.numpy(), strict=True))
    }
    drawn["mean_attention_distance"] = plotting.attention_distance_figure(result)
    drawn["position_embedding_similarity"] = plotting.position_similarity_figure(result.position_similarity.numpy())
    if result.filters is not None:
        drawn["patch_embedding_filters"] = plotting.filters_figure(result.filters.components.numpy())
    else:
        print(f"note: {result.filters_note}")
    drawn["overview"] = plotting.overview_figure(result, shown[0], readout)
    figures = {key: plotting.save_figure(figure, out / f"{key}.png", args.dpi).name for key, figure in drawn.items()}

    summary = {
        "model": args.model,
        "model_type": model.config.model_type,
        "classifier": model.config.classifier,
        "images": args.image,
        "input_size": [height, width],
        "figures": figures,
        **result.to_json(),
    }
    (out / "analysis.json").write_text(json.dumps(summary))
    distances = result.attention_distance
    print(
        f"{len(images)} image(s), {distances.shape[0]} layers x {distances.shape[1]} heads; mean attention distance "
        f"{distances[0].mean():.1f} px in the first layer, {distances[-1].mean():.1f} px in the last. "
        f"Wrote {len(figures)} figures and analysis.json to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
