"""Export: torch.export programs and ONNX graphs give the model's outputs (at any size when asked for, and only at
the exported size otherwise), the preprocessing facts reproduce the image processor, and ONNX Runtime evaluates a
fine-tuned model to the PyTorch accuracy."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import LABELS, TINY, load_script, randomize_head, run_script
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

import hf_vit
from hf_vit.tools.export import DEFAULT_OPSET, FORMATS, TARGETS, ExportedModel, ExportGraph, export_model

# Narrow (width 32, 2 blocks) so that exporting and running at 224 and 384 px stays cheap.
NARROW = {**TINY, "image_size": 224, "patch_size": 16}
# Per case: the model, the target, and the sizes it is checked at besides the exported one (one not square).
CASES = {
    "vit": (hf_vit.VisionTransformerConfig(**NARROW), "classifier", [(384, 384), (160, 288)]),
    "gap": (
        hf_vit.VisionTransformerConfig(**TINY, classifier="gap", pos_embed_interpolation="bicubic"),
        "encoder",
        [(48, 48), (24, 40)],
    ),
    "hybrid": (
        hf_vit.HybridVisionTransformerConfig(**{**TINY, "patch_size": 1, "resnet_layers": (1,)}),
        "classifier",
        [(48, 48), (20, 36)],
    ),
}


def make_model(config) -> torch.nn.Module:
    """A classifier with a random head and random position embeddings, so that resizing them shows."""
    torch.manual_seed(0)
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {name: i for i, name in enumerate(LABELS)}
    model = randomize_head(AutoModelForImageClassification.from_config(config))
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.normal_()
    return model.eval()


def export(model, folder, target: str = "classifier", dynamic_size: bool = True) -> dict:
    processor = hf_vit.create_image_processor(model.config)
    return export_model(model, processor, folder, target=target, dynamic_size=dynamic_size)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    config, target, sizes = CASES[request.param]
    model = make_model(config)
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    export(model, folder, target)
    return model, folder, target, sizes


def test_exported_graphs_give_the_model_outputs_at_any_size(exported):
    model, folder, target, sizes = exported
    graph = ExportGraph(model if target == "classifier" else model.vit, target, dynamic_size=True)
    runtimes = {name: ExportedModel(folder / f"model.{name}") for name in FORMATS}
    image_size = tuple(json.loads((folder / "export.json").read_text())["input"]["image_size"])
    generator = torch.Generator().manual_seed(1)
    for batch, size in [(3, image_size), (1, sizes[0]), (2, sizes[1])]:
        pixels = torch.randn(batch, 3, *size, generator=generator)
        with torch.no_grad():
            expected = dict(zip(graph.output_names, graph(pixels), strict=True))
        for name, runtime in runtimes.items():
            outputs = runtime(pixels)
            assert list(outputs) == list(expected), name
            for key, value in expected.items():
                torch.testing.assert_close(outputs[key], value, rtol=0, atol=1e-4, msg=f"{name} {key} at {size}")
        stride = "x".join(map(str, runtime.size_multiple))
        with pytest.raises(ValueError, match=rf"must be divisible by the token stride \({stride}\)"):
            runtime(torch.randn(1, 3, image_size[0] + 1, image_size[1]))


def test_a_static_export_serves_its_size_only(tmp_path):
    model = make_model(hf_vit.VisionTransformerConfig(**NARROW))
    export(model, tmp_path, dynamic_size=False)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model(pixels).logits
    for name in FORMATS:
        runtime = ExportedModel(tmp_path / f"model.{name}")
        torch.testing.assert_close(runtime(pixels).logits, expected, rtol=0, atol=1e-4)
        with pytest.raises(
            ValueError, match=r"Input image size \(384x384\) doesn't match the exported size \(224x224\)"
        ):
            runtime(torch.randn(1, 3, 384, 384))
    # The program as torch.export.load gives it refuses too, naming the size in its guard.
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    with pytest.raises((AssertionError, RuntimeError), match=r"pixel_values.size\(\)\[2\] == 224"):
        program(torch.randn(1, 3, 384, 384))


@pytest.fixture(scope="module")
def exported_finetuned(finetuned, tmp_path_factory):
    """The fine-tuned digits classifier exported to ONNX by the script, in its own process."""
    out = tmp_path_factory.mktemp("export-finetuned") / "onnx"
    result = run_script("export", "--model", str(finetuned), "--output", str(out), "--format", "onnx", "--opset", "17")
    return out, result.stdout


def test_export_script_writes_the_graph_and_the_preprocessing_facts(exported_finetuned, finetuned, digits_folder):
    out, stdout = exported_finetuned
    assert sorted(path.name for path in out.iterdir()) == ["export.json", "model.onnx", "preprocessor_config.json"]
    assert f"exported {finetuned} (classifier, 48x48 only) to {out}: model.onnx" in stdout
    assert "onnx: exported in" in stdout and "largest difference from PyTorch: 48x48: " in stdout
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["input"] == {
        "name": "pixel_values",
        "shape": ["batch", 3, 48, 48],
        "image_size": [48, 48],
        "dynamic_size": False,
        "size_multiple_of": [8, 8],
    }
    assert manifest["outputs"] == {"logits": ["batch", 10]} and manifest["opset"] == 17
    assert [opset.version for opset in onnx.load(out / "model.onnx").opset_import if opset.domain == ""] == [17]
    assert manifest["labels"] == [f"digit{i}" for i in range(10)]
    # The facts alone (PIL, NumPy) prepare an image as the saved processor does.
    facts = manifest["preprocessing"]
    assert facts["resample"] == "bicubic" and facts["center_crop"] is None
    image = Image.open(next((digits_folder / "digit3").iterdir())).convert("RGB")
    size = (facts["resize"]["width"], facts["resize"]["height"])
    array = np.asarray(image.resize(size, Image.Resampling[facts["resample"].upper()]), dtype=np.float32)
    pixels = ((array * facts["rescale_factor"] - facts["mean"]) / facts["std"]).transpose(2, 0, 1)
    processor = AutoImageProcessor.from_pretrained(out, backend="pil")
    np.testing.assert_allclose(pixels, processor(image, return_tensors="np")["pixel_values"][0], rtol=0, atol=1e-6)


def test_onnx_evaluation_equals_the_pytorch_evaluation(exported_finetuned, finetuned, digits_folder, tmp_path):
    out, _ = exported_finetuned
    evaluate = load_script("evaluate_model").main
    data = ["--dataset", str(digits_folder), "--eval-fraction", "0.25", "--batch-size", "16"]
    assert evaluate(["--model", str(finetuned), *data, "--output", str(tmp_path / "torch.json")]) == 0
    assert evaluate(["--onnx", str(out / "model.onnx"), *data, "--output", str(tmp_path / "onnx.json")]) == 0
    with_torch, with_onnx = (json.loads((tmp_path / name).read_text()) for name in ("torch.json", "onnx.json"))
    assert with_onnx["model"] == str(out / "model.onnx") and with_onnx["eval_samples"] == 30
    assert {key: value for key, value in with_onnx.items() if key != "model"} == {
        key: value for key, value in with_torch.items() if key != "model"
    }


def test_export_errors_are_one_clear_line(tmp_path, capsys):
    main = load_script("export").main
    missing, taken = tmp_path / "missing", tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep")
    assert main(["--model", str(missing), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: --model {str(missing)!r}: no such folder.\n"
    assert main(["--model", "ViT-Ti/16", "--output", str(taken)]) == 1
    assert (
        capsys.readouterr().err
        == f"error: --output {str(taken)!r} exists and is not an empty folder; name a new one.\n"
    )
    with pytest.raises(SystemExit):
        main(["--model", "ViT-Ti/16", "--output", str(tmp_path / "out"), "--target", "segmenter"])
    assert "argument --target: invalid choice: 'segmenter'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # Below opset 17 the exporter's converter fails and keeps opset 18 (it logs why): refused, nothing written.
    tiny = ",".join(f"{key}={TINY[key]}" for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"))
    argv = ["--model", "ViT-Ti/16", "--config-overrides", tiny, "--output", str(tmp_path / "out"), "--opset", "13"]
    assert main([*argv, "--format", "onnx", "pt2"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: The ONNX exporter could not convert the graph to opset 13 (it gave opset 18); choose another --opset."
    )
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("exported", ["gap"], indirect=True)
def test_evaluation_refuses_an_exported_encoder(exported, digits_folder, capsys):
    _, folder, target, _ = exported
    evaluate = load_script("evaluate_model").main
    assert evaluate(["--onnx", str(folder / "model.onnx"), "--dataset", str(digits_folder)]) == 1
    assert capsys.readouterr().err.endswith(
        "is an exported encoder (outputs last_hidden_state, pooler_output); evaluation needs one exported with "
        "--target classifier.\n"
    )
    assert evaluate(["--onnx", str(folder / "model.pt2"), "--dataset", str(digits_folder)]) == 1
    assert "--onnx takes an .onnx file written by scripts/export.py" in capsys.readouterr().err
    assert evaluate(["--onnx", str(folder / "model.onnx"), "--int8", "--dataset", str(digits_folder)]) == 1
    assert "--int8 quantises a PyTorch model's weights; --onnx runs an exported graph as it is." in (
        capsys.readouterr().err
    )


def test_the_script_offers_what_the_module_exports():
    script = load_script("export")
    assert (script.TARGETS, script.FORMATS) == (TARGETS, FORMATS)
    assert DEFAULT_OPSET == 18  # the script's --opset default
