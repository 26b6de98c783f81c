"""Fine-tuning: the model surgery, scripts/finetune.py on real digits, its card, the Trainer details."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DIGIT_NAMES, FINETUNE_DATA, TINY, load_script, pretrained, run_without_hf_vit
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file

import hf_vit
from hf_vit.tools.hub import push_model
from hf_vit.training.finetuning import prepare_for_finetuning


def test_prepare_for_finetuning_new_head_no_pre_logits_resized_positions():
    model = pretrained()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = {i: f"class{i}" for i in range(7)}
    new = prepare_for_finetuning(model, 7, names, image_size=48)

    assert new is not model and new.config is not model.config
    assert new.config.num_labels == 7 and new.config.id2label == names and new.config.label2id["class3"] == 3
    assert new.config.image_size == 48 and new.config.grid_size == (6, 6)
    assert new.config.representation_size is None and new.vit.pre_logits is None
    assert new.classifier.weight.shape == (7, TINY["hidden_size"])
    assert torch.count_nonzero(new.classifier.weight) == 0 and torch.count_nonzero(new.classifier.bias) == 0
    # Position embeddings: the official (corner-aligned bilinear) resize of the 4x4 grid to 6x6, cls slot kept.
    old = before["vit.embeddings.position_embeddings"]
    resized = new.vit.embeddings.position_embeddings.detach()
    assert resized.shape == (1, 1 + 36, TINY["hidden_size"])
    torch.testing.assert_close(resized, hf_vit.resize_pos_embed(old, (4, 4), (6, 6), 1, "official"), rtol=0, atol=0)
    torch.testing.assert_close(resized[0, 0], old[0, 0], rtol=0, atol=0)
    grid = old[0, 1:].reshape(4, 4, -1)  # aligned corners: the four corner embeddings are kept exactly
    torch.testing.assert_close(
        resized[0, 1:].reshape(6, 6, -1)[[0, 0, -1, -1], [0, -1, 0, -1]], grid[[0, 0, -1, -1], [0, -1, 0, -1]]
    )
    # Every other weight is carried over unchanged, and the pre-trained model is left as it was.
    carried = {k for k in before if not k.startswith(("classifier.", "vit.pre_logits.", "vit.embeddings.position"))}
    for key in carried:
        torch.testing.assert_close(new.state_dict()[key], before[key], rtol=0, atol=0, msg=key)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert model.config.image_size == 32 and model.config.representation_size == 16
    assert new(torch.randn(2, 3, 48, 48)).logits.abs().max() == 0  # zero head: zero logits


def test_prepare_for_finetuning_bicubic_and_bad_sizes():
    model = pretrained(representation_size=None)
    new = prepare_for_finetuning(model, 3, image_size=(40, 48), interpolation="bicubic")
    old = model.vit.embeddings.position_embeddings
    expected = hf_vit.resize_pos_embed(old, (4, 4), (5, 6), 1, "bicubic")
    torch.testing.assert_close(new.vit.embeddings.position_embeddings, expected, rtol=0, atol=0)
    assert new.config.pos_embed_interpolation == "bicubic" and new.config.id2label[2] == "LABEL_2"
    with pytest.raises(ValueError, match=r"image_size \(50x50\) must be divisible by the token stride \(8x8"):
        prepare_for_finetuning(model, 3, image_size=50)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        prepare_for_finetuning(model, 3, interpolation="nearest")
    with pytest.raises(ValueError, match="Fine-tuning needs an hf_vit image classifier; got VisionTransformerModel"):
        prepare_for_finetuning(model.vit, 3)


def test_finetune_32_to_48_px(finetuned, pretrained_folder, digits_folder):
    config = json.loads((finetuned / "config.json").read_text())
    assert config["image_size"] == 48 and config["representation_size"] is None
    assert config["id2label"] == {str(i): name for i, name in enumerate(DIGIT_NAMES)}
    weights = load_file(finetuned / "model.safetensors")
    assert weights["vit.embeddings.position_embeddings"].shape == (1, 1 + (48 // 8) ** 2, TINY["hidden_size"])
    assert weights["classifier.weight"].shape == (10, TINY["hidden_size"])
    assert not any(key.startswith("vit.pre_logits") for key in weights)
    assert torch.count_nonzero(weights["classifier.weight"]) > 0  # trained from zero
    processor = json.loads((finetuned / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 48, "width": 48}

    results = json.loads((finetuned / "all_results.json").read_text())
    assert results["train_steps"] == 4 and np.isfinite(results["train_loss"])
    assert 0.0 <= results["eval_accuracy"] <= results["eval_top5_accuracy"] <= 1.0
    assert {"eval_loss", "train_runtime", "train_samples_per_second"} <= set(results)
    card = ModelCard.load(finetuned / "README.md")
    split = "held-out 0.25 of 'train'"
    assert f"Fine-tuned from `{pretrained_folder}` on {digits_folder} (10 classes) at 48×48 px for 4 steps" in card.text
    assert "- Position embeddings resized from 32×32 px (4×4 tokens) to 48×48 px (6×6 tokens)" in card.text
    assert "- New zero-initialised head with 10 classes; the representation (pre-logits) layer dropped." in card.text
    assert f"| local dataset | {split} | accuracy | {results['eval_accuracy']:.4g} |" in card.text
    assert f"| local dataset | {split} | top_5_accuracy | {results['eval_top5_accuracy']:.4g} |" in card.text
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.base_model is None and card.data.datasets is None, "local folders are not Hub ids"
    assert [(r.metric_type, r.metric_value, r.dataset_split) for r in card.data.eval_results] == [
        ("accuracy", results["eval_accuracy"], split),
        ("top_5_accuracy", results["eval_top5_accuracy"], split),
    ]


def test_finetune_from_the_hub_pushes_to_the_hub_and_fails_in_one_line(
    hub, digits_folder, pretrained_folder, tmp_path, capsys
):
    push_model(pretrained_folder, "org/tiny-pretrained")
    argv = ["--model", "org/tiny-pretrained", "--dataset", str(digits_folder), *FINETUNE_DATA, "--max-steps", "1"]
    out = tmp_path / "out"
    assert load_script("finetune").main([*argv, "--output-dir", str(out), "--push-to-hub", "org/tiny-digits"]) == 0
    assert capsys.readouterr().out.endswith(f"; saved to {out} and pushed to org/tiny-digits\n")
    api = HfApi()
    files = set(api.list_repo_files("org/tiny-digits"))
    assert {"README.md", "config.json", "model.safetensors", "modeling.py", "preprocessor_config.json"} <= files
    assert not any(name.endswith(".bin") or name.startswith("checkpoint-") for name in files), "only the model goes"
    pushed = Path(api.hf_hub_download("org/tiny-digits", "README.md", cache_dir=tmp_path / "download"))
    assert pushed.read_text() == (out / "README.md").read_text()
    card = ModelCard.load(pushed)
    results = json.loads((out / "all_results.json").read_text())
    assert card.data.base_model == "org/tiny-pretrained" and card.data.model_name == "tiny-digits"
    (model_index,) = card.data.to_dict()["model-index"]
    assert model_index["results"][0]["dataset"] == {
        "name": "local dataset",
        "type": "local dataset",
        "split": "held-out 0.25 of 'train'",
    }
    assert model_index["results"][0]["metrics"][0] == {
        "type": "accuracy",
        "value": results["eval_accuracy"],
        "name": "accuracy",
    }
    assert "Fine-tuned from `org/tiny-pretrained` on" in card.text
    assert "Started from [org/tiny-pretrained](https://huggingface.co/org/tiny-pretrained)." in card.text

    kept = tmp_path / "kept"
    assert load_script("finetune").main([*argv, "--output-dir", str(kept), "--push-to-hub", "forbidden/digits"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: Could not push to forbidden/digits: the Hub answered 403: You don't have the rights to create a "
        f'model under the namespace "forbidden" (the fine-tuned model is saved in {kept})'
    )
    assert (kept / "model.safetensors").is_file() and (kept / "README.md").is_file()
    assert not hub.unrouted, f"the client used endpoints the test Hub lacks: {hub.unrouted}"


def test_finetuning_card_names_hub_datasets_and_models_only(tmp_path, monkeypatch):
    """Hub ids go into `datasets` and `base_model`; a local folder of the same shape does not."""
    from types import SimpleNamespace

    from hf_vit.training.arguments import FinetuningArguments
    from hf_vit.training.finetuning import finetuning_card

    model = prepare_for_finetuning(pretrained(), 10, image_size=48)
    args = FinetuningArguments(
        model="org/vit-pretrained",
        dataset="org/digits",
        dataset_config="small",
        **dict(momentum=0.9, learning_rate=0.01, lr_schedule="cosine", weight_decay=0.0, grad_clip=0.0),
    )
    results = {"train_steps": 500, "total_train_batch_size": 512, "eval_loss": 0.25, "eval_accuracy": 0.875}
    card = finetuning_card(args, SimpleNamespace(warmup_steps=25), model, results, "test", ["A change."])
    assert card.data.base_model == "org/vit-pretrained" and card.data.datasets == ["org/digits"]
    assert [(r.dataset_type, r.dataset_split, r.metric_type) for r in card.data.eval_results] == [
        ("org/digits", "test", "accuracy")
    ]
    assert (
        "Fine-tuned from `org/vit-pretrained` on org/digits (small) (10 classes) at 48×48 px for 500 steps with "
        "hf_vit's `scripts/finetune.py`: SGD with momentum 0.9, batch 512, peak learning rate 0.01 (linear warm-up "
        "over 25 steps, then cosine decay), weight decay 0, no gradient clipping. Held-out loss 0.2500."
    ) in card.text
    assert 'from_pretrained("outputs/finetune", trust_remote_code=True)' in card.text

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "vit-pretrained").mkdir(parents=True)
    local = finetuning_card(args, SimpleNamespace(warmup_steps=0), model, results, "test", [])
    assert local.data.base_model is None and "(cosine decay)" in local.text


def test_finetune_refuses_unknown_label_column(digits_folder, pretrained_folder, tmp_path, capsys):
    argv = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--output-dir", str(tmp_path)]
    assert load_script("finetune").main([*argv, "--label-column", "digit"]) == 1
    assert "label column 'digit' is not in the dataset; its columns are ['image', 'label']" in capsys.readouterr().err


def test_finetuned_folder_runs_in_a_pipeline_without_hf_vit(finetuned, digits_folder, tmp_path):
    image_path = tmp_path / "three.png"
    Image.open(next((digits_folder / "digit3").iterdir())).convert("RGB").save(image_path)
    result = run_without_hf_vit(
        f"""
        import json
        from transformers import pipeline
        classify = pipeline("image-classification", model={str(finetuned)!r}, trust_remote_code=True)
        print(json.dumps(classify({str(image_path)!r}, top_k=3)))
        """,
        cwd=tmp_path,
    )
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(finetuned).eval()
    processor = AutoImageProcessor.from_pretrained(finetuned)
    with torch.no_grad(), Image.open(image_path) as image:
        probs = model(**processor(image.convert("RGB"), return_tensors="pt")).logits.softmax(-1)[0]
    top = probs.topk(3)
    assert [p["label"] for p in result] == [DIGIT_NAMES[i] for i in top.indices]
    np.testing.assert_allclose([p["score"] for p in result], top.values, atol=1e-5)


def test_training_samples_learn_the_epoch():
    """Seeded augmentation must change between epochs; the Trainer's data loader only tells its sampler."""
    from transformers import TrainerControl, TrainerState

    from hf_vit.training.data import ImageSamples
    from hf_vit.training.finetuning import EpochAugmentation

    samples = ImageSamples([], transform=None, image_column="image", label_column="label")
    EpochAugmentation(samples).on_epoch_begin(None, TrainerState(epoch=2.9999999999), TrainerControl())
    assert samples.epoch == 3


def test_gradient_accumulation_makes_the_same_update_as_one_big_batch(digits_folder, pretrained_folder, tmp_path):
    """Two micro-batches of 8 must step like one batch of 16 (the same images, crops seeded per image)."""
    finetune = load_script("finetune").main
    common = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--max-steps", "1"]
    common += ["--eval-fraction", "0.25", "--learning-rate", "0.5", "--grad-clip", "0", "--save-every", "100"]
    assert (
        finetune(
            [*common, "--per-device-batch-size", "16", "--total-batch-size", "16", "--output-dir", str(tmp_path / "a")]
        )
        == 0
    )
    assert (
        finetune(
            [*common, "--per-device-batch-size", "8", "--total-batch-size", "16", "--output-dir", str(tmp_path / "b")]
        )
        == 0
    )
    one, two = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert torch.count_nonzero(one["classifier.weight"]) > 0
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
