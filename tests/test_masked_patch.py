"""The paper's self-supervised objective: corruption, colour targets and loss."""

import numpy as np
import torch
from conftest import TINY

import hf_vit
from hf_vit.models.modeling import mean_colour_classes


def test_mean_colour_classes_match_a_numpy_count():
    pixels = torch.rand(2, 3, 16, 24) * 2 - 1
    classes = mean_colour_classes(pixels, (8, 8))
    array = pixels.numpy()
    expected = np.zeros((2, 2, 3), dtype=np.int64)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                mean = array[b, :, i * 8 : (i + 1) * 8, j * 8 : (j + 1) * 8].mean(axis=(1, 2))
                r, g, bl = np.clip(np.floor((mean + 1) / 2 * 8), 0, 7).astype(int)
                expected[b, i, j] = r * 64 + g * 8 + bl
    np.testing.assert_array_equal(classes.numpy(), expected.reshape(2, 6))
    assert mean_colour_classes(torch.ones(1, 3, 8, 8), (8, 8)).item() == 511
    assert mean_colour_classes(-torch.ones(1, 3, 8, 8), (8, 8)).item() == 0


def test_corruption_proportions():
    model = hf_vit.VisionTransformerForMaskedPatchPrediction(hf_vit.VisionTransformerConfig(**TINY))
    torch.manual_seed(0)
    predicted, masked, sources = model.corrupt(4000, 16, torch.device("cpu"))
    assert (predicted.sum(1) == 8).all()  # exactly half of the patches
    assert not (masked & ~predicted).any()
    identity = torch.arange(16).expand(4000, 16)
    assert (sources[~predicted] == identity[~predicted]).all()
    moved = sources != identity
    assert abs((masked.sum() / predicted.sum()).item() - 0.8) < 0.01
    # 10% get a random other patch; a draw of its own position (1 in 16) leaves it unchanged.
    assert abs((moved & ~masked).sum().item() / predicted.sum().item() - 0.1 * 15 / 16) < 0.01
    assert not (moved & ~predicted).any()


def test_corruption_reaches_the_encoder_and_loss_counts_predicted_patches_only():
    torch.manual_seed(0)
    model = hf_vit.VisionTransformerForMaskedPatchPrediction(hf_vit.VisionTransformerConfig(**TINY)).eval()
    torch.nn.init.normal_(model.head.weight)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = 16
    identity = torch.arange(tokens).expand(2, tokens)
    none = torch.zeros(2, tokens, dtype=torch.bool)
    first = none.clone()
    first[:, 0] = True
    clean = model(pixels, predicted_pos=first, bool_masked_pos=none, source_patches=identity)
    masked = model(pixels, predicted_pos=first, bool_masked_pos=first, source_patches=identity)
    assert not torch.allclose(clean.logits, masked.logits)
    # Swapping patch 0 for patch 5 gives the encoder patch 5's embedding at position 0.
    swapped_sources = identity.clone()
    swapped_sources[:, 0] = 5
    embeddings = model.vit.embeddings
    swapped = embeddings(pixels, source_patches=swapped_sources)
    plain = embeddings(pixels)
    pos = embeddings.position_embeddings[:, 1:]
    torch.testing.assert_close(swapped[:, 1] - pos[:, 0], plain[:, 6] - pos[:, 5])

    targets = mean_colour_classes(pixels, (8, 8))
    expected = torch.nn.functional.cross_entropy(masked.logits[:, 0], targets[:, 0])
    torch.testing.assert_close(masked.loss, expected)


def test_trains_a_few_steps():
    torch.manual_seed(0)
    model = hf_vit.VisionTransformerForMaskedPatchPrediction(hf_vit.VisionTransformerConfig(**TINY)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pixels = torch.rand(8, 3, 32, 32) * 2 - 1
    losses = []
    for _ in range(15):
        loss = model(pixels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert abs(losses[0] - np.log(512)) < 1e-4  # the zero head predicts uniformly
    assert np.mean(losses[-3:]) < losses[0] - 0.5


def test_a_seeded_generator_gives_the_same_corruption_every_call():
    torch.manual_seed(0)
    model = hf_vit.VisionTransformerForMaskedPatchPrediction(hf_vit.VisionTransformerConfig(**TINY)).eval()
    torch.nn.init.normal_(model.head.weight)
    pixels = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        first = model(pixels, generator=torch.Generator().manual_seed(7))
        again = model(pixels, generator=torch.Generator().manual_seed(7))
        other = model(pixels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.logits, again.logits) and first.loss == again.loss
    assert not torch.equal(first.logits, other.logits)
    predicted, masked, sources = model.corrupt(4, 16, torch.device("cpu"), torch.Generator().manual_seed(7))
    expected = model.corrupt(4, 16, torch.device("cpu"), torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip((predicted, masked, sources), expected, strict=True))
