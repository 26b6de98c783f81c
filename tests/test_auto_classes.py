"""Every folder that any hf_vit class saves loads with every Auto class, here and where hf_vit cannot be imported."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY, randomize_head, run_without_hf_vit
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageClassification

import hf_vit
from hf_vit.tools.hub import push_model

HYBRID = {**TINY, "image_size": 64, "patch_size": 1, "resnet_layers": (1, 1)}
AUTO_MAPS = {
    "vit": {
        "AutoConfig": "configuration.VisionTransformerConfig",
        "AutoModel": "modeling.VisionTransformerModel",
        "AutoModelForImageClassification": "modeling.VisionTransformerForImageClassification",
        "AutoModelForMaskedImageModeling": "modeling.VisionTransformerForMaskedPatchPrediction",
        "AutoBackbone": "modeling.VisionTransformerBackbone",
    },
    "hybrid": {
        "AutoConfig": "configuration.HybridVisionTransformerConfig",
        "AutoModel": "modeling_hybrid.HybridVisionTransformerModel",
        "AutoModelForImageClassification": "modeling_hybrid.HybridVisionTransformerForImageClassification",
        "AutoModelForMaskedImageModeling": "modeling_hybrid.HybridVisionTransformerForMaskedPatchPrediction",
        "AutoBackbone": "modeling_hybrid.HybridVisionTransformerBackbone",
    },
}


def tiny_config(family: str) -> hf_vit.VisionTransformerConfig:
    if family == "hybrid":
        return hf_vit.HybridVisionTransformerConfig(**HYBRID)
    return hf_vit.VisionTransformerConfig(**TINY)


@pytest.mark.parametrize("family", ["vit", "hybrid"])
@pytest.mark.parametrize("auto_name", list(AUTO_MAPS["vit"])[1:])
def test_every_saved_folder_lists_every_auto_class_and_carries_their_code(family, auto_name, tmp_path):
    model_class = getattr(hf_vit, AUTO_MAPS[family][auto_name].split(".")[1])
    model_class(tiny_config(family)).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == AUTO_MAPS[family]
    assert all((tmp_path / f"{reference.split('.')[0]}.py").is_file() for reference in auto_map.values())


def test_a_classifier_folder_is_its_encoder_under_auto_model_and_an_encoder_folder_gets_a_new_head(tmp_path):
    torch.manual_seed(0)
    classifier = randomize_head(hf_vit.VisionTransformerForImageClassification(tiny_config("vit")))
    classifier.save_pretrained(tmp_path / "classifier")
    encoder = AutoModel.from_pretrained(tmp_path / "classifier")
    assert type(encoder) is hf_vit.VisionTransformerModel
    expected = classifier.vit.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in encoder.state_dict().items())
    encoder.save_pretrained(tmp_path / "encoder")
    again, info = AutoModelForImageClassification.from_pretrained(tmp_path / "encoder", output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not again.classifier.weight.any(), "the new head starts at zero, as the official code"


def save_family(folder, family: str) -> dict[str, torch.nn.Module]:
    """A classifier folder and an encoder folder of `family`, with named labels and the image processor."""
    torch.manual_seed(0)
    config = tiny_config(family)
    config.id2label = {i: name for i, name in enumerate(["cat", "dog", "fish", "bird", "frog"])}
    config.label2id = {name: i for i, name in config.id2label.items()}
    classifier = randomize_head(AutoModelForImageClassification.from_config(config)).eval()
    models = {f"{family}-classifier": classifier, f"{family}-encoder": classifier.vit}
    for name, model in models.items():
        model.save_pretrained(folder / name)
        hf_vit.create_image_processor(config).save_pretrained(folder / name)
    return models


def test_every_auto_class_loads_classifier_and_encoder_folders_without_hf_vit(hub, tmp_path, photo):
    models = save_family(tmp_path, "vit") | save_family(tmp_path, "hybrid")
    for name in models:
        # transformers 5.24's AutoBackbone.from_pretrained asks the Hub whether its argument is a repo, which refuses
        # every local folder (HFValidationError for an absolute path): AutoBackbone loads them from the Hub.
        push_model(tmp_path / name, f"org/{name}")
    photo.save(tmp_path / "photo.jpg")
    result = run_without_hf_vit(
        f"""
        import io, json, logging, torch
        from safetensors.torch import save_file
        from transformers import (AutoBackbone, AutoConfig, AutoModel, AutoModelForImageClassification,
                                  AutoModelForMaskedImageModeling, pipeline)
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        report = io.StringIO()
        logging.getLogger("transformers").addHandler(logging.StreamHandler(report))
        out = {{}}
        for name in {list(models)!r}:
            loaded = {{"AutoConfig": AutoConfig.from_pretrained(name, trust_remote_code=True)}}
            for auto in (AutoModel, AutoModelForImageClassification, AutoModelForMaskedImageModeling):
                loaded[auto.__name__], info = auto.from_pretrained(
                    name, trust_remote_code=True, output_loading_info=True
                )
                out[f"{{name}} {{auto.__name__}} missing"] = sorted(info["missing_keys"])
            loaded["AutoBackbone"] = AutoBackbone.from_pretrained(
                "org/" + name, trust_remote_code=True, out_features=["stage1", "stage2"]
            )
            for auto_name, model in loaded.items():
                out[f"{{name}} {{auto_name}}"] = [type(model).__name__, type(model).__module__]
                if auto_name != "AutoConfig":
                    prefix = "vit." if auto_name == "AutoModel" else ""
                    state = {{prefix + key: value.contiguous() for key, value in model.state_dict().items()}}
                    save_file(state, f"{{name}}-{{auto_name}}.safetensors")
            # The way around AutoBackbone for a local folder: its backbone class from its own code.
            backbone_class = get_class_from_dynamic_module(loaded["AutoConfig"].auto_map["AutoBackbone"], name)
            from_folder = backbone_class.from_pretrained(name, out_features=["stage1", "stage2"])
            x = torch.randn(1, 3, 64, 64)
            with torch.no_grad():
                maps = loaded["AutoBackbone"](x).feature_maps
                same = all(torch.equal(a, b) for a, b in zip(from_folder(x).feature_maps, maps, strict=True))
            out[f"{{name}} feature maps"] = [list(m.shape) for m in maps]
            out[f"{{name}} folder backbone"] = [same, type(from_folder).__module__]
            extract = pipeline("image-feature-extraction", model=name, trust_remote_code=True)
            out[f"{{name}} features"] = extract("photo.jpg")
        out["report"] = report.getvalue()
        print(json.dumps(out))
        """,
        cwd=tmp_path,
        env=hub.env(tmp_path / "client-home"),
        timeout=900,
    )
    for name, model in models.items():
        family, kind = name.split("-")
        classes = AUTO_MAPS[family]
        for auto_name, reference in classes.items():
            class_name, module = result[f"{name} {auto_name}"]
            assert class_name == reference.split(".")[1] and "hf_vit" not in module, (name, auto_name, module)
        original = {("vit." + k if kind == "encoder" else k): v for k, v in model.state_dict().items()}
        for auto_name in list(classes)[1:]:
            loaded = load_file(tmp_path / f"{name}-{auto_name}.safetensors")
            encoder_keys = {key for key in original if key.startswith("vit.")} - {"vit.embeddings.mask_token"}
            assert encoder_keys <= loaded.keys(), (name, auto_name)
            for key in loaded.keys() & original.keys():
                assert torch.equal(loaded[key], original[key]), (name, auto_name, key)
        head = ["classifier.bias", "classifier.weight"]
        masked_head = ["head.bias", "head.weight", "vit.embeddings.mask_token"]
        assert result[f"{name} AutoModelForImageClassification missing"] == ([] if kind == "classifier" else head)
        assert result[f"{name} AutoModelForMaskedImageModeling missing"] == masked_head
        assert result[f"{name} AutoModel missing"] == []
        assert result[f"{name} feature maps"] == [[1, 32, 8, 8]] * 2  # 64 px: patches of 8, or ResNet stride 8
        same, module = result[f"{name} folder backbone"]
        assert same and "hf_vit" not in module

        encoder = model.vit if kind == "classifier" else model
        with Image.open(tmp_path / "photo.jpg") as saved:  # the JPEG the pipeline read, not the photo in memory
            pixels = hf_vit.create_image_processor(encoder.config)(saved, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected = encoder(pixels).last_hidden_state
        np.testing.assert_allclose(np.array(result[f"{name} features"])[0], expected[0].numpy(), atol=1e-5)
    assert "classifier.weight" in result["report"] and "MISSING" in result["report"], "the new head is reported"
