"""LoRA fine-tuning through PEFT: the adapter trains few weights, reloads exactly, merges, loads without hf_vit."""

import json
import shutil

import pytest
import torch
from conftest import FINETUNE_DATA, load_script, pretrained, run_script, run_without_hf_vit
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from hf_vit.training.arguments import FinetuningArguments
from hf_vit.training.finetuning import prepare_for_finetuning
from hf_vit.training.lora import add_lora, check_targets

LORA = ["--lora-rank", "4", "--lora-alpha", "8"]


@pytest.fixture(scope="module")
def adapted(digits_folder, pretrained_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    argv = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--image-size", "48", *FINETUNE_DATA]
    argv += ["--gradient-accumulation-steps", "1", "--max-steps", "4", "--save-every", "2", *LORA, "--lora-merge"]
    assert load_script("finetune").main([*argv, "--output-dir", str(out)]) == 0
    return out, argv


def held_out_loss(model, folder, digits_folder) -> float:
    """The mean cross-entropy over the split the fine-tuning run held out, as its evaluation computed it."""
    from hf_vit.training.arguments import EvaluationArguments
    from hf_vit.training.augmentation import ProcessorTransform
    from hf_vit.training.data import load_image_data
    from hf_vit.training.evaluation import load_classifier, make_loader

    processor = load_classifier(str(folder / "merged"))[1]
    data = load_image_data(EvaluationArguments(model=str(folder), dataset=str(digits_folder), eval_fraction=0.25))
    losses = []
    with torch.no_grad():
        for batch in make_loader(data.eval, ProcessorTransform(processor), data, 16):
            logits = model(pixel_values=batch["pixel_values"]).logits
            losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none"))
    return torch.cat(losses).mean().item()


def test_lora_run_saves_an_adapter_with_its_base_and_the_merged_model(adapted, pretrained_folder, digits_folder):
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    out, _ = adapted
    results = json.loads((out / "all_results.json").read_text())
    # Rank 4 on qkv, proj, fc1, fc2 of 2 blocks of width 32 (MLP 64), and the 10-class head in full.
    per_block = 4 * ((32 + 96) + (32 + 32) + (32 + 64) + (64 + 32))
    assert results["trainable_parameters"] == 2 * per_block + (32 * 10 + 10)
    assert results["base_parameters"] == sum(
        p.numel() for p in prepare_for_finetuning(pretrained(), 10, None, 48).parameters()
    )
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["modules_to_save"]) == (
        4,
        8,
        ["classifier"],
    )
    assert sorted(adapter_config["target_modules"]) == ["fc1", "fc2", "proj", "qkv"]
    assert adapter_config["base_model_name_or_path"] == str((out / "base").resolve())
    assert not (out / "config.json").exists() and (out / "base" / "config.json").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoint-4" / "adapter_model.safetensors").is_file()

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and {"lora", "peft"} <= set(card.data.tags)
    assert (
        "A LoRA adapter (PEFT's format) for the model described below, which is saved with it in `base/`." in card.text
    )
    assert f"({results['trainable_parameters']:,} of {results['base_parameters']:,} parameters trained)" in card.text
    assert "PeftModel.from_pretrained(base," in card.text
    merged_card = ModelCard.load(out / "merged" / "README.md")
    assert (
        merged_card.data.library_name == "transformers" and "LoRA (merged into the weights): rank 4" in merged_card.text
    )

    # The adapter onto a freshly loaded base gives the run's held-out loss: it reloads exactly.
    base = AutoModelForImageClassification.from_pretrained(out / "base", trust_remote_code=True)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    assert held_out_loss(reloaded, out, digits_folder) == pytest.approx(results["eval_loss"], rel=1e-6)
    pixels = torch.randn(3, 3, 48, 48)
    merged = AutoModelForImageClassification.from_pretrained(out / "merged", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits, rtol=0, atol=1e-5
        )
    assert not any("lora" in key for key in load_file(out / "merged" / "model.safetensors"))


def test_adapter_loads_and_classifies_without_hf_vit(adapted, digits_folder, tmp_path):
    out, _ = adapted
    image = next((digits_folder / "digit3").iterdir())
    result = run_without_hf_vit(
        f"""
        import json, torch
        from peft import PeftModel
        from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

        out = {str(out)!r}
        base = AutoModelForImageClassification.from_pretrained(out + "/base", trust_remote_code=True)
        adapted = PeftModel.from_pretrained(base, out).eval()
        merged = AutoModelForImageClassification.from_pretrained(out + "/merged", trust_remote_code=True).eval()
        pixels = torch.randn(2, 3, 48, 48)
        with torch.no_grad():
            difference = (adapted(pixel_values=pixels).logits - merged(pixel_values=pixels).logits).abs().max().item()
        processor = AutoImageProcessor.from_pretrained(out)
        from_merged = pipeline("image-classification", model=out + "/merged", trust_remote_code=True)({str(image)!r})
        from_adapter = pipeline("image-classification", model=out, trust_remote_code=True)({str(image)!r})
        from_peft = pipeline("image-classification", model=adapted, image_processor=processor)({str(image)!r})
        print(json.dumps({{"difference": difference, "results": [from_merged, from_adapter, from_peft]}}))
        """,
        cwd=tmp_path,
    )
    assert result["difference"] <= 1e-5
    merged, *others = result["results"]
    for other in others:
        assert [r["label"] for r in other] == [r["label"] for r in merged]
        assert [r["score"] for r in other] == pytest.approx([r["score"] for r in merged], abs=1e-5)


def test_resuming_from_the_last_checkpoint_gives_the_same_adapter(adapted, tmp_path):
    out, argv = adapted
    copy = tmp_path / "copy"
    shutil.copytree(out / "checkpoint-4", copy / "checkpoint-4")
    assert load_script("finetune").main([*argv, "--output-dir", str(copy), "--resume-from-checkpoint", "latest"]) == 0
    saved, resumed = load_file(out / "adapter_model.safetensors"), load_file(copy / "adapter_model.safetensors")
    assert saved.keys() == resumed.keys() and all(torch.equal(saved[k], resumed[k]) for k in saved)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lora-rank", "0"], "--lora-rank must be a positive integer (the rank of each low-rank update); got 0."),
        (["--lora-alpha", "16"], "--lora-alpha configure LoRA, which --lora-rank turns on; add --lora-rank (e.g. 8)."),
        (["--lora-rank", "4", "--lora-dropout", "1"], "--lora-dropout must be in [0, 1); got 1.0."),
        (["--model", "ViT-Ti/16", "--lora-rank", "4"], "is a preset (random weights): give a pre-trained folder"),
        (["--lora-rank", "4", "--recipe", "small-data"], "--ema-decay averages every weight and is not supported"),
        (
            ["--lora-rank", "4", "--push-to-hub", "org/x"],
            "with --lora-rank add --lora-merge and push OUTPUT_DIR/merged",
        ),
    ],
)
def test_lora_flags_are_checked_before_anything_loads(argv, message, pretrained_folder, tmp_path, capsys):
    model = [] if "--model" in argv else ["--model", str(pretrained_folder)]
    assert load_script("finetune").main([*model, *argv, "--output-dir", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_target_modules_must_name_encoder_layers():
    model = pretrained()
    with pytest.raises(
        ValueError, match=r"attn, mlp matches no Linear layer of the model; choose among fc1, fc2, proj, qkv"
    ):
        check_targets(model, ["qkv", "attn", "mlp"])
    with pytest.raises(ValueError, match="'classifier' is the new head, which LoRA fine-tuning trains in full"):
        check_targets(model, ["qkv", "classifier"])
    adapted = add_lora(prepare_for_finetuning(model, 3), rank=2, alpha=None, dropout=0.0, targets=["qkv"])
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".qkv.lora_" in name or ".classifier.modules_to_save." in name for name in trainable)
    assert FinetuningArguments(model="x", lora_rank=2).lora_target_modules == ["qkv", "proj", "fc1", "fc2"]


@pytest.mark.slow
def test_lora_killed_mid_run_resumes_to_the_same_adapter(digits_folder, pretrained_folder, tmp_path):
    """As tests/test_reliability.py does for full fine-tuning: SIGKILL at update 3, `latest`, the same adapter."""
    import signal

    from conftest import ROOT

    args = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--eval-fraction", "0.25"]
    args += ["--per-device-batch-size", "8", "--total-batch-size", "8", "--max-steps", "6", "--save-every", "2", *LORA]
    run_script("finetune", *args, "--output-dir", str(tmp_path / "straight"))
    out = tmp_path / "run"
    faults = str(ROOT / "tests" / "probes" / "faults.py")
    killed = run_script(
        faults, "trainer-step:3", str(ROOT / "scripts" / "finetune.py"), *args, "--output-dir", str(out), check=False
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_script("finetune", *args, "--output-dir", str(out), "--resume-from-checkpoint", "latest")
    straight, resumed = (load_file(folder / "adapter_model.safetensors") for folder in (tmp_path / "straight", out))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
