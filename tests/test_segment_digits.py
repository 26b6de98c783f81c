"""The dense-prediction example (examples/segment_digits.py): its data, its metric, and a real training run."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import segment_digits  # noqa: E402 - the example, from examples/


def test_canvases_label_each_inked_pixel_with_its_digit():
    digits = load_digits()
    pixels, masks = segment_digits.make_canvases(digits.images, digits.target, 50, np.random.default_rng(0))
    assert pixels.shape == (50, 3, 64, 64) and masks.shape == (50, 64, 64)
    assert pixels.min() >= -1 and pixels.max() <= 1 and torch.equal(pixels[:, 0], pixels[:, 2])
    ink = (pixels[:, 0] + 1) / 2
    assert (ink[masks > 0] > segment_digits.INK).all(), "a digit pixel is inked"
    assert (masks[ink > segment_digits.INK] > 0).all(), "an inked pixel belongs to a digit"
    present = [set(mask.unique().tolist()) - {0} for mask in masks]
    assert all(1 <= len(classes) <= 3 for classes in present) and set().union(*present) == set(range(1, 11))

    seven = np.zeros((1, 8, 8))
    seven[0, 2:6, 3:5] = 16
    _, masks = segment_digits.make_canvases(seven, np.array([7]), 5, np.random.default_rng(1))
    assert set(masks.unique().tolist()) == {0, 8}, "digit d is class d + 1"


def test_mean_iou_counts_the_classes_present():
    target = torch.tensor([[0, 0, 0, 1], [0, 0, 2, 2]])
    assert segment_digits.mean_iou(target, target) == 1.0
    background = torch.zeros_like(target)
    assert segment_digits.mean_iou(background, target) == pytest.approx((5 / 8 + 0 + 0) / 3)
    shifted = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 2]])  # background 4/6, class 1 1/2, class 2 1/2
    assert segment_digits.mean_iou(shifted, target) == pytest.approx((4 / 6 + 1 / 2 + 1 / 2) / 3)


@pytest.mark.slow
def test_upernet_on_a_vit_learns_to_segment_digits(tmp_path):
    result = segment_digits.train()  # the example's defaults, as the README runs it
    assert result["last_loss"] < result["first_loss"] / 2
    assert result["mean_iou"] > 0.3 and result["mean_iou"] > 3 * result["background_mean_iou"]
    figure = tmp_path / "segment_digits.png"
    segment_digits.draw(result["eval_pixels"], result["eval_masks"], result["predicted"], str(figure))
    assert 0 < figure.stat().st_size < 200_000
