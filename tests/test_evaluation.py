"""Evaluation: the shipped metric modules, label matching, scripts/evaluate_model.py on a fine-tuned model."""

import json

import numpy as np
import pytest
from conftest import load_script, pretrained
from PIL import Image

from hf_vit.training.evaluation import label_mapping
from hf_vit.training.metrics import classification_metrics, load_metric


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


def test_label_mapping_by_name():
    id2label = dict(enumerate(["cat", "dog", "fish"]))
    np.testing.assert_array_equal(label_mapping(id2label, ["fish", "cat"]), [2, 0])
    np.testing.assert_array_equal(label_mapping({0: "LABEL_0", 1: "LABEL_1"}, ["a", "b"]), [0, 1])
    with pytest.raises(ValueError, match=r"1 of the dataset's 2 classes \(\['cow'\]\) are not among the model's 3"):
        label_mapping(id2label, ["cat", "cow"])


def test_evaluate_reproduces_the_finetuning_eval(finetuned, digits_folder, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["--model", str(finetuned), "--dataset", str(digits_folder), "--eval-fraction", "0.25"]
    assert load_script("evaluate_model").main([*argv, "--batch-size", "16", "--output", str(out)]) == 0
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
    evaluate = load_script("evaluate_model").main
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
