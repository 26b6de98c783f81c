"""scripts/benchmark.py and benchmarks.benchmarking: report structure in smoke mode, FLOP counts, skipped peers."""

import json
import sys

import pytest
import torch
from conftest import TINY, load_script

import hf_vit
from benchmarks.benchmarking import (
    PeerUnavailable,
    Settings,
    benchmark_config,
    build_timm,
    build_transformers,
    count_flops,
    format_markdown,
    forward_flops,
    run_benchmark,
)
from hf_vit import VisionTransformerConfig
from hf_vit.models.configuration import to_pair


def vit_b16_flops_by_hand() -> int:
    """ViT-B/16 at 224, written out: 196 patches + cls = 197 tokens, width 768, MLP 3072, 12 layers, 1000 classes."""
    patches, tokens, width, mlp = 14 * 14, 197, 768, 3072
    patch_embedding = patches * (3 * 16 * 16) * width
    per_layer = (
        tokens * width * (3 * width)  # q, k and v
        + tokens * tokens * width  # q·k over all heads
        + tokens * tokens * width  # weights·v over all heads
        + tokens * width * width  # output projection
        + tokens * width * mlp  # fc1
        + tokens * mlp * width  # fc2
    )
    head = width * 1000
    macs = patch_embedding + 12 * per_layer + head
    return 2 * macs


def test_vit_b16_forward_flops_match_a_hand_count_and_torch_flop_counter():
    config = hf_vit.create_config("ViT-B/16")
    analytic = sum(forward_flops(config).values())
    assert analytic == vit_b16_flops_by_hand() == 35_127_656_448  # 17.56 GMACs, as timm's table lists
    with torch.device("meta"):  # shapes only: FlopCounterMode needs no real weights or data
        model = hf_vit.create_model("ViT-B/16", attn_implementation="eager")  # sdpa is not counted on CPU
        assert count_flops(model, torch.zeros(1, 3, 224, 224)) == analytic


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"classifier": "gap"},
        {"representation_size": 24},
        {"image_size": (32, 48), "patch_size": (8, 4)},
    ],
)
def test_forward_flops_match_flop_counter_on_variants(overrides):
    config = VisionTransformerConfig(**{**TINY, **overrides})
    model = hf_vit.VisionTransformerForImageClassification._from_config(config, attn_implementation="eager")
    height, width = to_pair(config.image_size)
    assert count_flops(model, torch.zeros(1, 3, height, width)) == sum(forward_flops(config).values())


@pytest.mark.parametrize(("resnet_layers", "patch_size"), [((1, 1), 1), ((), 2)])
def test_hybrid_peers_timm_with_resnet_embedding_and_no_transformers(resnet_layers, patch_size):
    config = hf_vit.HybridVisionTransformerConfig(**{**TINY, "patch_size": patch_size, "resnet_layers": resnet_layers})
    assert config.grid_size == (4, 4)  # 32 px at token stride 8
    with pytest.raises(PeerUnavailable, match="transformers has no ViT-Hybrid"):
        build_transformers(config, "sdpa")
    model = build_timm(config, "eager").eval()  # timm's unfused attention, which FlopCounterMode counts
    pixels = torch.randn(1, 3, 32, 32)
    assert model(pixels).shape == (1, TINY["num_labels"])
    assert model.patch_embed(pixels).shape == (1, 16, TINY["hidden_size"])
    flops = forward_flops(config, embedding=model.patch_embed)
    assert count_flops(model, pixels) == sum(flops.values())


def test_smoke_config_of_a_hybrid_keeps_the_resnet_on_a_2x2_grid():
    config = benchmark_config("R50+ViT-B/16", smoke=True)
    assert (config.resnet_layers, config.patch_size, config.hidden_size) == ([3, 4, 9], 1, 32)
    assert config.token_stride == (16, 16) and config.image_size == [32, 32] and config.grid_size == (2, 2)


def test_hybrid_preset_flops_count_our_resnet():
    config = benchmark_config("R+ViT-Ti/16", smoke=True)
    model = hf_vit.HybridVisionTransformerForImageClassification._from_config(config, attn_implementation="eager")
    height, width = to_pair(config.image_size)
    pixels = torch.zeros(1, 3, height, width)
    flops = forward_flops(config, embedding=model.vit.embeddings.patch_embeddings)
    assert count_flops(model, pixels) == sum(flops.values())


def test_smoke_run_writes_table_and_json(tmp_path, capsys):
    script = load_script("benchmark")
    path = tmp_path / "report.json"
    assert script.main(["--smoke", "--device", "cpu", "--model", "ViT-B/16,vit-s-16", "--json", str(path)]) == 0
    table = capsys.readouterr().out
    report = json.loads(path.read_text())

    assert report["settings"]["smoke"] and report["settings"]["iters"] == 1 and report["settings"]["repeats"] == 1
    assert report["peak_flops"] == max(report["peak_flops_samples"]) > 0
    assert len(report["peak_flops_samples"]) == 1 + 2 * 2  # before the first model, then once per repeat
    assert set(report["environment"]["versions"]) == {"torch", "transformers", "timm"}
    assert [(r["model"], r["mode"]) for r in report["results"]] == [
        ("ViT-B/16 (smoke)", "infer"),
        ("ViT-B/16 (smoke)", "train"),
        ("ViT-S/16 (smoke)", "infer"),
        ("ViT-S/16 (smoke)", "train"),
    ]
    smoke_config = VisionTransformerConfig(**{**TINY, "num_labels": 1000})
    for result in report["results"]:
        assert result["flops_per_image"] == sum(forward_flops(smoke_config).values())
        step = result["flops_per_image"] * (3 if result["mode"] == "train" else 1)
        assert result["flops_per_step_per_image"] == step
        implementations = result["implementations"]
        assert list(implementations) == ["hf_vit", "transformers", "timm"]
        assert len({measured["parameters"] for measured in implementations.values()}) == 1  # the same shapes
        for measured in implementations.values():
            assert len(measured["runs_images_per_s"]) == 1
            assert measured["images_per_s"] == measured["runs_images_per_s"][0] > 0
            assert measured["mfu"] == pytest.approx(measured["images_per_s"] * step / report["peak_flops"])
            assert measured["peak_memory_bytes"] is None  # not measured on CPU unless asked
        ours = implementations["hf_vit"]["images_per_s"]
        for peer in ("transformers", "timm"):
            assert result["ratios"][peer] == {
                "throughput": pytest.approx(ours / implementations[peer]["images_per_s"]),
                "peak_memory": None,
            }
        assert result["skipped"] == {}

    assert "| model | mode | GFLOPs/img | implementation | images/s | ours / peer |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ViT-")]
    assert len(rows) == 12
    assert rows[0].startswith("| ViT-B/16 (smoke) | infer | ")
    assert rows[0].split(" | ")[3:6:2] == ["hf_vit", "–"]  # ours has no ratio to itself


def test_missing_peer_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    report = run_benchmark(["ViT-Ti/16"], Settings(device="cpu", smoke=True, modes=("infer",)))
    (result,) = report["results"]
    assert result["skipped"] == {"timm": "timm is not installed"}
    assert list(result["implementations"]) == ["hf_vit", "transformers"]
    assert list(result["ratios"]) == ["transformers"]
    assert "- ViT-Ti/16 (smoke): timm skipped: timm is not installed." in format_markdown(report)


def test_bad_arguments_are_named(capsys):
    script = load_script("benchmark")
    assert script.main(["--smoke", "--model", "ViT-Q/16"]) == 2
    assert "error: Unknown preset 'ViT-Q/16'. Available presets: ViT-Ti/16" in capsys.readouterr().err
    assert script.main(["--smoke", "--batch-size", "0"]) == 2
    assert "error: batch-size must be at least 1, got 0." in capsys.readouterr().err
    assert script.main(["--smoke", "--implementations", "timm"]) == 2
    assert "error: implementations must include 'hf_vit'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device 'cuda' was asked for but CUDA is not available here."):
        Settings(device="cuda").resolve()


@pytest.mark.slow
def test_cpu_peak_memory_is_measured_in_fresh_processes(tmp_path):
    report = run_benchmark(
        ["ViT-Ti/16"], Settings(device="cpu", smoke=True, modes=("train",), cpu_memory=True, batch_size=64)
    )
    (result,) = report["results"]
    for measured in result["implementations"].values():
        weights = measured["parameters"] * 4
        assert measured["peak_memory_bytes"] > weights  # activations of a batch of 64 on top of the weights
    assert result["ratios"]["timm"]["peak_memory"] > 0
    assert "VmHWM" in result["memory_method"]
