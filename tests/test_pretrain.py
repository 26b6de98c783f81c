"""scripts/pretrain.py end to end on real images (scikit-learn's digits written as files), fast and tiny."""

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import DIGIT_NAMES, TINY_RUN, launch, run_script
from PIL import Image

pretrain = functools.partial(run_script, "pretrain")
TINY_MODEL = [*TINY_RUN, "--per-device-batch-size", "8", "--logging-every", "1"]


def results(folder: Path) -> dict:
    return json.loads((folder / "all_results.json").read_text())


def test_two_processes_checkpoint_resume_and_auto_load(digits_folder, tmp_path):
    out = tmp_path / "run"
    common = [*TINY_MODEL, "--dataset", str(digits_folder), "--output-dir", str(out), "--save-every", "2"]
    pretrain(*common, "--max-steps", "4", launcher=launch(2))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list(out.glob(".tmp-*"))
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["total_steps"] == 4 and state["world_size"] == 2
    assert results(out)["train_steps"] == 4

    resumed = pretrain(*common, "--max-steps", "6", "--resume-from-checkpoint", "latest", launcher=launch(2))
    assert "Resumed from" in resumed.stdout + resumed.stderr and "at update 4" in resumed.stdout + resumed.stderr
    summary = results(out)
    assert summary["train_steps"] == 6
    assert set(summary) >= {"eval_accuracy", "eval_loss", "train_loss", "train_steps", "train_samples_per_second"}
    # The share of wall time spent waiting for data is reported (its size depends on the machine).
    assert 0.0 <= summary["train_data_wait_share"] < 1.0
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(0.0 <= record["data_wait_share"] < 1.0 for record in logged if "train_loss" in record)
    # The rotation keeps the newest two.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]

    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert model.config.id2label == dict(enumerate(DIGIT_NAMES))
    assert model.config.representation_size == 32  # the paper pre-trains with the pre-logits layer
    processor = AutoImageProcessor.from_pretrained(out)
    image = Image.open(next((digits_folder / "digit1").iterdir()))
    assert model(**processor(image.convert("RGB"), return_tensors="pt")).logits.shape == (1, 10)


def test_resume_continues_the_same_run(digits_folder, tmp_path):
    """Resuming from the checkpoint at update 3 of 6 ends with the same weights as the uninterrupted run, bit for bit,
    with mixup, dropout and drop-path drawing random numbers all along."""
    dropout = TINY_MODEL[3] + ",hidden_dropout_prob=0.1,drop_path_rate=0.1"
    common = [*TINY_MODEL[:3], dropout, *TINY_MODEL[4:], "--dataset", str(digits_folder), "--save-every", "3"]
    common += ["--max-steps", "6", "--mixup", "0.2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(*common, "--output-dir", str(straight))
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    pretrain(*common, "--output-dir", str(resumed), "--resume-from-checkpoint", "latest")
    from safetensors.torch import load_file

    left, right = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name, tensor in left.items():
        assert torch.equal(right[name], tensor), name
    assert results(resumed)["train_steps"] == 6


TINY_HYBRID = [
    "--model",
    "R+ViT-Ti/16",
    "--config-overrides",
    "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,patch_size=1,resnet_layers=(1,)",
    "--image-size",
    "16",
    "--per-device-batch-size",
    "8",
]


@pytest.mark.parametrize(
    "model, architecture",
    [
        (TINY_MODEL, "VisionTransformerForMaskedPatchPrediction"),
        (TINY_HYBRID, "HybridVisionTransformerForMaskedPatchPrediction"),
    ],
    ids=["vit", "hybrid"],
)
def test_masked_patch_objective_trains(digits_folder, tmp_path, model, architecture):
    out = tmp_path / "mpp"
    pretrain(
        *model,
        "--dataset",
        str(digits_folder),
        "--output-dir",
        str(out),
        "--objective",
        "masked-patch",
        "--max-steps",
        "3",
    )
    summary = results(out)
    assert summary["train_steps"] == 3 and 0 < summary["eval_loss"] < 10
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [architecture]


def test_streams_parquet_shards(digits_folder, tmp_path):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["zero", "one", "two"])})
    samples = [
        (label, index, Image.open(path).copy())
        for label, name in enumerate(DIGIT_NAMES[:3])
        for index, path in enumerate(sorted((digits_folder / name).iterdir())[:8])
    ]
    data = tmp_path / "parquet"
    data.mkdir()
    for shard in range(2):
        part = samples[shard::3]
        rows = {"image": [image for _, _, image in part], "label": [label for label, _, _ in part]}
        Dataset.from_dict(rows, features=features).to_parquet(str(data / f"train-0000{shard}-of-00002.parquet"))
    test_rows = samples[2::3]
    Dataset.from_dict(
        {"image": [i for _, _, i in test_rows], "label": [lab for lab, _, _ in test_rows]}, features=features
    ).to_parquet(str(data / "test-00000-of-00001.parquet"))
    out = tmp_path / "run"
    pretrain(*TINY_MODEL, "--dataset", str(data), "--streaming", "--max-steps", "3", "--output-dir", str(out))
    summary = results(out)
    assert summary["train_steps"] == 3 and 0.0 <= summary["eval_accuracy"] <= 1.0
    labels = json.loads((out / "config.json").read_text())["id2label"]
    assert labels == {"0": "zero", "1": "one", "2": "two"}


def test_corrupt_image_is_skipped_and_counted(digits_folder, tmp_path):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(digits_folder), str(broken)], check=True)
    (broken / "digit0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    out = tmp_path / "run"
    pretrain(*TINY_MODEL, "--dataset", str(broken), "--eval-fraction", "0.5", "--epochs", "1", "--output-dir", str(out))
    assert results(out)["skipped_images"] == 1


def test_non_finite_loss_stops_with_the_last_good_checkpoint(digits_folder, tmp_path):
    out = tmp_path / "run"
    result = pretrain(
        *TINY_MODEL,
        "--dataset",
        str(digits_folder),
        "--output-dir",
        str(out),
        "--max-steps",
        "8",
        "--save-every",
        "1",
        "--learning-rate",
        "1e30",
        "--warmup-steps",
        "0",
        "--grad-clip",
        "0",
        check=False,
    )
    assert result.returncode == 1
    assert "became NaN or infinite" in result.stderr and "last good checkpoint" in result.stderr
    from safetensors.torch import load_file

    for checkpoint in out.glob("checkpoint-*"):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), checkpoint


def test_wrong_label_column_names_the_columns(digits_folder, tmp_path):
    result = pretrain(
        *TINY_MODEL,
        "--dataset",
        str(digits_folder),
        "--label-column",
        "nope",
        "--output-dir",
        str(tmp_path),
        check=False,
    )
    assert result.returncode == 1
    assert "label column 'nope' is not in the dataset; its columns are ['image', 'label']" in result.stderr


def test_a_batch_larger_than_the_data_is_an_error(digits_folder, tmp_path):
    result = pretrain(
        *TINY_MODEL, "--dataset", str(digits_folder), "--per-device-batch-size", "4096", "--output-dir", str(tmp_path),
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "the training data gave no full batch" in result.stderr and "--per-device-batch-size (4096)" in result.stderr
