"""Checkpoint conversion: JAX (.npz), timm and transformers weights in, the source's logits out.

Every test builds its checkpoint here (no download): JAX layouts are checked against the NumPy reference forward of
tests/numpy_vit.py, timm and transformers against their own models.
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import numpy_vit as nv
import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

from hf_vit.tools.convert import ConversionError, convert_checkpoint, read_labels

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def run_cli(*args: str) -> int:
    """scripts/convert_checkpoint.py's main, in this process (fast); argv as on the command line."""
    spec = importlib.util.spec_from_file_location("convert_checkpoint", ROOT / "scripts" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(arg) for arg in args])


def load_converted(folder: Path) -> torch.nn.Module:
    """The converted folder as any user loads it: Auto class, remote code."""
    return AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()


def images(size: int | tuple[int, int], count: int = 2, seed: int = 1) -> np.ndarray:
    height, width = (size, size) if isinstance(size, int) else size
    return np.random.default_rng(seed).uniform(-1, 1, (count, height, width, 3))


def torch_logits(model: torch.nn.Module, pixels_nhwc: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        pixels = torch.from_numpy(pixels_nhwc).permute(0, 3, 1, 2).float()
        return model(pixels, **kwargs).logits.double().numpy()


def save_npz(path: Path, params: dict) -> Path:
    np.savez(path, **params)
    return path


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (norm scales near 1), so a swapped or skipped tensor changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm_scale = param.ndim == 1 and "norm" in name and name.endswith("weight")
            param.copy_(1 + 0.1 * noise if is_norm_scale else 0.2 * noise)
    return model.eval()


# --- JAX --------------------------------------------------------------------------------------------------------


def opt_target(params: dict) -> dict:
    return {f"opt/target/{key}": value for key, value in params.items()}


JAX_LAYOUTS = {
    "released": ({}, lambda p: p, False),
    "linen": ({}, nv.to_linen, False),
    "opt_target_gap": ({"token": False}, opt_target, False),
    "representation": ({"representation": 24}, lambda p: p, False),
    "big_vision": ({"pos_slot_for_cls": False}, nv.to_big_vision, True),
    "big_vision_scanned": ({"pos_slot_for_cls": False}, lambda p: nv.to_big_vision(p, scanned=True), True),
}


@pytest.mark.parametrize("layout", JAX_LAYOUTS)
def test_jax_layouts_match_numpy_reference(tmp_path, layout):
    fields, rewrite, pos_before_cls = JAX_LAYOUTS[layout]
    params = nv.make_params(**fields)
    checkpoint = save_npz(tmp_path / "ckpt.npz", rewrite(params))
    assert run_cli("--source", "jax", "--checkpoint", checkpoint, "--output", tmp_path / "out") == 0
    model = load_converted(tmp_path / "out")
    x = images(32)
    expected = nv.forward(params, x, pos_before_cls=pos_before_cls)
    np.testing.assert_allclose(torch_logits(model, x), expected, atol=TOLERANCE, rtol=0)
    config = model.config
    assert (config.hidden_act, config.layer_norm_eps, config.pos_embed_interpolation) == (
        "gelu_pytorch_tanh",
        1e-6,
        "official",
    )
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        32,
        2,
        4,
        64,
    )
    assert (config.patch_size, config.image_size, config.num_labels) == (8, 32, 5)
    assert config.classifier == ("gap" if layout == "opt_target_gap" else "token")
    assert config.representation_size == (24 if layout == "representation" else None)


def test_output_folder_holds_weights_config_processor_and_card(tmp_path):
    checkpoint = save_npz(tmp_path / "ViT-Tiny.npz", nv.make_params())
    convert_checkpoint("jax", checkpoint, tmp_path / "out")
    names = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"model.safetensors", "config.json", "modeling.py", "preprocessor_config.json", "README.md"} <= names
    card = (tmp_path / "out" / "README.md").read_text()
    assert "from the official JAX (.npz) checkpoint `ViT-Tiny.npz`; the weights are as in the checkpoint" in card
    assert "GELU (tanh approximation" in card and "pipeline_tag: image-classification" in card
    assert "base_model" not in card and "Changes made" not in card
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32} and processor["image_mean"] == [0.5, 0.5, 0.5]
    assert processor["resample"] == 2  # bilinear: the official eval's tf.image.resize
    assert "The image processor follows the official code's preprocessing." in card
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def zoom_official(pos_embed: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """The official resize (vit_jax checkpoint.py): scipy.ndimage.zoom(order=1) on the grid, cls slot kept."""
    from scipy import ndimage

    cls, grid = pos_embed[:, :1], pos_embed[0, 1:].reshape(old[0], old[1], -1)
    zoomed = ndimage.zoom(grid.astype(np.float64), (new[0] / old[0], new[1] / old[1], 1), order=1)
    return np.concatenate([cls, zoomed.reshape(1, new[0] * new[1], -1)], axis=1)


@pytest.mark.parametrize("size", [384, (384, 512)], ids=["384", "384x512"])
def test_jax_resize_224_to_384_official_is_scipy_zoom(tmp_path, size):
    params = nv.make_params(patch=16, grid=14)
    checkpoint = save_npz(tmp_path / "ckpt.npz", params)
    size_arg = size if isinstance(size, int) else f"{size[0]},{size[1]}"
    run_cli("--source", "jax", "--checkpoint", checkpoint, "--output", tmp_path / "out", "--image-size", size_arg)
    height, width = (size, size) if isinstance(size, int) else size
    new_grid = (height // 16, width // 16)
    zoomed = zoom_official(params["Transformer/posembed_input/pos_embedding"], (14, 14), new_grid)
    converted = load_file(tmp_path / "out" / "model.safetensors")["vit.embeddings.position_embeddings"]
    np.testing.assert_allclose(converted.numpy(), zoomed, atol=1e-6, rtol=0)
    # End to end: the official pipeline (zoom, then run at the new size) gives the converted model's logits.
    model = load_converted(tmp_path / "out")
    assert model.config.image_size == (size if isinstance(size, int) else list(size))
    x = images((height, width), count=1)
    expected = nv.forward({**params, "Transformer/posembed_input/pos_embedding": zoomed}, x)
    np.testing.assert_allclose(torch_logits(model, x), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("size", [384, (384, 512)], ids=["384", "384x512"])
def test_jax_resize_bicubic_matches_timm_and_runtime_resize(tmp_path, size):
    params = nv.make_params(patch=16, grid=14)
    checkpoint = save_npz(tmp_path / "ckpt.npz", params)
    size_arg = size if isinstance(size, int) else f"{size[0]},{size[1]}"
    args = ["--source", "jax", "--checkpoint", checkpoint, "--interpolation", "bicubic"]
    run_cli(*args, "--output", tmp_path / "resized", "--image-size", size_arg)
    run_cli(*args, "--output", tmp_path / "native")
    resized, native = load_converted(tmp_path / "resized"), load_converted(tmp_path / "native")
    assert resized.config.pos_embed_interpolation == "bicubic"
    height, width = (size, size) if isinstance(size, int) else size
    x = images((height, width), count=1)
    # Converting at 384 equals running the 224 model at 384 (it resizes the same way on the fly).
    np.testing.assert_allclose(
        torch_logits(resized, x), torch_logits(native, x, interpolate_pos_encoding=True), atol=TOLERANCE, rtol=0
    )
    # transformers' bicubic (no antialiasing); timm antialiases by default when it resizes, a different kernel.
    timm_layers = pytest.importorskip("timm.layers")
    pos_embed = torch.from_numpy(params["Transformer/posembed_input/pos_embedding"])
    expected = timm_layers.resample_abs_pos_embed(pos_embed, [height // 16, width // 16], [14, 14], antialias=False)
    converted = load_file(tmp_path / "resized" / "model.safetensors")["vit.embeddings.position_embeddings"]
    torch.testing.assert_close(converted, expected, atol=1e-5, rtol=0)


def test_new_head_drops_representation_and_names_labels(tmp_path):
    params = nv.make_params(representation=24)
    checkpoint = save_npz(tmp_path / "ckpt.npz", params)
    (tmp_path / "labels.txt").write_text("cat\ndog\nfish\n")
    run_cli("--source", "jax", "--checkpoint", checkpoint, "--output", tmp_path / "full")
    run_cli(
        "--source",
        "jax",
        "--checkpoint",
        checkpoint,
        "--output",
        tmp_path / "new",
        "--num-labels",
        "3",
        "--labels",
        tmp_path / "labels.txt",
    )
    weights = load_file(tmp_path / "new" / "model.safetensors")
    assert not any(key.startswith("vit.pre_logits") for key in weights)
    assert weights["classifier.weight"].shape == (3, 32) and not weights["classifier.weight"].any()
    card = (tmp_path / "new" / "README.md").read_text()
    assert "New zero-initialised head with 3 classes; the representation (pre-logits) layer dropped." in card
    assert "Labels | cat, dog, fish |" in card
    full, new = load_converted(tmp_path / "full"), load_converted(tmp_path / "new")
    assert new.config.representation_size is None
    assert new.config.id2label == {0: "cat", 1: "dog", 2: "fish"} and new.config.label2id["fish"] == 2
    x = torch.from_numpy(images(32)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        torch.testing.assert_close(new.vit(x).last_hidden_state, full.vit(x).last_hidden_state, atol=0, rtol=0)
        assert not new(x).logits.any()


def test_drop_head_keeps_the_class_count(tmp_path):
    checkpoint = save_npz(tmp_path / "ckpt.npz", nv.make_params(representation=24))
    run_cli("--source", "jax", "--checkpoint", checkpoint, "--output", tmp_path / "out", "--drop-head")
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert weights["classifier.weight"].shape == (5, 32) and not weights["classifier.weight"].any()
    assert "vit.pre_logits.0.weight" not in weights


def test_labels_files(tmp_path):
    (tmp_path / "list.json").write_text('["a", "b"]')
    (tmp_path / "dict.json").write_text('{"1": "b", "0": "a"}')
    (tmp_path / "lines.txt").write_text("a\nb\n\n")
    (tmp_path / "gaps.json").write_text('{"0": "a", "2": "c"}')
    for name in ("list.json", "dict.json", "lines.txt"):
        assert read_labels(tmp_path / name) == ["a", "b"]
    with pytest.raises(ConversionError, match="number its classes 0 to 1 without gaps"):
        read_labels(tmp_path / "gaps.json")
    checkpoint = save_npz(tmp_path / "ckpt.npz", nv.make_params())
    with pytest.raises(ConversionError, match="2 labels were given but the head has 5 classes"):
        convert_checkpoint("jax", checkpoint, tmp_path / "out", labels=tmp_path / "list.json")
    assert not (tmp_path / "out").exists()


HYBRID_LAYOUTS = {
    "r_1_1_released": ({"resnet_layers": (1, 1), "patch": 1, "grid": 8}, lambda p: p),
    "r_2_old_group_norm": ({"resnet_layers": (2,), "patch": 1, "grid": 16}, nv.with_old_group_norm),
    "stem_only_linen": ({"resnet_layers": (), "patch": 8, "grid": 2}, nv.to_linen),
}


@pytest.mark.parametrize("layout", HYBRID_LAYOUTS)
def test_jax_hybrid_matches_numpy_reference(tmp_path, layout):
    fields, rewrite = HYBRID_LAYOUTS[layout]
    params = nv.make_params(**fields)
    checkpoint = save_npz(tmp_path / "hybrid.npz", rewrite(params))
    run_cli("--source", "jax", "--checkpoint", checkpoint, "--output", tmp_path / "out")
    model = load_converted(tmp_path / "out")
    assert type(model).__name__ == "HybridVisionTransformerForImageClassification"
    assert (model.config.resnet_layers, model.config.patch_size) == (list(fields["resnet_layers"]), fields["patch"])
    assert model.config.image_size == 64 and model.config.hidden_act == "gelu_pytorch_tanh"
    x = images(64)
    np.testing.assert_allclose(torch_logits(model, x), nv.forward(params, x), atol=TOLERANCE, rtol=0)


def test_jax_hybrid_preset_is_checked(tmp_path):
    params = nv.make_params(hidden=768, heads=12, mlp=64, layers=1, resnet_layers=(1,), patch=1, grid=2)
    checkpoint = save_npz(tmp_path / "hybrid.npz", params)
    with pytest.raises(ConversionError, match=r"num_hidden_layers is 1 in the checkpoint but 12 in the preset"):
        convert_checkpoint("jax", checkpoint, tmp_path / "out", preset="R50+ViT-B/16")
    with pytest.raises(ConversionError, match=r"is a hybrid but preset 'ViT-B/16' is not"):
        convert_checkpoint("jax", checkpoint, tmp_path / "out", preset="ViT-B/16")
    assert not (tmp_path / "out").exists()


# --- timm -------------------------------------------------------------------------------------------------------


def timm_model(**kwargs) -> torch.nn.Module:
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    fields = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)
    return randomize(vision_transformer.VisionTransformer(**{**fields, **kwargs}))


TIMM_CASES = {
    "token_safetensors": ({}, "model.safetensors", False),
    "gap_pth": ({"class_token": False, "global_pool": "avg", "fc_norm": False}, "model.pth", False),
    "wrapped_pth": ({}, "checkpoint.pth", True),
    "no_embed_class": ({"no_embed_class": True}, "model.safetensors", False),
}


@pytest.mark.parametrize("case", TIMM_CASES)
def test_timm_matches_timm(tmp_path, case):
    kwargs, filename, wrapped = TIMM_CASES[case]
    model = timm_model(**kwargs)
    state_dict = model.state_dict()
    if filename.endswith(".safetensors"):
        save_file(state_dict, tmp_path / filename)
    else:
        torch.save({"state_dict": state_dict, "epoch": 3} if wrapped else state_dict, tmp_path / filename)
    args = ["--source", "timm", "--checkpoint", tmp_path / filename, "--num-heads", "4"]
    assert run_cli(*args, "--output", tmp_path / "out") == 0
    converted = load_converted(tmp_path / "out")
    assert (converted.config.hidden_act, converted.config.pos_embed_interpolation) == ("gelu", "bicubic")
    x = images(32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2).float()).double().numpy()
    np.testing.assert_allclose(torch_logits(converted, x), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("layers,patch", [((1, 1), 1), ((), 8)], ids=["r_1_1", "stem_only"])
def test_timm_hybrid_matches_timm(tmp_path, layers, patch):
    hybrid = pytest.importorskip("timm.models.vision_transformer_hybrid")
    backbone = hybrid._resnetv2(layers=layers)  # how timm builds its vit_*_r* models
    model = timm_model(img_size=64, patch_size=patch, embed_layer=partial(hybrid.HybridEmbed, backbone=backbone))
    # Weight standardisation makes a filter's scale irrelevant, except through eps: timm divides by
    # sqrt(var + 1e-8) and normalises groups with eps 1e-5, the official code by std + 1e-5 and 1e-6. Filters of
    # std ~10 make those differences vanish (< 1e-6), so what is compared is the mapping of every tensor.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("patch_embed.backbone") and param.ndim == 4:
                param.mul_(50)
    save_file(model.state_dict(), tmp_path / "hybrid.safetensors")
    args = ["--source", "timm", "--checkpoint", tmp_path / "hybrid.safetensors", "--num-heads", "4"]
    run_cli(*args, "--output", tmp_path / "out")
    converted = load_converted(tmp_path / "out")
    assert converted.config.resnet_layers == list(layers) and converted.config.num_attention_heads == 4
    x = images(64)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2).float()).double().numpy()
    np.testing.assert_allclose(torch_logits(converted, x), expected, atol=TOLERANCE, rtol=0)


def test_timm_heads_from_width_table_and_preset_mismatch(tmp_path):
    model = timm_model(embed_dim=192, num_heads=3, depth=1, patch_size=16, mlp_ratio=4)
    save_file(model.state_dict(), tmp_path / "ti.safetensors")
    convert_checkpoint("timm", tmp_path / "ti.safetensors", tmp_path / "out")
    converted = load_converted(tmp_path / "out")
    assert converted.config.num_attention_heads == 3
    x = images(32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2).float()).double().numpy()
    np.testing.assert_allclose(torch_logits(converted, x), expected, atol=TOLERANCE, rtol=0)
    with pytest.raises(ConversionError, match="num_hidden_layers is 1 in the checkpoint but 12 in the preset"):
        convert_checkpoint("timm", tmp_path / "ti.safetensors", tmp_path / "preset", preset="ViT-Ti/16")
    assert not (tmp_path / "preset").exists()


def test_timm_fc_norm_is_refused_by_name(tmp_path):
    model = timm_model(class_token=False, global_pool="avg")
    save_file(model.state_dict(), tmp_path / "gap.safetensors")
    with pytest.raises(ConversionError, match=r"normalises after pooling \(fc_norm"):
        convert_checkpoint("timm", tmp_path / "gap.safetensors", tmp_path / "out", num_heads=4)
    assert not (tmp_path / "out").exists()


# --- transformers -----------------------------------------------------------------------------------------------


def transformers_vit(model_class: str = "ViTForImageClassification", **overrides):
    import transformers

    fields = {
        **TINY,
        "num_labels": 3,
        "id2label": {0: "cat", 1: "dog", 2: "fish"},
        "label2id": {"cat": 0, "dog": 1, "fish": 2},
    }
    config = transformers.ViTConfig(**{**fields, **overrides})
    return randomize(getattr(transformers, model_class)(config))


@pytest.mark.parametrize("names", ["saved_old_names", "in_memory_new_names"])
def test_transformers_matches_transformers(tmp_path, names):
    model = transformers_vit(hidden_act="gelu_new", layer_norm_eps=1e-5)
    folder = tmp_path / "source"
    model.save_pretrained(folder)
    if names == "in_memory_new_names":
        (folder / "model.safetensors").unlink()
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, folder / "model.safetensors")
        assert any(".q_proj." in key for key in load_file(folder / "model.safetensors"))
    else:
        assert any(".attention.attention.query." in key for key in load_file(folder / "model.safetensors"))
    run_cli("--source", "transformers", "--checkpoint", folder, "--output", tmp_path / "out")
    converted = load_converted(tmp_path / "out")
    assert (converted.config.hidden_act, converted.config.layer_norm_eps) == ("gelu_new", 1e-5)
    assert converted.config.id2label == {0: "cat", 1: "dog", 2: "fish"}
    x = images(32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2).float()).logits.double().numpy()
    np.testing.assert_allclose(torch_logits(converted, x), expected, atol=TOLERANCE, rtol=0)


def test_transformers_base_model_with_pooler_needs_a_head(tmp_path):
    model = transformers_vit("ViTModel")
    model.save_pretrained(tmp_path / "source")
    with pytest.raises(ConversionError, match="has no classification head; pass num_labels"):
        convert_checkpoint("transformers", tmp_path / "source", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    convert_checkpoint("transformers", tmp_path / "source", tmp_path / "out", num_labels=7)
    converted = load_converted(tmp_path / "out")
    assert converted.config.num_labels == 7 and converted.config.representation_size is None
    x = torch.from_numpy(images(32)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        torch.testing.assert_close(
            converted.vit(x).last_hidden_state, model(x).last_hidden_state, atol=TOLERANCE, rtol=0
        )


def test_transformers_pooler_is_the_representation_layer(tmp_path):
    from hf_vit.tools.convert import load_checkpoint

    model = transformers_vit("ViTModel")
    model.save_pretrained(tmp_path / "source")
    converted = load_checkpoint("transformers", tmp_path / "source")
    assert converted.config.representation_size == 32
    ours = AutoModelForImageClassification.from_config(converted.config).eval()
    missing, unexpected = ours.load_state_dict(converted.state_dict, strict=False)
    assert missing == ["classifier.weight", "classifier.bias"] and unexpected == []
    x = torch.from_numpy(images(32)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        torch.testing.assert_close(ours.vit(x).pooler_output, model(x).pooler_output, atol=TOLERANCE, rtol=0)


# --- preprocessing ----------------------------------------------------------------------------------------------


def photo_logits(model: torch.nn.Module, pixel_values: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = model(pixel_values)
    return getattr(out, "logits", out).double().numpy()


TRANSFORMERS_PROCESSORS = {
    # transformers' ViT default (bilinear), with ImageNet statistics
    "resize": dict(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    # DeiT-style: the shorter side to 36 px, a 32 px centre crop, bicubic
    "shorter_side_and_crop": dict(
        size={"shortest_edge": 36}, do_center_crop=True, crop_size={"height": 32, "width": 32}, resample=3
    ),
}


@pytest.mark.parametrize("case", TRANSFORMERS_PROCESSORS)
def test_transformers_folder_keeps_its_processor_logits_equal_on_a_photo(tmp_path, photo, case):
    from transformers import AutoImageProcessor, ViTImageProcessor

    model = transformers_vit()
    model.save_pretrained(tmp_path / "source")
    ViTImageProcessor(**TRANSFORMERS_PROCESSORS[case]).save_pretrained(tmp_path / "source")
    run_cli("--source", "transformers", "--checkpoint", tmp_path / "source", "--output", tmp_path / "out")
    source_pixels = AutoImageProcessor.from_pretrained(tmp_path / "source")(photo, return_tensors="pt").pixel_values
    pixels = AutoImageProcessor.from_pretrained(tmp_path / "out")(photo, return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels, source_pixels, atol=0, rtol=0)
    expected = photo_logits(model, source_pixels)
    np.testing.assert_allclose(photo_logits(load_converted(tmp_path / "out"), pixels), expected, atol=TOLERANCE, rtol=0)

    card = (tmp_path / "out" / "README.md").read_text()
    assert "The image processor follows the source folder's." in card
    run_cli(
        *("--source", "transformers", "--checkpoint", tmp_path / "source", "--output", tmp_path / "ours"),
        *("--preprocessing", "paper", "--image-size", "48"),
    )
    ours = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert (ours["size"], ours["resample"], ours["image_mean"]) == ({"height": 48, "width": 48}, 3, [0.5] * 3)
    assert "The image processor is hf_vit's (as asked)." in (tmp_path / "ours" / "README.md").read_text()


def test_transformers_processor_follows_a_new_image_size(tmp_path):
    from transformers import ViTImageProcessor

    transformers_vit().save_pretrained(tmp_path / "source")
    ViTImageProcessor(**TRANSFORMERS_PROCESSORS["shorter_side_and_crop"]).save_pretrained(tmp_path / "source")
    convert_checkpoint("transformers", tmp_path / "source", tmp_path / "out", image_size=64)
    saved = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    # the crop keeps its share of the shorter side: 32 of 36 px becomes 64 of 72
    assert (saved["size"], saved["crop_size"], saved["resample"]) == (
        {"shortest_edge": 72},
        {"height": 64, "width": 64},
        3,
    )
    with pytest.raises(
        ConversionError,
        match=r"\(the source folder's\) resizes the shorter side and crops a square, which cannot make 64×96 inputs",
    ):
        convert_checkpoint("transformers", tmp_path / "source", tmp_path / "wide", image_size=(64, 96))


# timm pretrained configs: the usual 224 px ViT (crop_pct 0.9 of the shorter side, bicubic, [-1, 1]) and timm's
# 384 px style (squash), here with a crop and ImageNet statistics. transformers' centre crop starts at floor(margin/2),
# timm's at round(margin/2), half to even: they differ by a pixel when a margin is 3 mod 4. On the 427×640 photo the
# margins here are 4 and 25 (40 px model: 44×65 resized) and 4 and 4 (32 px: 36×36 resized), where both agree.
TIMM_PREPROCESSING = {
    "shorter_side_crop": (40, dict(crop_pct=0.9, crop_mode="center", interpolation="bicubic")),
    "squash_crop": (
        32,
        dict(crop_pct=0.875, crop_mode="squash", interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.2,) * 3),
    ),
}


@pytest.mark.parametrize("case", TIMM_PREPROCESSING)
def test_timm_folder_keeps_its_pretrained_config_logits_equal_on_a_photo(tmp_path, photo, case):
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_data_config
    from timm.models import save_for_hf
    from transformers import AutoImageProcessor

    size, overlay = TIMM_PREPROCESSING[case]
    fields = dict(img_size=size, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    source = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained_cfg_overlay=overlay, **fields)
    save_for_hf(randomize(source), tmp_path / "timm", safe_serialization=True)  # a timm Hub folder
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()  # as timm users load it
    expected_pixels = create_transform(**resolve_data_config(model=reloaded))(photo)[None]
    expected = photo_logits(reloaded, expected_pixels)
    run_cli("--source", "timm", "--checkpoint", tmp_path / "timm", "--num-heads", "4", "--output", tmp_path / "out")
    # The PIL backend resamples as timm (PIL) does; the default torchvision backend differs by an 8-bit level here
    # and there.
    processor = AutoImageProcessor.from_pretrained(tmp_path / "out", backend="pil")
    pixels = processor(photo, return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels, expected_pixels, atol=1e-6, rtol=0)
    np.testing.assert_allclose(photo_logits(load_converted(tmp_path / "out"), pixels), expected, atol=TOLERANCE, rtol=0)
    assert "The image processor follows timm's pretrained config." in (tmp_path / "out" / "README.md").read_text()


def test_timm_file_without_pretrained_config_gets_hf_vit_preprocessing(tmp_path):
    save_file(timm_model().state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))  # beside it, but not timm's
    convert_checkpoint("timm", tmp_path / "model.safetensors", tmp_path / "out", num_heads=4)
    saved = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert (saved["resample"], saved["image_mean"], saved.get("do_center_crop")) == (3, [0.5] * 3, None)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "is hf_vit's (the checkpoint does not say how its source prepares images)" in card


def test_timm_border_crop_mode_is_refused_by_name(tmp_path):
    save_file(timm_model().state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_cfg": {"crop_mode": "border"}}))
    with pytest.raises(ConversionError, match=r"crop mode 'border' .* Pass --preprocessing paper"):
        convert_checkpoint("timm", tmp_path, tmp_path / "out", num_heads=4)
    convert_checkpoint("timm", tmp_path, tmp_path / "out", num_heads=4, preprocessing="paper")
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()


# --- bad input --------------------------------------------------------------------------------------------------


def sharded_transformers_folder(folder: Path) -> tuple[torch.nn.Module, list[str]]:
    """A transformers ViT saved in several shards with an index, as large checkpoints are; returns the shard names."""
    model = transformers_vit()
    model.save_pretrained(folder, max_shard_size="40KB")
    shards = sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(shards) > 1
    return model, shards


def test_shard_names_that_leave_the_folder_are_refused(tmp_path):
    """A weight index naming `../x`, an absolute path or a link out is refused before any of its shards is read."""
    source = tmp_path / "source"
    _, shards = sharded_transformers_folder(source)
    index_file = source / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    first = shards[0]
    (tmp_path / "outside.safetensors").write_bytes((source / first).read_bytes())  # real weights: read, they convert
    (source / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    cases = [
        ("../outside.safetensors", r"shard '\.\./outside\.safetensors' leads outside .*source"),
        ("/etc/passwd", r"shard '/etc/passwd' leads outside .*source"),
        ("link.safetensors", r"shard 'link\.safetensors' is a link to .*outside\.safetensors, outside .*source"),
    ]
    for shard, message in cases:
        weight_map = {key: shard if name == first else name for key, name in index["weight_map"].items()}
        index_file.write_text(json.dumps({**index, "weight_map": weight_map}))
        with pytest.raises(ConversionError, match=message + "; conversion reads only files inside the checkpoint"):
            convert_checkpoint("transformers", source, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    (source / "config.json").rename(tmp_path / "config.json")
    (source / "config.json").symlink_to(tmp_path / "config.json")
    with pytest.raises(ConversionError, match=r"'config\.json' is a link to .*, outside .*source"):
        convert_checkpoint("transformers", source, tmp_path / "out")


def test_a_snapshot_in_the_hugging_face_cache_links_into_its_blobs_and_converts(tmp_path):
    """The cache stores files once under blobs/ and links to them from snapshots/<commit>/: those links stay inside."""
    saved = tmp_path / "saved"
    model, _ = sharded_transformers_folder(saved)
    repo = tmp_path / "hf-cache" / "models--org--vit-sharded"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in saved.iterdir():
        file.rename(repo / "blobs" / file.name)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", file.name))
    convert_checkpoint("transformers", snapshot, tmp_path / "out")
    x = images(32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x).permute(0, 3, 1, 2).float()).logits.double().numpy()
    np.testing.assert_allclose(torch_logits(load_converted(tmp_path / "out"), x), expected, atol=TOLERANCE, rtol=0)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.npz").write_text("not a checkpoint")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    (tmp_path / "folder").mkdir()
    cases = [
        ("jax", tmp_path / "notes.npz", "notes.npz is not a NumPy .npz checkpoint"),
        ("timm", tmp_path / "notes.pth", "notes.pth is not a PyTorch checkpoint: it is a text file"),
        ("transformers", tmp_path / "folder", "is not a transformers model folder: it has no config.json"),
        ("jax", tmp_path / "missing.npz", "missing.npz does not exist"),
    ]
    for source, path, message in cases:
        with pytest.raises(ConversionError, match=message):
            convert_checkpoint(source, path, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_broken_weight_files_are_one_line_that_names_the_file(tmp_path):
    """Truncated, garbage, text and pickled-object weight files: an error that names the file and says what it is,
    never torch's advice to load with weights_only=False."""
    safetensors = tmp_path / "good.safetensors"
    save_file(timm_model().state_dict(), safetensors)
    (tmp_path / "truncated.safetensors").write_bytes(safetensors.read_bytes()[: safetensors.stat().st_size // 2])
    (tmp_path / "garbage.safetensors").write_bytes(bytes(range(256)) * 4)
    torch.save(timm_model().state_dict(), tmp_path / "good.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:1000])
    (tmp_path / "notes.pth").write_text("not a checkpoint\nbut notes ü\n")
    (tmp_path / "garbage.pth").write_bytes(bytes(range(255, -1, -1)))
    torch.save({"model": timm_model().state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "with_args.pth")
    transformers_vit().save_pretrained(tmp_path / "folder")
    (tmp_path / "folder" / "model.safetensors").write_bytes(b"\x08" + bytes(7) + b"{}")
    cases = [
        ("truncated.safetensors", "truncated.safetensors is not a readable safetensors file"),
        ("garbage.safetensors", "garbage.safetensors is not a readable safetensors file"),
        ("truncated.pth", r"truncated.pth is a damaged or truncated PyTorch checkpoint \(PytorchStreamReader failed"),
        ("notes.pth", "notes.pth is not a PyTorch checkpoint: it is a text file, not the zip archive that torch.save"),
        ("garbage.pth", "garbage.pth is not a PyTorch checkpoint: it is binary data, not the zip archive"),
        ("with_args.pth", "with_args.pth holds argparse.Namespace objects besides tensors, and hf_vit loads .pth"),
        ("folder", r"folder/model.safetensors is not a readable safetensors file"),
    ]
    for name, message in cases:
        source = "transformers" if name == "folder" else "timm"
        with pytest.raises(SystemExit) as exit_info:
            run_cli("--source", source, "--checkpoint", tmp_path / name, "--output", tmp_path / "out", "--num-heads", 4)
        error = str(exit_info.value.code)
        assert error.startswith(f"error: {tmp_path}/") and "\n" not in error, error
        assert re.search(message, error) and "weights_only` set to `False" not in error, error
        assert not (tmp_path / "out").exists()


def test_jax_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    params = nv.make_params()
    missing = {k: v for k, v in params.items() if k != "Transformer/encoder_norm/scale"}
    unexpected = {**params, "extra/kernel": np.zeros((2, 2), np.float32)}
    misshapen = {**params, "Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel": np.zeros((32, 48), np.float32)}
    no_vit = {"conv1/kernel": np.zeros((3, 3, 3, 8), np.float32)}
    cases = [
        (missing, "is missing the key 'Transformer/encoder_norm/scale'"),
        (unexpected, "has unexpected keys that hf_vit's architecture has no place for: extra/kernel"),
        (misshapen, r"fit no single architecture: vit\.layers\.1\.mlp\.fc1\.weight \(48, 32\) \(model: \(64, 32\)\)"),
        (no_vit, "has no Transformer/encoderblock_N keys, so it is not a ViT checkpoint"),
    ]
    for index, (checkpoint, message) in enumerate(cases):
        path = save_npz(tmp_path / f"bad{index}.npz", checkpoint)
        with pytest.raises(ConversionError, match=message):
            convert_checkpoint("jax", path, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_timm_and_transformers_unexpected_weights_are_named(tmp_path):
    layer_scale = timm_model(init_values=0.1)  # LayerScale: ls1.gamma / ls2.gamma, which hf_vit does not have
    save_file(layer_scale.state_dict(), tmp_path / "ls.safetensors")
    with pytest.raises(
        ConversionError, match=r"no place for: blocks\.0\.ls1\.gamma, blocks\.0\.ls2\.gamma, blocks\.1\.ls1\.gamma"
    ):
        convert_checkpoint("timm", tmp_path / "ls.safetensors", tmp_path / "out", num_heads=4)
    transformers_vit().save_pretrained(tmp_path / "deit")
    config = json.loads((tmp_path / "deit" / "config.json").read_text())
    (tmp_path / "deit" / "config.json").write_text(json.dumps({**config, "model_type": "deit"}))
    with pytest.raises(ConversionError, match="is a 'deit' model; only transformers ViT"):
        convert_checkpoint("transformers", tmp_path / "deit", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_left_untouched(tmp_path):
    checkpoint = save_npz(tmp_path / "ckpt.npz", nv.make_params())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists and is not an empty folder"):
        convert_checkpoint("jax", checkpoint, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    convert_checkpoint("jax", checkpoint, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    from hf_vit.tools.convert import common

    def broken_save(card, path):
        raise OSError("disk full")

    monkeypatch.setattr(common.ModelCard, "save", broken_save)  # the card is written after weights and processor
    checkpoint = save_npz(tmp_path / "ckpt.npz", nv.make_params())
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint("jax", checkpoint, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_bad_image_size_is_named(tmp_path):
    checkpoint = save_npz(tmp_path / "ckpt.npz", nv.make_params())
    with pytest.raises(ConversionError, match=r"Cannot resize to 36: image_size \(36x36\) must be divisible"):
        convert_checkpoint("jax", checkpoint, tmp_path / "out", image_size=36)
    assert not (tmp_path / "out").exists()


def test_cli_error_is_a_message_not_a_traceback(tmp_path):
    """The issue's probe: a text file passed as a .pth is one `error:` line that says so."""
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_checkpoint.py"), "--source", "timm"]
        + ["--checkpoint", str(tmp_path / "notes.pth"), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: {tmp_path / 'notes.pth'} is not a PyTorch checkpoint: it is a text file, not the zip archive that "
        "torch.save writes (nor the pickle it wrote before PyTorch 1.6)."
    )
    assert not (tmp_path / "out").exists()


def test_cli_pushes_the_converted_folder_and_fails_in_one_line(hub, tmp_path, capsys):
    from huggingface_hub import HfApi, ModelCard

    snapshot = tmp_path / "hf-cache" / "models--org--vit-tiny-jax" / "snapshots" / "0123abc"  # as hf_hub_download
    snapshot.mkdir(parents=True)
    checkpoint = save_npz(snapshot / "ViT-Tiny.npz", nv.make_params(representation=24))
    args = ["--source", "jax", "--checkpoint", checkpoint, "--image-size", "48", "--num-labels", "3"]
    assert run_cli(*args, "--output", tmp_path / "out", "--push-to-hub", "org/vit-tiny-48") == 0
    out = tmp_path / "out"
    assert capsys.readouterr().out == f"converted {checkpoint} into {out} and pushed it to org/vit-tiny-48\n"
    api = HfApi()
    files = set(api.list_repo_files("org/vit-tiny-48"))
    assert {"README.md", "config.json", "model.safetensors", "modeling.py", "preprocessor_config.json"} <= files
    pushed = Path(api.hf_hub_download("org/vit-tiny-48", "README.md", cache_dir=tmp_path / "download"))
    assert pushed.read_text() == (tmp_path / "out" / "README.md").read_text()
    card = ModelCard.load(pushed)
    assert card.data.base_model == "org/vit-tiny-jax", "read off the Hub cache path"
    assert card.data.license == "apache-2.0" and card.data.datasets is None and card.data.eval_results is None
    assert "from the official JAX (.npz) checkpoint `ViT-Tiny.npz`." in card.text
    assert "- Position embeddings resized from 32×32 px (4×4 tokens) to 48×48 px (6×6 tokens) with the official" in (
        card.text
    )
    assert "- New zero-initialised head with 3 classes; the representation (pre-logits) layer dropped." in card.text
    assert 'from_pretrained("org/vit-tiny-48", trust_remote_code=True)' in card.text

    other = ["--base-model", "google/vit-base-patch16-224", "--license", "mit", "--push-to-hub", "forbidden/vit"]
    with pytest.raises(SystemExit) as failed:
        run_cli(*args, "--output", tmp_path / "kept", *other)
    assert failed.value.code == (
        "error: Could not push to forbidden/vit: the Hub answered 403: You don't have the rights to create a model "
        f'under the namespace "forbidden" (the converted model is saved in {tmp_path / "kept"})'
    )
    card = ModelCard.load(tmp_path / "kept" / "README.md")
    assert card.data.base_model == "google/vit-base-patch16-224" and card.data.license == "mit"
    torch.testing.assert_close(
        load_file(tmp_path / "kept" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    )
    with pytest.raises(ConversionError, match="base_model must be a Hub repo id such as .*, got '/models/vit'"):
        convert_checkpoint("jax", checkpoint, tmp_path / "bad", base_model="/models/vit")
    assert not hub.unrouted, f"the client used endpoints the test Hub lacks: {hub.unrouted}"


@pytest.mark.slow
def test_full_size_vit_b16_npz_with_preset(tmp_path):
    params = nv.make_params(hidden=768, layers=12, heads=12, mlp=3072, patch=16, grid=14, num_classes=1000)
    checkpoint = save_npz(tmp_path / "ViT-B_16.npz", opt_target(params))
    convert_checkpoint("jax", checkpoint, tmp_path / "out", preset="ViT-B/16")
    model = load_converted(tmp_path / "out")
    assert sum(p.numel() for p in model.parameters()) == 86_567_656  # the paper's count for ViT-B/16
    x = images(224, count=1)
    np.testing.assert_allclose(torch_logits(model, x), nv.forward(params, x), atol=TOLERANCE, rtol=0)
