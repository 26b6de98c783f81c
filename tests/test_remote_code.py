"""Saved folders carry their code: they load, classify and run in pipelines where hf_vit is not installed."""

import json

import numpy as np
import torch
from conftest import TINY, randomize_head, run_without_hf_vit
from PIL import Image

import hf_vit


def save_tiny(folder, **overrides):
    torch.manual_seed(0)
    config = hf_vit.VisionTransformerConfig(**{**TINY, **overrides})
    config.id2label = {i: name for i, name in enumerate(["cat", "dog", "fish", "bird", "frog"])}
    config.label2id = {name: i for i, name in config.id2label.items()}
    model = randomize_head(hf_vit.VisionTransformerForImageClassification(config)).eval()
    model.save_pretrained(folder)
    hf_vit.create_image_processor(config).save_pretrained(folder)
    return model


def test_saved_folder_holds_code_safetensors_and_auto_map(tmp_path):
    save_tiny(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"configuration.py", "modeling.py", "pos_embed.py", "model.safetensors", "config.json"} <= names
    assert "preprocessor_config.json" in names and not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration.VisionTransformerConfig"
    assert auto_map["AutoModelForImageClassification"] == "modeling.VisionTransformerForImageClassification"


def test_remote_code_round_trip_without_hf_vit(tmp_path, photo):
    folder = tmp_path / "model"
    model = save_tiny(folder, classifier="gap", representation_size=16)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "x.npy", x.numpy())
    photo.save(tmp_path / "photo.jpg")
    result = run_without_hf_vit(
        f"""
        import json, numpy as np, torch
        from transformers import AutoModelForImageClassification, pipeline
        try:
            import hf_vit
            raise SystemExit("hf_vit must not be importable here")
        except ImportError:
            pass
        try:
            AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=False)
            refused = False
        except ValueError as error:
            refused = "trust_remote_code" in str(error)
        model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}))).logits
        np.save({str(tmp_path / "remote.npy")!r}, logits.numpy())
        classify = pipeline("image-classification", model={str(folder)!r}, trust_remote_code=True)
        predictions = classify({str(tmp_path / "photo.jpg")!r}, top_k=5)
        print(json.dumps({{"refused": refused, "module": type(model).__module__, "predictions": predictions}}))
        """,
        cwd=tmp_path,
    )
    assert result["refused"], "loading custom code must require trust_remote_code=True"
    assert "hf_vit" not in result["module"]
    with torch.no_grad():
        expected = model(x).logits.numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)

    processor = hf_vit.create_image_processor(model.config)
    with Image.open(tmp_path / "photo.jpg") as saved, torch.no_grad():
        probs = model(**processor(saved, return_tensors="pt")).logits.softmax(-1)[0]
    labels = [p["label"] for p in result["predictions"]]
    assert labels == [model.config.id2label[int(i)] for i in probs.argsort(descending=True)]
    np.testing.assert_allclose(
        [p["score"] for p in result["predictions"]], probs.sort(descending=True).values, atol=1e-5
    )


def test_image_processor_does_the_papers_preprocessing(tmp_path, photo):
    from transformers import AutoImageProcessor

    config = hf_vit.VisionTransformerConfig(**{**TINY, "image_size": (32, 48)})
    hf_vit.create_image_processor(config).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    pixels = processor(photo, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 48)
    expected = np.asarray(photo.resize((48, 32), resample=3), dtype=np.float32) / 127.5 - 1  # PIL bicubic
    np.testing.assert_allclose(pixels[0].permute(1, 2, 0).numpy(), expected, atol=0.1)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
