"""Fine-tuning (Trainer), few-shot linear evaluation and evaluation, end to end on real images (digits as PNGs)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, randomize_head, run_without_hf_vit
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file

import hf_vit
from hf_vit.tools.hub import push_model
from hf_vit.training.evaluation import classification_metrics, label_mapping
from hf_vit.training.fewshot import draw_shots, fit_least_squares
from hf_vit.training.finetuning import prepare_for_finetuning
from hf_vit.training.metrics import load_metric

ROOT = Path(__file__).resolve().parents[1]
DIGIT_NAMES = [f"digit{i}" for i in range(10)]


def script(name: str):
    """A script's module, to call its main(argv) in this process (no second interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pretrained(representation_size: int | None = 16) -> hf_vit.VisionTransformerForImageClassification:
    """A "pre-trained" tiny ViT at 32 px: 5 classes, a representation layer and a non-zero head to be replaced."""
    torch.manual_seed(0)
    config = hf_vit.VisionTransformerConfig(**TINY, representation_size=representation_size)
    model = randomize_head(hf_vit.VisionTransformerForImageClassification(config))
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """An imagefolder of 12 real handwritten digits per class, upscaled from 8x8 to 32x32 PNGs."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for label, name in enumerate(DIGIT_NAMES):
        (root / name).mkdir()
        for index in np.flatnonzero(digits.target == label)[:12]:
            pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((32, 32), Image.BICUBIC).save(root / name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained")
    model = pretrained()
    model.save_pretrained(folder)
    hf_vit.create_image_processor(model.config).save_pretrained(folder)
    return folder


DATA = ["--eval-fraction", "0.25", "--per-device-batch-size", "16"]


@pytest.fixture(scope="module")
def finetuned(digits_folder, pretrained_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetuned")
    code = script("finetune").main(
        [
            *("--model", str(pretrained_folder), "--dataset", str(digits_folder), "--image-size", "48"),
            *(*DATA, "--gradient-accumulation-steps", "1", "--max-steps", "4", "--output-dir", str(out)),
        ]
    )
    assert code == 0
    return out


# -- model surgery ---------------------------------------------------------------------------------------------------


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


# -- metrics and the least-squares probe ----------------------------------------------------------------------------


def test_shipped_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, top_k_accuracy_score

    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=(200, 12)), rng.integers(0, 12, 200)
    ranked = np.argsort(-scores, axis=1)
    accuracy = load_metric("accuracy").compute(predictions=ranked[:, 0], references=labels)["accuracy"]
    assert accuracy == pytest.approx(accuracy_score(labels, ranked[:, 0]), abs=1e-12)
    for k in (1, 3, 5):
        top_k = load_metric("top_k_accuracy").compute(predictions=ranked[:, :5], references=labels, k=k)
        expected = top_k_accuracy_score(labels, scores, k=k, labels=np.arange(12))
        assert top_k["top_k_accuracy"] == pytest.approx(expected, abs=1e-12)
    assert classification_metrics(ranked[:, :5], labels, 12) == pytest.approx(
        {"accuracy": accuracy, "top5_accuracy": top_k_accuracy_score(labels, scores, k=5, labels=np.arange(12))}
    )
    assert set(classification_metrics(ranked[:, :3], labels % 3, 3)) == {"accuracy"}
    with pytest.raises(ValueError, match="top-5 accuracy needs at least 5 ranked classes per example; one has 3"):
        load_metric("top_k_accuracy").compute(predictions=ranked[:, :3], references=labels, k=5)


@pytest.mark.parametrize("count", [40, 6])  # more examples than features (primal), fewer (dual)
def test_least_squares_matches_lstsq(count):
    rng = np.random.default_rng(count)
    features, labels = rng.normal(size=(count, 10)) * 3 + 1, np.arange(count) % 4
    probe = fit_least_squares(features, labels, num_classes=4, l2_reg=2.0**10)
    # Ridge regression is least squares on the system stacked with sqrt(l2) I (all weights, bias included).
    design = probe.design(features)
    stacked = np.concatenate([design, np.sqrt(2.0**10) * np.eye(design.shape[1])])
    targets = np.concatenate([2 * np.eye(4)[labels] - 1, np.zeros((design.shape[1], 4))])
    expected = np.linalg.lstsq(stacked, targets, rcond=None)[0]
    np.testing.assert_allclose(probe.weights, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(design[:, :-1].mean(0), 0, atol=1e-9)  # standardised with the training statistics
    np.testing.assert_allclose(design[:, :-1].std(0), 1, atol=1e-4)


def test_least_squares_separates_separable_classes():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 32)) * 4
    labels = np.repeat(np.arange(5), 3)  # 3-shot
    probe = fit_least_squares(centres[labels] + rng.normal(size=(15, 32)) * 0.3, labels, 5)
    test_labels = np.tile(np.arange(5), 40)
    predicted = probe.predict(centres[test_labels] + rng.normal(size=(200, 32)) * 0.3)
    assert (predicted == test_labels).all()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\); got 0..7"):
        fit_least_squares(np.zeros((2, 3)), np.array([0, 7]), 5)


def test_draws_are_per_class_nested_and_seeded():
    labels = np.repeat(np.arange(3), 10)
    draw = draw_shots(labels, 3, 5, seed=0)
    assert draw.shape == (3, 5) and (labels[draw] == np.arange(3)[:, None]).all()
    assert len(np.unique(draw)) == 15
    np.testing.assert_array_equal(draw, draw_shots(labels, 3, 5, seed=0))
    assert not np.array_equal(draw, draw_shots(labels, 3, 5, seed=1))
    uneven = np.concatenate([labels, [0, 1]])
    assert draw_shots(uneven, 3, 10, seed=0).shape == (3, 10)
    with pytest.raises(ValueError, match="Class 'c' has 10 training images; 11-shot evaluation needs 11 per class"):
        draw_shots(uneven, 3, 11, seed=0, names=["a", "b", "c"])


def test_label_mapping_by_name():
    id2label = dict(enumerate(["cat", "dog", "fish"]))
    np.testing.assert_array_equal(label_mapping(id2label, ["fish", "cat"]), [2, 0])
    np.testing.assert_array_equal(label_mapping({0: "LABEL_0", 1: "LABEL_1"}, ["a", "b"]), [0, 1])
    with pytest.raises(ValueError, match=r"1 of the dataset's 2 classes \(\['cow'\]\) are not among the model's 3"):
        label_mapping(id2label, ["cat", "cow"])


# -- the scripts ----------------------------------------------------------------------------------------------------


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
    argv = ["--model", "org/tiny-pretrained", "--dataset", str(digits_folder), *DATA, "--max-steps", "1"]
    out = tmp_path / "out"
    assert script("finetune").main([*argv, "--output-dir", str(out), "--push-to-hub", "org/tiny-digits"]) == 0
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
    assert script("finetune").main([*argv, "--output-dir", str(kept), "--push-to-hub", "forbidden/digits"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: Could not push to forbidden/digits: the Hub answered 403: You don't have the rights to create a "
        f'model under the namespace "forbidden" (the fine-tuned model is saved in {kept})'
    )
    assert (kept / "model.safetensors").is_file() and (kept / "README.md").is_file()
    assert not hub.unrouted, f"the client used endpoints the test Hub lacks: {hub.unrouted}"


def test_finetuning_card_names_hub_datasets_and_models_only(tmp_path, monkeypatch):
    """Hub ids go into `datasets` and `base_model`; a local folder of the same shape does not."""
    import argparse
    from types import SimpleNamespace

    from hf_vit.training.finetuning import finetuning_card

    model = prepare_for_finetuning(pretrained(), 10, image_size=48)
    args = argparse.Namespace(
        model="org/vit-pretrained",
        dataset="org/digits",
        dataset_config="small",
        output_dir="outputs/finetune",
        push_to_hub=None,
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


def test_evaluate_reproduces_the_finetuning_eval(finetuned, digits_folder, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["--model", str(finetuned), "--dataset", str(digits_folder), "--eval-fraction", "0.25"]
    assert script("evaluate_model").main([*argv, "--batch-size", "16", "--output", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    trained = json.loads((finetuned / "all_results.json").read_text())
    assert evaluated["eval_samples"] == 30 and evaluated["image_size"] == 48
    assert evaluated["eval_accuracy"] == pytest.approx(trained["eval_accuracy"], abs=1e-12)
    assert evaluated["eval_top5_accuracy"] == pytest.approx(trained["eval_top5_accuracy"], abs=1e-12)
    assert json.loads(capsys.readouterr().out) == evaluated


def test_evaluate_refuses_mismatched_labels_and_untrained_heads(finetuned, pretrained_folder, tmp_path, capsys):
    other = tmp_path / "animals"
    for name in ("cat", "dog"):
        (other / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (60 * i, 30, 200)).save(other / name / f"{i}.png")
    evaluate = script("evaluate_model").main
    assert evaluate(["--model", str(finetuned), "--dataset", str(other), "--split", "train"]) == 1
    assert (
        "2 of the dataset's 2 classes (['cat', 'dog']) are not among the model's 10 labels" in capsys.readouterr().err
    )
    assert evaluate(["--model", str(finetuned), "--dataset", str(other), "--label-column", "species"]) == 1
    assert "label column 'species' is not in the dataset; its columns are ['image', 'label']" in capsys.readouterr().err
    assert evaluate(["--model", str(tmp_path / "missing"), "--dataset", str(other)]) == 1
    assert "no such folder" in capsys.readouterr().err
    bare = tmp_path / "bare"
    pretrained().vit.save_pretrained(bare)
    assert evaluate(["--model", str(bare), "--dataset", str(other), "--split", "train"]) == 1
    assert "is not a trained classifier: it has no weights for ['classifier.bias', 'classifier.weight']" in (
        capsys.readouterr().err
    )


def test_finetune_refuses_unknown_label_column(digits_folder, pretrained_folder, tmp_path, capsys):
    argv = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--output-dir", str(tmp_path)]
    assert script("finetune").main([*argv, "--label-column", "digit"]) == 1
    assert "label column 'digit' is not in the dataset; its columns are ['image', 'label']" in capsys.readouterr().err


def test_fewshot_probe_of_frozen_features(pretrained_folder, digits_folder, tmp_path, capsys):
    out = tmp_path / "fewshot.json"
    argv = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--eval-fraction", "0.25"]
    assert script("fewshot").main([*argv, "--shots", "1", "3", "--seeds", "2", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["seeds"] == [0, 1] and results["num_classes"] == 10 and results["eval_samples"] == 30
    assert results["feature_size"] == 16  # the pre-logits (representation) output of the pre-trained model
    assert set(results["accuracy"]) == {"1", "3"}
    for accuracy in results["accuracy"].values():
        assert len(accuracy["per_seed"]) == 2 and all(0.0 <= a <= 1.0 for a in accuracy["per_seed"])
        assert accuracy["mean"] == pytest.approx(np.mean(accuracy["per_seed"]))
    assert "3-shot" in capsys.readouterr().out
    assert script("fewshot").main([*argv, "--shots", "10", "--output", str(out)]) == 1
    assert "Class 'digit0' has 9 training images; 10-shot evaluation needs 10 per class" in capsys.readouterr().err


def test_fewshot_features_are_the_pooled_pre_logits(pretrained_folder, digits_folder):
    """The probe's accuracy recomputed by hand from model.vit(...).pooler_output of the drawn images."""
    import argparse

    from hf_vit.training.data import decode_image, load_image_data
    from hf_vit.training.evaluation import ProcessorTransform, load_classifier
    from hf_vit.training.fewshot import run_fewshot

    args = argparse.Namespace(
        model=str(pretrained_folder),
        dataset=str(digits_folder),
        **dict(dataset_config=None, image_column=None, label_column=None, train_split="train", eval_split=None),
        **dict(eval_fraction=0.25, streaming=False, image_size=None, num_workers=0, trust_remote_code=False),
        **dict(batch_size=8, device="cpu", seed=0, output=None, shots=[2], seeds=1, l2_reg=2.0**10),
    )
    accuracy = run_fewshot(args)["accuracy"]["2"]["mean"]
    data = load_image_data(args)
    model, processor, _ = load_classifier(args.model)
    transform = ProcessorTransform(processor)

    def features(dataset):
        images = [decode_image(row["image"]) for row in dataset]
        with torch.no_grad():
            return model.vit(torch.stack([transform(i) for i in images])).pooler_output.numpy()

    train_labels = np.asarray(data.train["label"])
    chosen = draw_shots(train_labels, 10, 2, seed=0).ravel()
    probe = fit_least_squares(features(data.train.select(chosen)), train_labels[chosen], 10)
    expected = (probe.predict(features(data.eval)) == np.asarray(data.eval["label"])).mean()
    assert accuracy == pytest.approx(expected, abs=1e-12)


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
    finetune = script("finetune").main
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
