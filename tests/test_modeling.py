"""Behaviour of the ViT models: attention backends, outputs, resolution, training features, errors."""

import inspect

import numpy as np
import pytest
import torch
from conftest import TINY, randomize_head
from transformers.utils import TransformersKwargs
from typing_extensions import Unpack

import hf_vit
from hf_vit import VisionTransformerConfig, VisionTransformerForImageClassification, VisionTransformerModel


def tiny_model(
    attn_implementation: str = "sdpa", seed: int = 0, **overrides
) -> VisionTransformerForImageClassification:
    torch.manual_seed(seed)
    config = VisionTransformerConfig(**{**TINY, **overrides})
    model = VisionTransformerForImageClassification._from_config(config, attn_implementation=attn_implementation)
    return randomize_head(model).eval()


def pixels(batch: int = 2, height: int = 32, width: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_sdpa_is_default_and_matches_eager():
    sdpa = tiny_model()
    assert sdpa.config._attn_implementation == "sdpa"
    eager = tiny_model("eager")
    eager.load_state_dict(sdpa.state_dict())
    x = pixels()
    a, b = sdpa(x, output_hidden_states=True), eager(x, output_hidden_states=True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    for left, right in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(left, right, atol=1e-5, rtol=0)


def test_attention_weights_come_back_under_sdpa():
    sdpa = tiny_model()
    eager = tiny_model("eager")
    eager.load_state_dict(sdpa.state_dict())
    x = pixels()
    out = sdpa(x, output_attentions=True)
    assert sdpa.config._attn_implementation == "sdpa"
    tokens = 1 + (32 // 8) ** 2
    assert len(out.attentions) == TINY["num_hidden_layers"]
    assert out.attentions[0].shape == (2, TINY["num_attention_heads"], tokens, tokens)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, tokens))
    reference = eager(x, output_attentions=True)
    for left, right in zip(out.attentions, reference.attentions, strict=True):
        torch.testing.assert_close(left, right)
    torch.testing.assert_close(out.logits, sdpa(x).logits, atol=1e-5, rtol=0)


def test_hidden_states_are_embeddings_then_each_block():
    model = tiny_model()
    out = model.vit(pixels(), output_hidden_states=True)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    # The last block's output, normalised, is the last hidden state.
    torch.testing.assert_close(model.vit.norm(out.hidden_states[-1]), out.last_hidden_state)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])


def test_return_dict_false_gives_tuples():
    model = tiny_model()
    logits = model(pixels(), return_dict=False)[0]
    torch.testing.assert_close(logits, model(pixels()).logits)


def test_gap_classifier_and_representation_layer():
    model = tiny_model(classifier="gap", representation_size=16)
    out = model.vit(pixels())
    assert out.last_hidden_state.shape == (2, 16, 32)  # no class token
    expected = torch.tanh(model.vit.pre_logits[0](out.last_hidden_state.mean(1)))
    torch.testing.assert_close(out.pooler_output, expected)
    assert model.classifier.in_features == 16


def test_official_initialisation():
    torch.manual_seed(0)
    model = VisionTransformerForImageClassification(VisionTransformerConfig(**TINY))
    assert torch.count_nonzero(model.classifier.weight) == 0 and torch.count_nonzero(model.classifier.bias) == 0
    assert torch.count_nonzero(model.vit.embeddings.cls_token) == 0
    mlp_bias = model.vit.layers[0].mlp.fc1.bias
    assert 0 < mlp_bias.abs().max() < 1e-4
    bound = (6 / (2 * TINY["hidden_size"])) ** 0.5
    assert model.vit.layers[0].attention.qkv.weight.abs().max() <= bound
    assert abs(model.vit.embeddings.position_embeddings.std().item() - 0.02) < 0.005


def test_gradient_checkpointing_gives_the_same_gradients():
    x, labels = pixels(), torch.tensor([1, 3])
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.vit.layers[0].gradient_checkpointing
        model(x, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_compile_fullgraph_matches_eager_mode():
    model = tiny_model()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = pixels()
    torch.testing.assert_close(compiled(x).logits, model(x).logits, atol=1e-5, rtol=0)
    big = pixels(height=48, width=64)
    torch.testing.assert_close(
        compiled(big, interpolate_pos_encoding=True).logits, model(big, interpolate_pos_encoding=True).logits
    )


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    model = tiny_model()
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(pixels()).logits, model(pixels()).logits, atol=1e-4, rtol=1e-4)


def test_single_and_multi_label_losses():
    model = tiny_model()
    x = pixels()
    out = model(x, labels=torch.tensor([0, 4]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 4])))
    multi = tiny_model(problem_type="multi_label_classification")
    targets = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    out = multi(x, labels=targets)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets))


def test_pixel_values_are_cast_to_the_weights_dtype():
    model = tiny_model().to(torch.bfloat16)
    out = model(pixels())
    assert out.logits.dtype == torch.bfloat16
    reference = tiny_model()(pixels()).logits
    torch.testing.assert_close(out.logits.float(), reference, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("method", ["official", "bicubic"])
def test_any_resolution_with_interpolation(method):
    model = tiny_model(pos_embed_interpolation=method)
    out = model.vit(pixels(height=48, width=64), interpolate_pos_encoding=True)
    assert out.last_hidden_state.shape == (2, 1 + 6 * 8, 32)
    # At the training size interpolation is the identity.
    x = pixels()
    torch.testing.assert_close(model(x, interpolate_pos_encoding=True).logits, model(x).logits)


def test_official_resize_matches_scipy_zoom():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    pos = torch.randn(1, 1 + 4 * 4, 6, dtype=torch.float64)
    resized = hf_vit.resize_pos_embed(pos, (4, 4), (7, 5), method="official")
    grid = pos[0, 1:].reshape(4, 4, 6).numpy()
    expected = scipy_ndimage.zoom(grid, (7 / 4, 5 / 4, 1), order=1)
    np.testing.assert_allclose(resized[0, 1:].reshape(7, 5, 6).numpy(), expected, atol=1e-12)
    torch.testing.assert_close(resized[:, :1], pos[:, :1])


def test_bicubic_resize_matches_torch_bicubic():
    pos = torch.randn(1, 16, 6)
    resized = hf_vit.resize_pos_embed(pos, (4, 4), (6, 8), num_prefix_tokens=0, method="bicubic")
    grid = pos.reshape(1, 4, 4, 6).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(6, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resized, expected.permute(0, 2, 3, 1).reshape(1, 48, 6))


def test_size_mismatch_names_both_sizes():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"Input image size \(48x64\) doesn't match model image size \(32x32\)"):
        model(pixels(height=48, width=64))


def test_wrong_channel_count_says_channels():
    model = tiny_model()
    with pytest.raises(ValueError, match="1 channels but the model expects 3 channels"):
        model(torch.randn(1, 1, 32, 32))


def test_size_not_divisible_by_patch():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(36x36\) must be divisible by the token stride \(8x8\)"):
        model(pixels(height=36, width=36), interpolate_pos_encoding=True)


def test_drop_path_is_active_only_in_training():
    model = tiny_model(drop_path_rate=0.5)
    rates = [layer.drop_path.rate for layer in model.vit.layers]
    assert rates == [0.0, 0.5]
    x = pixels()
    torch.testing.assert_close(model(x).logits, model(x).logits)
    model.train()
    torch.manual_seed(0)
    outputs = {tuple(model(x).logits.flatten().tolist()) for _ in range(8)}
    assert len(outputs) > 1


def test_save_and_load_in_process(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    from transformers import AutoModel, AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)  # registered: no remote code needed here
    assert type(reloaded) is VisionTransformerForImageClassification
    torch.testing.assert_close(reloaded(pixels()).logits, model(pixels()).logits)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is VisionTransformerModel


@pytest.mark.parametrize(
    "model_class",
    [
        hf_vit.VisionTransformerModel,
        hf_vit.VisionTransformerForImageClassification,
        hf_vit.VisionTransformerForMaskedPatchPrediction,
        hf_vit.VisionTransformerBackbone,
        hf_vit.HybridVisionTransformerModel,
        hf_vit.HybridVisionTransformerBackbone,
    ],
)
def test_forwards_declare_transformers_kwargs(model_class):
    """`**kwargs: Unpack[TransformersKwargs]` tells transformers' tooling that hidden states and attentions return."""
    for method in ("forward", "forward_intermediates"):
        if hasattr(model_class, method):
            kwargs = inspect.signature(getattr(model_class, method)).parameters["kwargs"]
            assert kwargs.annotation == Unpack[TransformersKwargs], (model_class.__name__, method)
