"""The paper's analyses on constructed cases with known answers, and scripts/analyze.py end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, load_script, to_pixels
from PIL import Image
from scipy.spatial.distance import pdist

import hf_vit
from hf_vit.loading import load_image_processor, load_model
from hf_vit.tools.analysis import (
    analyze,
    attention_rollout,
    filter_principal_components,
    mean_attention_distance,
    patch_distances,
    pixel_filters,
    position_embedding_similarity,
    rollout_map,
)


def random_attention(layers: int, batch: int, heads: int, tokens: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, tokens, generator=generator).softmax(-1) for _ in range(layers)]


def identity_attention(layers: int, batch: int, heads: int, tokens: int) -> list[torch.Tensor]:
    return [torch.eye(tokens).expand(batch, heads, tokens, tokens) for _ in range(layers)]


def uniform_attention(layers: int, batch: int, heads: int, tokens: int) -> list[torch.Tensor]:
    return [torch.full((batch, heads, tokens, tokens), 1 / tokens) for _ in range(layers)]


def test_rollout_of_identity_attention_is_identity():
    tokens = 1 + 3 * 4
    rollout = attention_rollout(identity_attention(layers=3, batch=2, heads=4, tokens=tokens))
    torch.testing.assert_close(rollout, torch.eye(tokens).expand(2, tokens, tokens))
    # Without a class token the image map is the mean of the rows: every patch gets the same share.
    patch_rollout = attention_rollout(identity_attention(layers=3, batch=2, heads=4, tokens=12))
    torch.testing.assert_close(rollout_map(patch_rollout, 0, (3, 4)), torch.full((2, 3, 4), 1 / 12))
    # With one, the class token only looks at itself, so no patch gets anything.
    torch.testing.assert_close(rollout_map(rollout, 1, (3, 4)), torch.zeros(2, 3, 4))


def test_rollout_matches_the_formula_written_out():
    attentions = random_attention(layers=4, batch=2, heads=3, tokens=7)
    expected = np.stack([np.eye(7)] * 2)
    for weights in attentions:
        mixed = 0.5 * weights.double().numpy().mean(axis=1) + 0.5 * np.eye(7)  # rows of weights sum to one
        expected = np.einsum("bij,bjk->bik", mixed, expected)
    rollout = attention_rollout(attentions)
    np.testing.assert_allclose(rollout.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rollout.sum(-1).numpy(), 1.0, rtol=1e-6)
    cls_map = rollout_map(rollout, 1, (2, 3))
    np.testing.assert_allclose(
        cls_map.numpy(), (expected[:, 0, 1:] / expected[:, 0, 1:].sum(-1, keepdims=True)).reshape(2, 2, 3), rtol=1e-5
    )
    gap_map = rollout_map(rollout[:, 1:, 1:], 0, (2, 3))
    rows = expected[:, 1:, 1:].mean(1)
    np.testing.assert_allclose(gap_map.numpy(), (rows / rows.sum(-1, keepdims=True)).reshape(2, 2, 3), rtol=1e-5)


def test_rollout_rejects_a_mismatched_grid():
    with pytest.raises(ValueError, match="1 prefix tokens and a 3x3 grid make 10"):
        rollout_map(torch.eye(7)[None], 1, (3, 3))


def patch_centres(grid: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    return np.array([(row * stride[0], col * stride[1]) for row in range(grid[0]) for col in range(grid[1])], float)


@pytest.mark.parametrize("prefix", [0, 1])
def test_mean_attention_distance_of_self_and_uniform_attention(prefix):
    grid, stride = (3, 5), (4, 8)  # neither square: a swapped axis would show
    tokens = prefix + grid[0] * grid[1]
    self_only = mean_attention_distance(identity_attention(2, 2, 3, tokens), grid, stride, prefix)
    torch.testing.assert_close(self_only, torch.zeros(2, 3))
    # Uniform attention integrates over the mean distance between two patches (pairs with themselves included).
    count = grid[0] * grid[1]
    mean_pairwise = 2 * pdist(patch_centres(grid, stride)).sum() / count**2
    uniform = mean_attention_distance(uniform_attention(2, 2, 3, tokens), grid, stride, prefix)
    np.testing.assert_allclose(uniform.numpy(), np.full((2, 3), mean_pairwise), rtol=1e-6)


def test_mean_attention_distance_weights_keys_per_query():
    grid, stride = (4, 3), (16, 16)
    centres = patch_centres(grid, stride)
    attentions = random_attention(layers=2, batch=3, heads=2, tokens=1 + 12)
    expected = np.zeros((2, 2))
    for layer, weights in enumerate(attentions):
        for head in range(2):
            total = 0.0
            for image in range(3):
                patch = weights[image, head, 1:, 1:].double().numpy()
                patch = patch / patch.sum(-1, keepdims=True)
                for query in range(12):
                    for key in range(12):
                        total += patch[query, key] * np.linalg.norm(centres[query] - centres[key])
            expected[layer, head] = total / (3 * 12)
    result = mean_attention_distance(attentions, grid, stride, num_prefix_tokens=1)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(patch_distances(grid, 16).numpy()[0, 5], np.hypot(16, 32))


def sincos_grid(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Position embeddings that are sines and cosines of the row and the column, a known 2-D pattern."""
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    frequencies = 1.0 / (4.0 ** np.arange(dim // 4))
    parts = [f(np.outer(axis.ravel(), frequencies)) for axis in (rows, cols) for f in (np.sin, np.cos)]
    return torch.from_numpy(np.concatenate(parts, axis=1)).float()


def explicit_cosine(embeddings: np.ndarray) -> np.ndarray:
    count = len(embeddings)
    result = np.zeros((count, count))
    for i in range(count):
        for j in range(count):
            result[i, j] = embeddings[i] @ embeddings[j] / np.linalg.norm(embeddings[i]) / np.linalg.norm(embeddings[j])
    return result


def test_position_embedding_similarity_shows_a_two_dimensional_pattern(photo):
    config = hf_vit.VisionTransformerConfig(**TINY)
    model = hf_vit.VisionTransformerForImageClassification(config).eval()
    grid = config.grid_size
    pattern = sincos_grid(grid, config.hidden_size)
    with torch.no_grad():
        model.vit.embeddings.position_embeddings[0, 1:] = pattern
    result = analyze(model, to_pixels(photo, config.image_size))
    similarity = result.position_similarity.numpy()
    assert similarity.shape == (*grid, *grid)
    np.testing.assert_allclose(similarity.reshape(16, 16), explicit_cosine(pattern.numpy()), atol=1e-6)
    for row in range(grid[0]):
        for col in range(grid[1]):
            tile = similarity[row, col]
            assert np.unravel_index(tile.argmax(), tile.shape) == (row, col)
            neighbour = tile[row, col + 1 if col + 1 < grid[1] else col - 1]
            far = tile[(row + 2) % grid[0], (col + 2) % grid[1]]
            assert neighbour > far


def test_position_embedding_similarity_needs_the_right_count():
    with pytest.raises(ValueError, match="17 position embeddings do not match 0 prefix tokens and a 4x4 grid"):
        position_embedding_similarity(torch.randn(1, 17, 8), (4, 4), 0)


def test_filter_components_are_orthonormal_and_match_numpy_svd():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 3, 4, 4, generator=generator) * torch.linspace(0.1, 2.0, 48).reshape(1, 3, 4, 4)
    result = filter_principal_components(weight, num_components=10)
    components = result.components.reshape(10, -1).double().numpy()
    np.testing.assert_allclose(components @ components.T, np.eye(10), atol=1e-6)
    samples = weight.reshape(40, -1).double().numpy()
    centred = samples - samples.mean(0)
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(np.sum(components * right[:10], axis=1))
    np.testing.assert_allclose(components, right[:10] * signs[:, None], atol=1e-5)
    np.testing.assert_allclose(
        result.explained_variance_ratio.numpy(), singular[:10] ** 2 / (singular**2).sum(), rtol=1e-5
    )
    assert np.all(np.diff(result.explained_variance_ratio.numpy()) <= 0)
    # Largest-magnitude entry positive: the sign is fixed, so reruns draw the same picture.
    assert np.all(components[np.arange(10), np.abs(components).argmax(1)] > 0)


def test_filter_components_recover_planted_patterns():
    generator = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(12, 2, generator=generator)).Q.T  # two orthonormal 12-d patterns
    # Uncorrelated, centred coefficients with variances 9 and 1, so the components are the patterns themselves.
    draws = torch.randn(64, 2, generator=generator)
    coefficients = torch.linalg.qr(draws - draws.mean(0)).Q * torch.tensor([3.0, 1.0])
    weight = coefficients @ basis
    weight = weight + 1e-4 * torch.randn(64, 12, generator=generator)
    result = filter_principal_components(weight.reshape(64, 3, 2, 2), num_components=28)
    assert result.components.shape == (12, 3, 2, 2)  # no more components than dimensions
    found = result.components[:2].reshape(2, 12).double()
    np.testing.assert_allclose((found @ basis.double().T).abs().numpy(), np.eye(2), atol=1e-3)
    assert result.explained_variance_ratio[:2].sum() > 0.999


def save_tiny_model(folder: Path, **overrides) -> Path:
    config = hf_vit.VisionTransformerConfig(**{**TINY, **overrides})
    torch.manual_seed(0)
    hf_vit.VisionTransformerForImageClassification(config).save_pretrained(folder)
    hf_vit.create_image_processor(config).save_pretrained(folder)
    return folder


def assert_not_blank(path: Path) -> None:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100, path
    assert pixels.std() > 20, f"{path.name} looks blank (pixel std {pixels.std():.1f})"


def test_analyze_script_writes_figures_and_numbers(tmp_path, photo, capsys):
    model = save_tiny_model(tmp_path / "model")
    image = tmp_path / "china.jpg"
    photo.save(image)
    args = ["--model", str(model), "--output-dir", str(tmp_path / "out"), "--image", str(image), "--image", str(image)]
    assert load_script("analyze").main(args) == 0
    assert "2 image(s), 2 layers x 4 heads" in capsys.readouterr().out
    out = tmp_path / "out"
    expected = {
        "attention_rollout_0.png",
        "attention_rollout_1.png",
        "mean_attention_distance.png",
        "position_embedding_similarity.png",
        "patch_embedding_filters.png",
        "overview.png",
    }
    assert {path.name for path in out.glob("*.png")} == expected
    for name in expected:
        assert_not_blank(out / name)
    summary = json.loads((out / "analysis.json").read_text())
    assert set(summary["figures"].values()) == expected
    assert summary["grid"] == [4, 4] and summary["token_stride"] == [8, 8] and summary["num_prefix_tokens"] == 1
    rollout = np.asarray(summary["attention_rollout"])
    assert rollout.shape == (2, 4, 4)
    np.testing.assert_allclose(rollout.sum((1, 2)), 1.0, atol=1e-4)
    np.testing.assert_allclose(rollout[0], rollout[1])  # the same image twice
    distance = summary["mean_attention_distance"]
    assert np.asarray(distance["pixels"]).shape == (2, 4) and (distance["layers"], distance["heads"]) == (2, 4)
    assert np.min(distance["pixels"]) > 0 and np.max(distance["pixels"]) <= np.hypot(24, 24)
    assert np.asarray(summary["position_embedding_similarity"]).shape == (4, 4, 4, 4)
    filters = summary["patch_embedding_filters"]
    assert filters["shape"] == [28, 3, 8, 8] and np.asarray(filters["components"]).shape == (28, 3, 8, 8)
    assert len(filters["explained_variance_ratio"]) == 28


def test_analyze_script_on_a_hybrid(tmp_path, photo, capsys):
    # Tokens are ResNet features: stride 4 (stem) x 2 (second stage) x patch 1 = 8 px, a 4x4 grid at 32 px.
    folder = tmp_path / "model"
    config = hf_vit.HybridVisionTransformerConfig(**{**TINY, "patch_size": 1, "resnet_layers": (1, 1)})
    torch.manual_seed(0)
    hf_vit.HybridVisionTransformerForImageClassification(config).save_pretrained(folder)
    hf_vit.create_image_processor(config).save_pretrained(folder)
    image = tmp_path / "china.jpg"
    photo.save(image)
    out = tmp_path / "out"
    assert load_script("analyze").main(["--model", str(folder), "--image", str(image), "--output-dir", str(out)]) == 0
    note = (
        "the patch-embedding filters are not shown for a hybrid model: its projection sees ResNet features, not pixels."
    )
    assert f"note: {note}" in capsys.readouterr().out
    expected = {
        "attention_rollout_0.png",
        "mean_attention_distance.png",
        "position_embedding_similarity.png",
        "overview.png",
    }
    assert {path.name for path in out.glob("*.png")} == expected
    for name in expected:
        assert_not_blank(out / name)
    summary = json.loads((out / "analysis.json").read_text())
    assert summary["model_type"] == "hf_vit_hybrid" and set(summary["figures"].values()) == expected
    assert summary["grid"] == [4, 4] and summary["token_stride"] == [8, 8] and summary["num_prefix_tokens"] == 1
    assert summary["patch_embedding_filters"] == {"skipped": note}
    rollout = np.asarray(summary["attention_rollout"])
    assert rollout.shape == (1, 4, 4)
    np.testing.assert_allclose(rollout.sum(), 1.0, atol=1e-4)
    # The distances are those of the reloaded model's attention on the saved JPEG over the 4x4 grid at 8 px per token.
    script = load_script("analyze")
    model = load_model(str(folder), task="auto")
    processor = load_image_processor(str(folder), model.config)
    assert isinstance(model, hf_vit.HybridVisionTransformerForImageClassification)
    with pytest.raises(ValueError, match="hybrid model: its projection sees ResNet features, not pixels"):
        pixel_filters(model)
    pixels = processor(images=script.load_images([str(image)]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        attentions = model.eval()(pixels, output_attentions=True).attentions
    assert attentions[0].shape == (1, 4, 17, 17)
    np.testing.assert_allclose(
        summary["mean_attention_distance"]["pixels"], mean_attention_distance(attentions, (4, 4), 8, 1), atol=1e-5
    )


def test_analyze_script_on_a_gap_model(tmp_path, photo):
    model = save_tiny_model(tmp_path / "model", classifier="gap")
    image = tmp_path / "china.png"
    photo.resize((80, 60)).save(image)
    assert (
        load_script("analyze").main(
            ["--model", str(model), "--image", str(image), "--output-dir", str(tmp_path / "out")]
        )
        == 0
    )
    summary = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert summary["num_prefix_tokens"] == 0 and summary["classifier"] == "gap"
    assert np.asarray(summary["attention_rollout"]).shape == (1, 4, 4)
    assert_not_blank(tmp_path / "out" / "attention_rollout_0.png")


def test_analyze_script_errors_name_the_problem(tmp_path, capsys):
    script = load_script("analyze")
    assert script.main(["--model", "ViT-Q/3", "--image", "x.jpg", "--output-dir", str(tmp_path)]) == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.jpg").write_text("not an image")
    image = str(tmp_path / "bad.jpg")
    assert script.main(["--model", "ViT-Q/3", "--image", image, "--output-dir", str(tmp_path)]) == 1
    assert "not a readable image" in capsys.readouterr().err
    photo_path = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), "red").save(photo_path)
    assert script.main(["--model", "ViT-Q/3", "--image", str(photo_path), "--output-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "--model 'ViT-Q/3': unknown preset. Available presets: ViT-Ti/16," in error
    with pytest.raises(SystemExit):
        script.main(["--model", "ViT-Ti/16", "--image", str(photo_path), "--output-dir", ".", "--num-components", "0"])
    assert "--num-components must be at least 1, got 0" in capsys.readouterr().err


def test_a_preset_gives_a_random_model_of_its_size():
    model = load_model("vit-ti/16", task="auto")
    processor = load_image_processor("vit-ti/16", model.config)
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 192
    assert processor.size == {"height": 224, "width": 224}
