"""Intermediate features (`forward_intermediates`): equal to the hidden states, run only as deep as asked."""

import pytest
import torch
from conftest import TINY

import hf_vit

DEEP = {**TINY, "num_hidden_layers": 4}


def vit(**overrides) -> hf_vit.VisionTransformerModel:
    torch.manual_seed(0)
    return hf_vit.VisionTransformerModel(hf_vit.VisionTransformerConfig(**{**DEEP, **overrides})).eval()


def hybrid(resnet_layers: tuple[int, ...]) -> hf_vit.HybridVisionTransformerModel:
    torch.manual_seed(0)
    fields = {**DEEP, "image_size": 64, "patch_size": 1, "resnet_layers": resnet_layers}
    config = hf_vit.HybridVisionTransformerConfig(**fields)
    return hf_vit.HybridVisionTransformerModel(config).eval()


def as_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens (batch, height * width, hidden) as a (batch, hidden, height, width) map, written out by hand."""
    batch, _, hidden = tokens.shape
    return tokens.reshape(batch, grid[0], grid[1], hidden).permute(0, 3, 1, 2)


def test_features_equal_the_hidden_states_of_a_full_forward():
    model = vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x, output_hidden_states=True)
        every = model.forward_intermediates(x, output_fmt="NLC", return_prefix_tokens=True)
        chosen = model.forward_intermediates(x, [3, 0, -1, 1])
        normed = model.forward_intermediates(x, [-1], norm=True, output_fmt="NLC", return_prefix_tokens=True)
        last_two = model.forward_intermediates(x, 2, output_fmt="NLC")
    assert len(every.features) == 4 and len(full.hidden_states) == 5
    for block, (prefix, tokens) in enumerate(zip(every.prefix_tokens, every.features, strict=True), start=1):
        assert torch.equal(torch.cat([prefix, tokens], dim=1), full.hidden_states[block])
    for index, feature in zip([3, 0, -1, 1], chosen.features, strict=True):
        assert torch.equal(feature, as_map(full.hidden_states[index][:, 1:], (4, 4)))
    assert chosen.prefix_tokens is None
    assert torch.equal(torch.cat([normed.prefix_tokens[0], normed.features[0]], dim=1), full.last_hidden_state)
    assert all(torch.equal(f, h[:, 1:]) for f, h in zip(last_two.features, full.hidden_states[3:], strict=True))


def test_an_early_layer_runs_fewer_blocks():
    model = vit()
    calls = [0] * len(model.layers)
    for number, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda *_, number=number: calls.__setitem__(number, calls[number] + 1))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.forward_intermediates(x, [1])
        assert calls == [1, 0, 0, 0]
        model.forward_intermediates(x, [2, -3])  # -3 is block 2
        assert calls == [2, 1, 0, 0]
        model.forward_intermediates(x, [0])  # the embedded tokens: no block at all
        assert calls == [2, 1, 0, 0]
        captured = model.forward_intermediates(x, [-2], output_hidden_states=True, output_attentions=True)
        assert calls == [3, 2, 1, 0]
        model(x)
        assert calls == [4, 3, 2, 1]
    assert len(captured.hidden_states) == 4 and len(captured.attentions) == 3  # of the blocks that ran


def test_shapes_for_non_square_inputs_and_global_average_pooling():
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        token = vit().forward_intermediates(x, [-1], return_prefix_tokens=True, interpolate_pos_encoding=True)
        gap = vit(classifier="gap")
        pooled = gap.forward_intermediates(x, [-1], return_prefix_tokens=True, interpolate_pos_encoding=True)
        full = gap(x, output_hidden_states=True, interpolate_pos_encoding=True)
    assert token.features[0].shape == (2, 32, 4, 6) and token.prefix_tokens[0].shape == (2, 1, 32)
    assert pooled.features[0].shape == (2, 32, 4, 6) and pooled.prefix_tokens[0].shape == (2, 0, 32)
    assert torch.equal(pooled.features[0], as_map(full.hidden_states[-1], (4, 6)))


@pytest.mark.parametrize(
    ("resnet_layers", "grid", "maps"),
    [
        ((1, 1, 1), (4, 6), [(64, 16, 24), (256, 16, 24), (512, 8, 12), (1024, 4, 6)]),
        ((1, 1, 1, 1), (2, 3), [(64, 16, 24), (256, 16, 24), (512, 8, 12), (1024, 4, 6), (2048, 2, 3)]),
    ],
    ids=["stride16", "stride32"],
)
def test_hybrid_features_and_resnet_maps_at_strides_16_and_32(resnet_layers, grid, maps):
    model = hybrid(resnet_layers)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        full = model(x, output_hidden_states=True, interpolate_pos_encoding=True)
        out = model.forward_intermediates(x, [1, -1], resnet_indices=[0, -1, 1], interpolate_pos_encoding=True)
    assert [f.shape for f in out.features] == [(2, 32, *grid)] * 2
    assert torch.equal(out.features[1], as_map(full.hidden_states[-1][:, 1:], grid))
    resnet = full.backbone_hidden_states
    assert [tuple(m.shape[1:]) for m in resnet] == maps
    expected = [resnet[0], resnet[-1], resnet[1]]
    assert all(torch.equal(a, b) for a, b in zip(out.resnet_features, expected, strict=True))
    assert out.backbone_hidden_states is None, "only the chosen maps unless all were asked for"


def test_the_hybrid_returns_resnet_maps_alone():
    model = hybrid((1, 1))
    with torch.no_grad():
        out = model.forward_intermediates(torch.randn(1, 3, 64, 64), [], resnet_indices=2)
    assert out.features == () and [m.shape for m in out.resnet_features] == [(1, 256, 16, 16), (1, 512, 8, 8)]


def test_bad_requests_name_the_problem():
    model = vit()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"output_fmt must be one of \('NCHW', 'NLC'\), got 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match=r"indices has 5, out of range for 5 positions \(-5 to 4\)"):
        model.forward_intermediates(x, [1, 5])
    with pytest.raises(ValueError, match=r"indices=0 takes the last 0 of 4: use 1 to 4"):
        model.forward_intermediates(x, 0)
    with pytest.raises(ValueError, match=r"resnet_indices has -4, out of range for 3 positions"):
        hybrid((1, 1)).forward_intermediates(torch.randn(1, 3, 64, 64), resnet_indices=[-4])
