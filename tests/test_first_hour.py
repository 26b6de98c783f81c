"""What a new user meets in the first hour of training: local answers to local typos, a used folder refused, a run
that evaluates along the way and draws its curve, trackers."""

import json
import socket

import pytest
from conftest import run_script

TINY = ["--config-overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64"]


def closed_port_hub() -> dict[str, str]:
    """A Hub endpoint on a port nothing listens on, with the network allowed: any request would fail loudly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0"}


@pytest.mark.parametrize(
    "script, model, message",
    [
        ("pretrain", "ViT-X/99", "error: --model 'ViT-X/99': unknown preset. Available presets: ViT-Ti/16, "),
        ("pretrain", "outputs/nothere", "error: --model 'outputs/nothere': no such folder."),
        ("finetune", "./nothere", "error: --model './nothere': no such folder."),
        ("finetune", "outputs", "error: --model 'outputs': the folder holds no model (no config.json)"),
    ],
)
def test_a_local_mistake_is_one_line_without_the_network(script, model, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()  # an earlier run's folder, as after a first training run
    result = run_script(
        script, "--model", model, "--output-dir", str(tmp_path / "out"), check=False, **closed_port_hub()
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if not line.startswith("W1")]  # torch's import warnings
    assert lines == [lines[-1]] and lines[-1].startswith(message), result.stderr[-2000:]


def test_a_rerun_into_a_used_folder_is_refused_naming_the_flag(digits_folder, tmp_path):
    out = tmp_path / "run"
    common = ["--model", "ViT-Ti/16", *TINY, "--image-size", "16", "--dataset", str(digits_folder), "--max-steps", "2"]
    run_script("pretrain", *common, "--output-dir", str(out))
    again = run_script("pretrain", *common, "--output-dir", str(out), check=False)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: --output-dir {out} already holds a run; pass --overwrite-output-dir to replace it, "
        "--resume-from-checkpoint latest to continue it, or choose another folder."
    )
    first_log = (out / "log.jsonl").read_text()
    run_script("pretrain", *common, "--output-dir", str(out), "--overwrite-output-dir")
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and (out / "log.jsonl").read_text() != first_log + first_log  # a fresh log


def test_the_default_run_evaluates_along_the_way(tmp_path):
    """The built-in run (digits recipe, only shortened) evaluates five times and logs each point."""
    out = tmp_path / "run"
    run_script("pretrain", *TINY, "--max-steps", "10", "--output-dir", str(out))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evaluations = [record for record in records if "eval_accuracy" in record]
    assert [record["step"] for record in evaluations] == [2, 4, 6, 8, 10]
    assert all(record["eval_samples"] == 180 for record in evaluations)  # 10% of the 1,797 digits
    assert [record["step"] for record in records if "train_loss" in record] == [10]  # logged every 20, and at the end


def test_tensorboard_receives_the_run(digits_folder, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    common = ["--model", "ViT-Ti/16", *TINY, "--image-size", "16", "--dataset", str(digits_folder)]
    run_script("pretrain", *common, "--max-steps", "4", "--logging-every", "1", "--report-to", "tensorboard",
               "--output-dir", str(out))  # fmt: skip
    runs = [EventAccumulator(str(path)).Reload() for path in out.rglob("events.out.tfevents.*")]
    (accumulator,) = [run for run in runs if "train_loss" in run.Tags()["scalars"]]
    losses = [event.step for event in accumulator.Scalars("train_loss")]
    assert losses == [1, 2, 3, 4] and {"learning_rate", "eval_accuracy"} <= set(accumulator.Tags()["scalars"])
