"""Few-shot linear evaluation: the least-squares probe, the per-class draws, scripts/fewshot.py."""

import json

import numpy as np
import pytest
import torch
from conftest import load_script

from hf_vit.training.fewshot import draw_shots, fit_least_squares


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


def test_fewshot_probe_of_frozen_features(pretrained_folder, digits_folder, tmp_path, capsys):
    out = tmp_path / "fewshot.json"
    argv = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--eval-fraction", "0.25"]
    assert load_script("fewshot").main([*argv, "--shots", "1", "3", "--seeds", "2", "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["seeds"] == [0, 1] and results["num_classes"] == 10 and results["eval_samples"] == 30
    assert results["feature_size"] == 16  # the pre-logits (representation) output of the pre-trained model
    assert set(results["accuracy"]) == {"1", "3"}
    for accuracy in results["accuracy"].values():
        assert len(accuracy["per_seed"]) == 2 and all(0.0 <= a <= 1.0 for a in accuracy["per_seed"])
        assert accuracy["mean"] == pytest.approx(np.mean(accuracy["per_seed"]))
    assert "3-shot" in capsys.readouterr().out
    assert load_script("fewshot").main([*argv, "--shots", "10", "--output", str(out)]) == 1
    assert "Class 'digit0' has 9 training images; 10-shot evaluation needs 10 per class" in capsys.readouterr().err


def test_fewshot_features_are_the_pooled_pre_logits(pretrained_folder, digits_folder):
    """The probe's accuracy recomputed by hand from model.vit(...).pooler_output of the drawn images."""
    from hf_vit.training.arguments import FewshotArguments
    from hf_vit.training.augmentation import ProcessorTransform
    from hf_vit.training.data import decode_image, load_image_data
    from hf_vit.training.evaluation import load_classifier
    from hf_vit.training.fewshot import run_fewshot

    args = FewshotArguments(
        model=str(pretrained_folder), dataset=str(digits_folder), eval_fraction=0.25, batch_size=8, shots=[2], seeds=1
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
