"""Config validation, presets and the official parameter counts."""

import json
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from transformers import AutoConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module

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
    """Each ViT preset (all but the hybrids) has its official count checked above, and no count lacks its preset."""
    plain = {name for name in hf_vit.list_presets() if "resnet_layers" not in hf_vit.create_config(name).to_dict()}
    assert plain == set(OFFICIAL_PARAMS)


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
        ({"hidden_act": "swishy"}, "hidden_act must be a transformers activation.*got 'swishy'"),
        ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must be in \[0, 1\), got 1.5"),
    ],
)
def test_invalid_configs_say_what_to_change(fields, message):
    with pytest.raises(ValueError, match=message):
        hf_vit.VisionTransformerConfig(**fields)


POSITIVE = "must be a positive integer"
SIZE = r"must be a positive integer or a \[height, width\] pair of them"
# Each was a TypeError, ZeroDivisionError or unpacking error that named no field, or was accepted (a model with no
# encoder layers, a string in qkv_bias, "349" read as three ResNet stages).
BAD_FIELDS = [
    ("hidden_size", "768", POSITIVE),
    ("hidden_size", -32, POSITIVE),
    ("hidden_size", 32.0, POSITIVE),
    ("num_hidden_layers", -1, POSITIVE),
    ("num_hidden_layers", 0, POSITIVE),
    ("num_attention_heads", 0, POSITIVE),
    ("num_attention_heads", True, POSITIVE),
    ("intermediate_size", 0, POSITIVE),
    ("num_channels", 0, POSITIVE),
    ("patch_size", 0, SIZE),
    ("patch_size", [8, 8, 8], SIZE),
    ("image_size", "32", SIZE),
    ("image_size", [32, -32], SIZE),
    ("hidden_dropout_prob", "0.1", r"must be in \[0, 1\)"),
    ("attention_probs_dropout_prob", float("nan"), r"must be in \[0, 1\)"),
    ("drop_path_rate", -0.1, r"must be in \[0, 1\)"),
    ("layer_norm_eps", 0, "must be a number > 0"),
    ("initializer_range", "0.02", "must be a number >= 0"),
    ("qkv_bias", "no", "must be true or false"),
    ("representation_size", 0, "must be a positive integer or None"),
    ("hidden_act", ["gelu"], "must be a transformers activation"),
]
BAD_HYBRID_FIELDS = [
    ("resnet_layers", "349", "must hold positive unit counts per stage"),
    ("resnet_layers", 3, "must hold positive unit counts per stage"),
    ("resnet_layers", [3, 0], "must hold positive unit counts per stage"),
    ("resnet_width_factor", 0, POSITIVE),
    ("resnet_width_factor", "1", POSITIVE),
]


CONFIGS = {
    "vit": (hf_vit.VisionTransformerConfig, TINY),
    "hybrid": (hf_vit.HybridVisionTransformerConfig, {**TINY, "patch_size": 1, "resnet_layers": (1,)}),
}


@pytest.mark.parametrize(
    ("family", "name", "value", "rule"),
    [("vit", *case) for case in BAD_FIELDS] + [("hybrid", *case) for case in BAD_FIELDS + BAD_HYBRID_FIELDS],
)
def test_bad_field_values_raise_one_error_that_names_the_field(family, name, value, rule):
    """Every field's type and range is checked; the message names the field, the rule and the value."""
    config_class, fields = CONFIGS[family]
    with pytest.raises(ValueError, match=f"^{name} {rule}.*, got {re.escape(repr(value))}\\.$"):
        config_class(**{**fields, name: value})


@pytest.mark.parametrize("code", ["hf_vit", "saved_with_the_config"])
def test_a_config_json_with_bad_values_fails_to_load_with_the_field_named(tmp_path, code):
    """config.json goes through the same checks, in hf_vit's class and in the configuration.py saved next to it (what
    remote code runs), and so do keyword overrides, which transformers sets after `__init__`."""
    hf_vit.VisionTransformerConfig(**TINY).save_pretrained(tmp_path)
    if code == "hf_vit":
        load = partial(AutoConfig.from_pretrained, tmp_path)
    else:
        config_class = get_class_from_dynamic_module("configuration.VisionTransformerConfig", tmp_path)
        assert not config_class.__module__.startswith("hf_vit")
        load = partial(config_class.from_pretrained, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    bad_values = [("num_hidden_layers", -1, POSITIVE), ("hidden_size", "32", POSITIVE), ("patch_size", 0, SIZE)]
    for name, value, rule in bad_values:
        (tmp_path / "config.json").write_text(json.dumps({**saved, name: value}))
        with pytest.raises(ValueError, match=f"^{name} {rule}"):
            load()
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=f"^num_hidden_layers {POSITIVE}, got -1"):
        load(num_hidden_layers=-1)
    config, unused = load(num_hidden_layers=3, return_unused_kwargs=True)
    assert config.num_hidden_layers == 3 and unused == {}


def test_good_values_in_other_spellings_are_accepted():
    """Tuples and NumPy integers (from checkpoint shapes) are valid sizes; an int is a valid rate."""
    config = hf_vit.VisionTransformerConfig(
        **{**TINY, "image_size": (32, 48), "hidden_size": np.int64(32), "hidden_dropout_prob": 0, "layer_norm_eps": 1}
    )
    assert config.grid_size == (4, 6) and config.hidden_size == 32
    hybrid = hf_vit.HybridVisionTransformerConfig(**{**TINY, "patch_size": 1, "resnet_layers": ()})
    assert hybrid.resnet_layers == [] and hybrid.token_stride == (4, 4)


def test_non_square_sizes_round_trip(tmp_path):
    config = hf_vit.VisionTransformerConfig(image_size=(32, 48), patch_size=8, num_labels=3)
    config.save_pretrained(tmp_path)
    loaded = hf_vit.VisionTransformerConfig.from_pretrained(tmp_path)
    assert loaded.grid_size == (4, 6) and loaded.num_labels == 3
    assert loaded.to_dict()["image_size"] == [32, 48]


def test_import_stays_light():
    import subprocess
    import sys

    heavy = "('accelerate', 'datasets', 'evaluate', 'matplotlib', 'sklearn', 'timm', 'torch', 'transformers')"
    code = (
        f"import sys, hf_vit; print(sorted(m for m in {heavy} if m in sys.modules)); "
        "from transformers import AutoConfig; hf_vit.VisionTransformerConfig; "
        "print(type(AutoConfig.for_model('hf_vit_hybrid')).__name__)"  # using a model class registered them all
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "HybridVisionTransformerConfig"]
