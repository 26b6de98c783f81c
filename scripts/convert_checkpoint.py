"""Convert official JAX (.npz), timm or transformers ViT weights into an hf_vit folder.

python scripts/convert_checkpoint.py --source jax --checkpoint ViT-B_16.npz --output vit-b16-224
python scripts/convert_checkpoint.py --source jax --checkpoint ViT-B_16.npz --output vit-b16-384 --image-size 384 \\
    --num-labels 10 --labels labels.txt
python scripts/convert_checkpoint.py --source timm --checkpoint model.safetensors --preset ViT-B/16 --output out
python scripts/convert_checkpoint.py --source timm --checkpoint vit_base_patch16_224.augreg2_in21k_ft_in1k/ --output out
python scripts/convert_checkpoint.py --source transformers --checkpoint vit-base-patch16-224/ --output out \\
    --base-model google/vit-base-patch16-224 --push-to-hub my-org/vit-base-patch16-224-hf-vit

The folder loads with AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True); its image
processor prepares images as the source does (--preprocessing paper for hf_vit's).
"""

import argparse
import sys

from _cli import HelpFormatter

from hf_vit.tools.convert import PREPROCESSING, SOURCES


def parse_image_size(text: str) -> int | tuple[int, int]:
    """'384' or '384,512' (height,width)."""
    try:
        sizes = [int(part) for part in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be N or H,W, got {text!r}") from None
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"image size must be N or H,W with positive sizes, got {text!r}")
    return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--source", required=True, choices=SOURCES, help="Layout of the checkpoint.")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="The .npz (jax), .safetensors/.pth or timm Hub folder (timm), or model folder (transformers).",
    )
    parser.add_argument("--output", required=True, help="Folder to create (must not exist, or be empty).")
    parser.add_argument(
        "--preset", default=None, help="e.g. ViT-B/16: supplies the head count (timm) and dropout; checked."
    )
    parser.add_argument("--num-heads", type=int, default=None, help="Attention heads, where no preset fits (timm).")
    parser.add_argument(
        "--image-size", type=parse_image_size, default=None, help="Resize the position embeddings for N or H,W px."
    )
    parser.add_argument(
        "--interpolation",
        choices=("official", "bicubic"),
        default=None,
        help="Position-embedding resize: 'official' (corner-aligned bilinear, scipy.ndimage.zoom order 1) or "
        "'bicubic' (timm/transformers). Default: official for JAX, bicubic for timm and transformers.",
    )
    parser.add_argument(
        "--num-labels", type=int, default=None, help="New zero-initialised head with K classes (for fine-tuning)."
    )
    parser.add_argument(
        "--drop-head",
        action="store_true",
        help="New zero-initialised head (as many classes as --labels, else as the old head); drops pre-logits.",
    )
    parser.add_argument("--labels", default=None, help="Class names: a JSON list or dict, or one name per line.")
    parser.add_argument(
        "--base-model",
        default=None,
        metavar="REPO",
        help="Hub repo the checkpoint came from, for the model card (read off the path in the Hugging Face cache).",
    )
    parser.add_argument(
        "--preprocessing",
        choices=PREPROCESSING,
        default="source",
        help="The image processor: the source's (a transformers folder's processor, a timm folder's pretrained "
        "config, the official bilinear resize for JAX) or hf_vit's ('paper': bicubic resize, scaled to [-1, 1]).",
    )
    parser.add_argument("--license", default="apache-2.0", help="License of the weights, for the model card.")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="Also upload the folder to this repo.")
    args = parser.parse_args(argv)
    from hf_vit.tools.convert import ConversionError, convert_checkpoint
    from hf_vit.tools.hub import HubError

    try:
        folder = convert_checkpoint(
            args.source,
            args.checkpoint,
            args.output,
            preset=args.preset,
            num_heads=args.num_heads,
            image_size=args.image_size,
            interpolation=args.interpolation,
            num_labels=args.num_labels,
            drop_head=args.drop_head,
            labels=args.labels,
            push_to_hub=args.push_to_hub,
            base_model=args.base_model,
            license=args.license,
            preprocessing=args.preprocessing,
        )
    except ConversionError as error:
        raise SystemExit(f"error: {error}") from None
    except HubError as error:
        raise SystemExit(f"error: {error} (the converted model is saved in {args.output})") from None
    pushed = f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""
    print(f"converted {args.checkpoint} into {folder}{pushed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
