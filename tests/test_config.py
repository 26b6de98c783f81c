"""Config validation, presets and the official parameter counts."""

from pathlib import Path

import pytest
import torch

import hf_vit
from hf_vit.models.presets import resolve_preset

# Official counts at 224 px, 1000 classes, cls token, no representation layer (shared/reference/vit-facts.md).
OFFICIAL_PARAMS = {
    "ViT-Ti/16": 5_717_416,
    "ViT-S/16": 22_050_664,
    "ViT-S/32": 22_878_952,
    "ViT-B/8": 86_576_872,
    "ViT-B/16": 86_567_656,
    "ViT-B/32": 88_224_232,
    "ViT-L/16": 304_326_632,
    "ViT-L/32": 306_535_400,
    "ViT-H/14": 632_045_800,
}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_preset_parameter_count_is_official(name):
    with torch.device("meta"):
        model = hf_vit.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


def test_every_plain_preset_is_counted():
    assert set(OFFICIAL_PARAMS) <= set(hf_vit.list_presets())


def test_preset_fields_and_overrides():
    config = hf_vit.create_config("vit-l-16", num_labels=10, image_size=384)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 24, 16)
    assert config.intermediate_size == 4096 and config.patch_size == 16 and config.hidden_dropout_prob == 0.1
    assert config.num_labels == 10 and config.grid_size == (24, 24)
    assert config.layer_norm_eps == 1e-6
    assert resolve_preset("ViT_B_16") == "ViT-B/16"


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown preset 'ViT-X/3'.*ViT-B/16"):
        hf_vit.create_config("ViT-X/3")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"hidden_size": 100, "num_attention_heads": 3},
            r"hidden_size \(100\) must be divisible by num_attention_heads",
        ),
        ({"image_size": 30, "patch_size": 16}, r"image_size \(30x30\) must be divisible .*patch_size"),
        ({"classifier": "mean"}, r"classifier must be one of \('token', 'gap'\), got 'mean'"),
        ({"pos_embed_interpolation": "nearest"}, "pos_embed_interpolation must be one of"),
        ({"hidden_act": "swishy"}, "hidden_act 'swishy'"),
        ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be in \[0, 1\)"),
    ],
)
def test_invalid_configs_say_what_to_change(fields, message):
    with pytest.raises(ValueError, match=message):
        hf_vit.VisionTransformerConfig(**fields)


def test_non_square_sizes_round_trip(tmp_path):
    config = hf_vit.VisionTransformerConfig(image_size=(32, 48), patch_size=8, num_labels=3)
    config.save_pretrained(tmp_path)
    loaded = hf_vit.VisionTransformerConfig.from_pretrained(tmp_path)
    assert loaded.grid_size == (4, 6) and loaded.num_labels == 3
    assert loaded.to_dict()["image_size"] == [32, 48]


def test_import_stays_light():
    import subprocess
    import sys

    heavy = "('datasets', 'evaluate', 'matplotlib', 'sklearn', 'timm')"
    code = f"import sys, hf_vit; print(sorted(m for m in {heavy} if m in sys.modules))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
