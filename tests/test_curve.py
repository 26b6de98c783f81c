"""The training curve: hf_vit.tools.plotting.save_training_curve and scripts/plot_log.py on a run's log.jsonl."""

import json
import sys

import numpy as np
import pytest
from conftest import TINY_RUN, load_script
from PIL import Image

from hf_vit.tools.plotting import read_training_log, save_training_curve

RUN = [
    *TINY_RUN,
    *("--per-device-batch-size", "8", "--max-steps", "12", "--logging-every", "2", "--eval-every", "4"),
    *("--save-every", "12"),
]


def test_plot_log_draws_a_real_run(digits_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert load_script("pretrain").main([*RUN, "--dataset", str(digits_folder), "--output-dir", str(run)]) == 0
    train, evaluation = read_training_log(run / "log.jsonl")
    assert list(train) == [2, 4, 6, 8, 10, 12] and list(evaluation) == [4, 8, 12]
    capsys.readouterr()
    assert load_script("plot_log").main(["--run", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'training_curve.png'}"
    pixels = np.asarray(Image.open(run / "training_curve.png").convert("L"), dtype=np.float64)
    assert pixels.shape == (400, 1400) and pixels.std() > 20, f"blank-looking curve (pixel std {pixels.std():.1f})"


def write_log(path, lines: list[str]):
    path.write_text("".join(lines))
    return path


def test_log_reading_keeps_the_last_value_of_a_step_and_skips_a_cut_last_line(tmp_path):
    train = [json.dumps({"step": step, "train_loss": 3.0 - step / 10, "learning_rate": 1e-3}) + "\n" for step in (1, 2)]
    evaluation = json.dumps({"step": 2, "eval_loss": 2.5, "eval_accuracy": 0.25, "eval_samples": 40}) + "\n"
    resumed = json.dumps({"step": 2, "train_loss": 1.5, "learning_rate": 1e-3}) + "\n"
    log = write_log(tmp_path / "log.jsonl", [*train, evaluation, resumed, '{"step": 3, "train_lo'])
    points, held_out = read_training_log(log)
    assert {step: point["train_loss"] for step, point in points.items()} == {1: 2.9, 2: 1.5}
    assert held_out == {2: {"step": 2, "eval_loss": 2.5, "eval_accuracy": 0.25, "eval_samples": 40}}
    path = save_training_curve(log, tmp_path / "curve.png")
    assert path == tmp_path / "curve.png" and Image.open(path).size == (1400, 400)

    bad = write_log(tmp_path / "bad.jsonl", [train[0], "oops\n", train[1]])
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not a log record with a step: 'oops'"):
        read_training_log(bad)
    with pytest.raises(ValueError, match="holds no training or evaluation points yet"):
        read_training_log(write_log(tmp_path / "empty.jsonl", []))


def test_without_matplotlib_the_curve_is_skipped(tmp_path, monkeypatch):
    log = write_log(tmp_path / "log.jsonl", [json.dumps({"step": 1, "train_loss": 1.0, "learning_rate": 0.1}) + "\n"])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    assert save_training_curve(log, tmp_path / "curve.png") is None
    assert not (tmp_path / "curve.png").exists()


def test_plot_log_errors_are_one_line(tmp_path, capsys):
    assert load_script("plot_log").main(["--run", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path} holds no log.jsonl: point --run at the output folder of a training run.\n"
    )
