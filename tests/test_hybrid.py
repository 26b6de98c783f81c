"""The ResNet+ViT hybrid: official sizes, the BiT backbone against timm, resolution, checkpointing, remote code."""

import copy

import numpy as np
import pytest
import torch
from conftest import TINY, randomize_head, run_without_hf_vit
from transformers import AutoModel, AutoModelForImageClassification

import hf_vit
from hf_vit.models.resnet import BottleneckUnit, ResNetBackbone, pad_same

# Official parameter counts (vit-facts.md).
OFFICIAL = {
    "R50+ViT-B/16": 98_659_112,
    "R26+ViT-B/32": 101_383_976,
    "R26+ViT-S/32": 36_431_912,
    "R50+ViT-L/32": 328_994_856,
    "R+ViT-Ti/16": 6_337_704,
}
TINY_HYBRID = {**TINY, "patch_size": 1, "resnet_layers": (1, 1)}


def tiny_hybrid(seed: int = 0, **overrides) -> hf_vit.HybridVisionTransformerForImageClassification:
    """A tiny hybrid whose zero-initialised norms and head are randomised, so every weight shows in the output."""
    torch.manual_seed(seed)
    model = hf_vit.HybridVisionTransformerForImageClassification(
        hf_vit.HybridVisionTransformerConfig(**{**TINY_HYBRID, **overrides})
    )
    with torch.no_grad():
        for unit in model.modules():
            if isinstance(unit, BottleneckUnit):
                unit.norm3.weight.normal_(1.0, 0.2)
    return randomize_head(model).eval()


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_preset_parameter_counts_are_official(name):
    with torch.device("meta"):
        model = hf_vit.create_model(name)
    assert isinstance(model, hf_vit.HybridVisionTransformerForImageClassification)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL[name]


def test_r50_vit_b16_makes_197_tokens_of_width_768():
    with torch.device("meta"):
        model = AutoModel.from_config(hf_vit.create_config("R50+ViT-B/16"))
        out = model(torch.empty(1, 3, 224, 224), output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 197, 768)
    assert [tuple(h.shape) for h in out.backbone_hidden_states] == [
        (1, 64, 56, 56),
        (1, 256, 56, 56),
        (1, 512, 28, 28),
        (1, 1024, 14, 14),
    ]
    assert len(out.hidden_states) == 13


def test_config_checks_the_resnet_fields():
    with pytest.raises(ValueError, match="resnet_layers must hold positive unit counts"):
        hf_vit.HybridVisionTransformerConfig(**{**TINY_HYBRID, "resnet_layers": (2, 0)})
    with pytest.raises(ValueError, match="resnet_width_factor must be a positive integer"):
        hf_vit.HybridVisionTransformerConfig(**{**TINY_HYBRID, "resnet_width_factor": 0})
    with pytest.raises(ValueError, match=r"image_size \(36x36\) must be divisible by the token stride \(8x8"):
        hf_vit.HybridVisionTransformerConfig(**{**TINY_HYBRID, "image_size": 36})
    config = hf_vit.HybridVisionTransformerConfig(**{**TINY_HYBRID, "resnet_layers": ()})
    assert config.token_stride == (4, 4) and config.resnet_channels == 64


def test_initialisation_is_official():
    model = hf_vit.HybridVisionTransformerForImageClassification(hf_vit.HybridVisionTransformerConfig(**TINY_HYBRID))
    backbone = model.vit.embeddings.patch_embeddings.backbone
    units = [m for m in backbone.modules() if isinstance(m, BottleneckUnit)]
    assert len(units) == 2
    for unit in units:
        assert torch.all(unit.norm3.weight == 0) and torch.all(unit.norm1.weight == 1)
        assert unit.conv1.weight.std() > 0
    assert torch.all(model.classifier.weight == 0)


def test_pad_same_matches_tensorflow():
    # TF SAME: output ceil(n / s); total padding (out - 1) * s + k - n, the odd pixel after.
    odd = pad_same(torch.ones(1, 1, 7, 8), kernel=3, stride=2)
    assert odd.shape[-2:] == (9, 9)  # height: 2 = one each side; width: 1 = after only
    assert odd[0, 0, :, 0].sum() == 7 and odd[0, 0, :, -1].sum() == 0
    assert odd[0, 0, 0].sum() == 0 and odd[0, 0, -1].sum() == 0
    assert pad_same(torch.ones(1, 1, 224, 224), 7, 2)[0, 0, 2:-3, 2:-3].all()  # 2 before, 3 after
    assert pad_same(torch.ones(1, 1, 224, 224), 7, 2).shape[-2:] == (229, 229)
    assert pad_same(torch.zeros(1, 1, 56, 56), 3, 2, value=-1.0)[0, 0, -1].eq(-1).all()


def test_backbone_matches_timm_resnetv2():
    pytest.importorskip("timm")
    from functools import partial

    from timm.layers import GroupNormAct, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2

    config = hf_vit.HybridVisionTransformerConfig(**{**TINY_HYBRID, "resnet_layers": (2, 1, 1)})
    torch.manual_seed(0)
    ours = ResNetBackbone(config).eval()
    with torch.no_grad():
        for name, param in ours.named_parameters():
            param.copy_(torch.randn_like(param) * (1.0 if "conv" in name else 0.3) + (1.0 if "norm" in name else 0))
    reference = ResNetV2(
        layers=(2, 1, 1),
        num_classes=0,
        global_pool="",
        preact=False,
        stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=32, eps=1e-6),
    ).eval()
    state = {}
    for name, value in ours.state_dict().items():
        parts = name.split(".")
        if parts[0] == "stages":
            parts.insert(2, "blocks")
        state[".".join(parts)] = value
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all(not k.startswith(("stem", "stages")) for k in missing), (missing, unexpected)
    # Odd sizes exercise the asymmetric SAME padding of the strided convolutions and the max-pool.
    x = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        expected = reference.forward_features(x)
        actual = ours(x)
    assert actual.shape == expected.shape == (2, 1024, 5, 3)
    # timm standardises with sqrt(var + 1e-8), the official code with std + 1e-5: equal to ~1e-5 relative.
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_runs_at_96x128_with_interpolation_and_refuses_without():
    model = tiny_hybrid()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = model(x, interpolate_pos_encoding=True, output_hidden_states=True)
    assert out.logits.shape == (2, 5)
    assert out.hidden_states[-1].shape == (2, 1 + 12 * 16, 32)
    with pytest.raises(ValueError, match=r"Input image size \(96x128\) doesn't match model image size \(32x32\)"):
        model(x)
    with pytest.raises(ValueError, match=r"must be divisible by the token stride \(8x8\)"):
        model(torch.randn(1, 3, 36, 40), interpolate_pos_encoding=True)


def test_gradient_checkpointing_covers_the_backbone_and_keeps_gradients():
    x, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 4])

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_hybrid(seed=1).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            units = [m for m in model.modules() if isinstance(m, BottleneckUnit)]
            assert units and all(unit.gradient_checkpointing for unit in units)
        model(x, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    assert plain["vit.embeddings.patch_embeddings.backbone.stem.conv.weight"].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_channels_last_is_honoured():
    model = tiny_hybrid()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).logits
        model = model.to(memory_format=torch.channels_last)
        out = model.vit(x.to(memory_format=torch.channels_last), output_hidden_states=True)
        logits = model.classifier(out.pooler_output)
    assert all(h.is_contiguous(memory_format=torch.channels_last) for h in out.backbone_hidden_states[1:])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_sdpa_and_eager_agree_and_attentions_come_back():
    model = tiny_hybrid()
    x = torch.randn(2, 3, 32, 32)
    eager = AutoModelForImageClassification.from_config(copy.deepcopy(model.config), attn_implementation="eager")
    eager.eval().load_state_dict(model.state_dict())
    assert model.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    with torch.no_grad():
        out = model(x, output_attentions=True)
        torch.testing.assert_close(eager(x).logits, out.logits, rtol=1e-5, atol=1e-5)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 17, 17)


def test_masked_patch_prediction_runs_on_the_hybrid():
    torch.manual_seed(0)
    config = hf_vit.HybridVisionTransformerConfig(**TINY_HYBRID)
    model = hf_vit.HybridVisionTransformerForMaskedPatchPrediction(config)
    assert isinstance(model.vit, hf_vit.HybridVisionTransformerModel) and model.vit.embeddings.mask_token is not None
    out = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.logits.shape == (2, 16, 512) and torch.isfinite(out.loss)
    out.loss.backward()


def test_task_models_return_the_resnet_maps_as_the_encoder_does():
    classifier = tiny_hybrid()
    masked = hf_vit.HybridVisionTransformerForMaskedPatchPrediction(classifier.config)
    masked.vit.load_state_dict(classifier.vit.state_dict(), strict=False)  # all but the mask token
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        encoder = classifier.vit(x, output_hidden_states=True).backbone_hidden_states
        classified = classifier(x, output_hidden_states=True)
        corrupted = masked(x, output_hidden_states=True)
        quiet = classifier(x)
    assert type(classified).__name__ == "HybridImageClassifierOutput" and quiet.backbone_hidden_states is None
    assert len(encoder) == 3
    assert all(torch.equal(a, b) for a, b in zip(classified.backbone_hidden_states, encoder, strict=True))
    # The ResNet sees the clean image: corruption replaces token embeddings after it.
    assert all(torch.equal(a, b) for a, b in zip(corrupted.backbone_hidden_states, encoder, strict=True))


def test_tiny_hybrid_round_trips_through_remote_code(tmp_path):
    folder = tmp_path / "hybrid"
    model = tiny_hybrid(seed=2)
    model.save_pretrained(folder)
    hf_vit.create_image_processor(model.config).save_pretrained(folder)
    names = {p.name for p in folder.iterdir()}
    assert {"modeling_hybrid.py", "modeling.py", "resnet.py", "configuration.py", "model.safetensors"} <= names
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    np.save(tmp_path / "x.npy", x.numpy())
    result = run_without_hf_vit(
        f"""
        import json, numpy as np, torch
        from transformers import AutoConfig, AutoModelForImageClassification
        config = AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
        model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}))).logits
        np.save({str(tmp_path / "remote.npy")!r}, logits.numpy())
        print(json.dumps({{"model_type": config.model_type, "class": type(model).__name__,
                           "module": type(model).__module__, "layers": config.resnet_layers}}))
        """,
        cwd=tmp_path,
    )
    assert result["model_type"] == "hf_vit_hybrid" and "hf_vit" not in result["module"]
    assert result["class"] == "HybridVisionTransformerForImageClassification" and result["layers"] == [1, 1]
    with torch.no_grad():
        expected = model(x).logits.numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), expected)
    reloaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(x).logits.numpy(), expected)
