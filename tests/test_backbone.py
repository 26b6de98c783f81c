"""Backbones on transformers' contract, inside its UperNet and DPT: forward, backward, save/load, checkpointing."""

import pytest
import torch
from conftest import TINY
from transformers import AutoBackbone, DPTConfig, DPTForDepthEstimation, UperNetConfig, UperNetForSemanticSegmentation

import hf_vit

DEEP = {**TINY, "num_hidden_layers": 4}
HYBRID = {**DEEP, "image_size": 64, "patch_size": 1, "resnet_layers": (1, 1)}


def as_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    batch, _, hidden = tokens.shape
    return tokens.reshape(batch, grid[0], grid[1], hidden).permute(0, 3, 1, 2)


def count_block_calls(encoder: torch.nn.Module) -> list[int]:
    """A list that counts how often each encoder block runs from now on, recomputations under checkpointing included.

    A recomputation re-runs the block's `forward` without its hooks and stops once the MLP has saved what backward
    needs, so the count is taken when the MLP starts.
    """
    calls = [0] * len(encoder.layers)
    for number, layer in enumerate(encoder.layers):
        layer.mlp.register_forward_pre_hook(lambda *_, number=number: calls.__setitem__(number, calls[number] + 1))
    return calls


def test_vit_backbone_returns_the_normed_stages_as_maps_or_as_sequences_for_dpt():
    config = hf_vit.VisionTransformerConfig(**DEEP, out_features=["stem", "stage2", "stage4"])
    torch.manual_seed(0)
    backbone = AutoBackbone.from_config(config).eval()
    assert type(backbone) is hf_vit.VisionTransformerBackbone
    assert backbone.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert backbone.out_indices == [0, 2, 4] and backbone.channels == [32, 32, 32]
    x = torch.randn(2, 3, 32, 48)  # not the configured 32×32: backbones resize the position embeddings
    with torch.no_grad():
        maps = backbone(x).feature_maps
        states = backbone.vit(x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        backbone.config.reshape_hidden_states = False
        sequences = backbone(x).feature_maps
        backbone.config.apply_layernorm = False
        raw = backbone(x).feature_maps
    normed = [backbone.vit.norm(states[index]) for index in (0, 2, 4)]
    assert all(torch.equal(m, as_map(n[:, 1:], (4, 6))) for m, n in zip(maps, normed, strict=True))
    assert all(torch.equal(s, n) for s, n in zip(sequences, normed, strict=True)), "class token first, for DPT"
    assert all(torch.equal(r, states[index]) for r, index in zip(raw, (0, 2, 4), strict=True))
    with pytest.raises(ValueError, match=r"out_features must be a subset of stage_names: \['stem', 'stage1', 'stage2'"):
        hf_vit.VisionTransformerConfig(**TINY, out_features=["stage3"])


def test_hybrid_backbone_stages_start_with_the_resnet_and_stop_where_asked():
    config = hf_vit.HybridVisionTransformerConfig(**HYBRID, out_features=["resnet_stem", "resnet_stage2", "stage1"])
    torch.manual_seed(0)
    backbone = AutoBackbone.from_config(config).eval()
    assert type(backbone) is hf_vit.HybridVisionTransformerBackbone
    assert backbone.stage_names == ["resnet_stem", "resnet_stage1", "resnet_stage2", "stem"] + [
        f"stage{i}" for i in range(1, 5)
    ]
    assert backbone.channels == [64, 512, 32]
    calls = count_block_calls(backbone.vit)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = backbone(x).feature_maps
        assert calls == [1, 0, 0, 0]
        full = backbone.vit(x, output_hidden_states=True)
        backbone.out_features = ["resnet_stage1", "resnet_stage2"]
        resnet_only = backbone(x).feature_maps
        assert calls == [2, 1, 1, 1], "with ResNet stages only, no block runs"
    assert [m.shape for m in maps] == [(2, 64, 16, 16), (2, 512, 8, 8), (2, 32, 8, 8)]
    assert torch.equal(maps[0], full.backbone_hidden_states[0]) and torch.equal(maps[1], full.backbone_hidden_states[2])
    assert torch.equal(maps[2], as_map(backbone.vit.norm(full.hidden_states[1])[:, 1:], (8, 8)))
    assert [m.shape for m in resnet_only] == [(2, 256, 16, 16), (2, 512, 8, 8)]


def test_backbone_loads_a_classifier_folder_and_round_trips(tmp_path):
    torch.manual_seed(0)
    classifier = hf_vit.VisionTransformerForImageClassification(hf_vit.VisionTransformerConfig(**DEEP))
    classifier.save_pretrained(tmp_path / "classifier")
    # transformers 5.24's AutoBackbone.from_pretrained asks the Hub whether a path is a repo, so local folders take
    # the class itself (with hf_vit) or a repo id (see test_auto_classes.py).
    backbone = hf_vit.VisionTransformerBackbone.from_pretrained(tmp_path / "classifier", out_indices=[2, -1]).eval()
    encoder = classifier.vit.state_dict()
    assert all(torch.equal(value, encoder[key]) for key, value in backbone.vit.state_dict().items())
    backbone.save_pretrained(tmp_path / "backbone")
    again = hf_vit.VisionTransformerBackbone.from_pretrained(tmp_path / "backbone").eval()
    assert again.out_features == ["stage2", "stage4"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(again(x).feature_maps, backbone(x).feature_maps, strict=True))


def train_step(model: torch.nn.Module, loss_of) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = loss_of(model)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def check_trains_checkpoints_and_round_trips(model, x, loss_of, tmp_path) -> None:
    """`loss_of(model)` backpropagates into the blocks; checkpointing recomputes them with the same gradients;
    `save_pretrained`/`from_pretrained` gives identical outputs on `x`.

    UperNet does not support checkpointing itself (transformers 5.24 raises), so it is turned on in its backbone.
    """
    encoder = model.backbone.vit if model.backbone is not None else model.dpt.embeddings.backbone.vit
    model.train()
    loss, grads = train_step(model, loss_of)
    for name in ("layers.0.attention.qkv.weight", "layers.1.mlp.fc2.weight"):
        assert encoder.get_parameter(name).grad.abs().sum() > 0, name
    calls = count_block_calls(encoder)
    owner = model if model.supports_gradient_checkpointing else model.backbone
    owner.activation_checkpointing_enable()
    checkpointed_loss, checkpointed_grads = train_step(model, loss_of)
    ran = [count for count in calls if count]
    assert ran and all(count == 2 for count in ran), f"blocks run once forward and once in backward, got {calls}"
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, msg=name)
    owner.activation_checkpointing_disable()
    model.eval()
    model.save_pretrained(tmp_path / "dense")
    again = type(model).from_pretrained(tmp_path / "dense").eval()
    backbone, loaded_backbone = (m.backbone or m.dpt.embeddings.backbone for m in (model, again))
    with torch.no_grad():
        maps = backbone(x).feature_maps
        assert all(torch.equal(a, b) for a, b in zip(loaded_backbone(x).feature_maps, maps, strict=True))
        first, second = model(x), again(x)
    # The heads' convolutions differ in the last bits (about 2e-9 with one thread) when their weights come from the
    # file rather than from memory: identical after cloning the loaded weights, so it is kernel dispatch, not values.
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(second[key], value, rtol=0, atol=1e-7, msg=key)


@pytest.mark.parametrize(
    "backbone_config",
    [
        hf_vit.VisionTransformerConfig(**DEEP, out_indices=[1, 2, 3, 4]),
        hf_vit.HybridVisionTransformerConfig(
            **HYBRID, out_features=["resnet_stage1", "resnet_stage2", "stage2", "stage4"]
        ),
    ],
    ids=["vit", "hybrid"],
)
def test_upernet_on_our_backbones(backbone_config, tmp_path):
    config = UperNetConfig(
        backbone_config=backbone_config, hidden_size=16, auxiliary_channels=8, num_labels=3, pool_scales=[1, 2]
    )
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config)
    assert isinstance(model.backbone, hf_vit.VisionTransformerBackbone)
    size = backbone_config.image_size
    x = torch.randn(2, 3, size, size)
    labels = torch.randint(0, 3, (2, size, size))
    assert model(x).logits.shape == (2, 3, size, size)
    check_trains_checkpoints_and_round_trips(model, x, lambda model: model(x, labels=labels).loss, tmp_path)


def test_upernet_starts_from_a_saved_model_as_the_readme_shows(tmp_path):
    torch.manual_seed(0)
    hf_vit.VisionTransformerForImageClassification(hf_vit.VisionTransformerConfig(**DEEP)).save_pretrained(tmp_path)
    backbone = hf_vit.VisionTransformerBackbone.from_pretrained(tmp_path, out_indices=[1, 2, 3, 4]).eval()
    config = UperNetConfig(
        backbone_config=backbone.config, hidden_size=16, auxiliary_channels=8, num_labels=3, pool_scales=[1, 2]
    )
    model = UperNetForSemanticSegmentation(config).eval()
    model.backbone.load_state_dict(backbone.state_dict())
    model.backbone.gradient_checkpointing_enable()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pairs = zip(model.backbone(x).feature_maps, backbone(x).feature_maps, strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)


def test_dpt_depth_estimation_on_the_vit_backbone(tmp_path):
    backbone_config = hf_vit.VisionTransformerConfig(**DEEP, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DPTConfig(backbone_config=backbone_config, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)
    torch.manual_seed(0)
    model = DPTForDepthEstimation(config)
    assert isinstance(model.backbone, hf_vit.VisionTransformerBackbone)
    x = torch.randn(2, 3, 32, 32)
    target = torch.rand(2, 64, 64)  # DPT's head upsamples the finest (4×) map twice more
    check_trains_checkpoints_and_round_trips(
        model, x, lambda model: torch.nn.functional.mse_loss(model(x).predicted_depth, target), tmp_path
    )


def test_dpt_hybrid_mode_runs_on_our_resnet(tmp_path):
    """DPT-Hybrid puts its own ViT on the first three stages of a ResNet backbone: here the hybrid's ResNet."""
    resnet = hf_vit.HybridVisionTransformerConfig(
        **{**HYBRID, "resnet_layers": (1, 1, 1)}, out_features=["resnet_stage1", "resnet_stage2", "resnet_stage3"]
    )
    config = DPTConfig(
        is_hybrid=True,
        backbone_config=resnet,
        backbone_featmap_shape=[1, 1024, 4, 4],
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[256, 512, 32, 32],
        fusion_hidden_size=16,
    )
    torch.manual_seed(0)
    model = DPTForDepthEstimation(config).train()
    assert isinstance(model.dpt.embeddings.backbone, hf_vit.HybridVisionTransformerBackbone)
    calls = count_block_calls(model.dpt.embeddings.backbone.vit)
    depth = model(torch.randn(2, 3, 64, 64)).predicted_depth
    depth.mean().backward()
    assert depth.shape == (2, 64, 64) and calls == [0, 0, 0, 0], "only our ResNet runs"
    stem = model.dpt.embeddings.backbone.vit.embeddings.patch_embeddings.backbone.stem.conv.weight
    assert stem.grad.abs().sum() > 0


def test_dpt_reads_the_patch_size_as_pixels_per_token_so_it_refuses_the_hybrid():
    """DPT reshapes the tokens to (height // patch_size, width // patch_size); the hybrid's patch_size counts ResNet
    cells (1 here, with 8 pixels per token), so the 8×8 token grid of a 64 px image is taken for 64×64."""
    backbone_config = hf_vit.HybridVisionTransformerConfig(
        **HYBRID, out_indices=[4, 5, 6, 7], reshape_hidden_states=False
    )
    model = DPTForDepthEstimation(DPTConfig(backbone_config=backbone_config, neck_hidden_sizes=[8, 16, 32, 32]))
    with pytest.raises(RuntimeError, match=r"shape '\[2, 64, 64, 32\]' is invalid for input of size 4096"):
        model(torch.randn(2, 3, 64, 64))
