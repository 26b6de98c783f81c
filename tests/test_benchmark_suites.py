"""scripts/benchmark.py --suite data|gpu|contention: reports of the smoke runs, the corpus, the busy load, errors."""

import io
import json
import time

import psutil
import pytest
import torch
from conftest import load_script
from PIL import Image

from benchmarks import contention, gpu
from benchmarks.data import PIPELINES, build_corpus


def test_corpus_is_real_photos_at_imagenet_size_and_seeded():
    corpus = build_corpus(4, seed=0)
    assert corpus == build_corpus(4, seed=0) and corpus != build_corpus(4, seed=1)
    images = [Image.open(io.BytesIO(data)) for data in corpus]
    assert [image.format for image in images] == ["JPEG"] * 4
    assert [image.size for image in images] == [(500, 375), (500, 375), (500, 375), (375, 500)]
    assert len({image.tobytes() for image in images}) == 4  # four different photos


def test_data_suite_smoke_compares_every_pipeline(tmp_path, capsys):
    path = tmp_path / "data.json"
    assert load_script("benchmark").main(["--suite", "data", "--smoke", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert list(report["results"]) == list(PIPELINES) and report["skipped"] == {}
    assert report["corpus"]["images"] == 4 and report["corpus"]["jpeg_quality"] == 90
    ours = report["results"]["hf_vit"]
    for name, result in report["results"].items():
        assert result["images_per_s"] > 0 and result["images_per_cpu_s"] > 0
        if name != "hf_vit":
            assert result["ratio"] == pytest.approx(ours["images_per_cpu_s"] / result["images_per_cpu_s"])
    assert "| hf_vit | uint8, normalised on the device |" in capsys.readouterr().out


def test_gpu_suite_smoke_runs_every_section(tmp_path, capsys):
    json_path, markdown_path = tmp_path / "gpu.json", tmp_path / "gpu.md"
    argv = ["--suite", "gpu", "--smoke", "--json", str(json_path), "--markdown", str(markdown_path)]
    assert load_script("benchmark").main(argv) == 0
    report = json.loads(json_path.read_text())
    names = [section["name"] for section in report["sections"]]
    expected = ["bf16 against fp32 (hf_vit)", "data pipeline, device side", "eager, sdpa"]
    if gpu.flash_attention_available():
        expected.append("eager, flash_attention_2")
    else:
        assert "flash_attention_2: flash-attn is not installed" in report["skipped"]
    assert names == [*expected, "torch.compile, sdpa: ViT-B/16", "torch.compile, sdpa: R+ViT-Ti/16"]
    sections = {section["name"]: section["report"] for section in report["sections"]}
    for preset in ("ViT-B/16", "R+ViT-Ti/16"):
        check = sections["bf16 against fp32 (hf_vit)"][preset]
        assert check["passed"] and check["relative_l2_error"] <= gpu.BF16_TOLERANCE
    assert len(sections["data pipeline, device side"]["results"]) == 3
    eager = sections["eager, sdpa"]
    assert eager["settings"]["dtype"] == "bf16" and not eager["settings"]["compile"]
    assert [(r["model"], r["mode"]) for r in eager["results"]] == [
        ("ViT-B/16 (smoke)", "infer"),
        ("ViT-B/16 (smoke)", "train"),
        ("R+ViT-Ti/16 (smoke)", "infer"),
        ("R+ViT-Ti/16 (smoke)", "train"),
    ]
    assert list(eager["results"][0]["implementations"]) == ["hf_vit", "transformers", "timm"]
    assert all(measured["mfu"] > 0 for r in eager["results"] for measured in r["implementations"].values())
    compiled = sections["torch.compile, sdpa: ViT-B/16"]
    assert compiled["settings"]["compile"] and compiled["settings"]["compile_backend"] == "eager"
    markdown = markdown_path.read_text()
    assert markdown == capsys.readouterr().out
    assert "### eager, sdpa" in markdown and "| ViT-B/16 | 0.0" in markdown


def test_gpu_suite_starts_no_section_past_its_budget_and_needs_cuda():
    report = gpu.run_gpu_suite(gpu.GpuSettings(smoke=True, budget_s=-1.0))
    assert report["sections"] == []
    assert "bf16 against fp32 (hf_vit): not started, 0 s were spent of the -1 s budget" in report["skipped"]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="the GPU suite needs CUDA; --smoke runs it on the CPU"):
            gpu.GpuSettings().resolve()


def test_contention_loads_every_core_while_the_job_runs_and_stops_the_load():
    me = psutil.Process()
    seen = []

    def job(policy: str, steps: int, cores: int) -> dict:
        spinners = [child for child in me.children() if child.status() != psutil.STATUS_ZOMBIE]
        seen.append((policy, len(spinners)))
        slow = {"before": 8.0, "after": 2.5}[policy] if spinners else 1.0
        return {"seconds_per_step": slow * (1 if policy == "after" else 0.9), "threads_at_end": 1, "data_wait_share": 0}

    settings = contention.ContentionSettings(smoke=True, busy_processes=2)
    report = contention.run_contention(settings, run_job=job)
    assert sorted(seen) == [("after", 0), ("after", 2), ("before", 0), ("before", 2)]
    assert report["fair_share_slowdown"] == (report["environment"]["cores"] + 2) / report["environment"]["cores"]
    assert report["slowdown"] == {"before": pytest.approx(8.0), "after": pytest.approx(2.5)}
    assert "| follow the load (after, default) | 1.000 | 2.500 | 2.5x | 1, 1 |" in contention.format_markdown(report)
    deadline = time.monotonic() + 10
    while [c for c in me.children() if c.status() != psutil.STATUS_ZOMBIE] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in me.children() if c.status() != psutil.STATUS_ZOMBIE]


def test_busy_load_stops_by_itself():
    with contention.busy_load(1, seconds=0.5) as (spinner,):
        assert spinner.wait(timeout=30) == 0  # ended on its own, before the context closed it


def test_bad_suite_arguments_are_named(capsys):
    script = load_script("benchmark")
    assert script.main(["--suite", "data", "--smoke", "--pipelines", "timm"]) == 2
    assert "error: pipelines must include 'hf_vit'" in capsys.readouterr().err
    assert script.main(["--suite", "contention", "--steps", "0"]) == 2
    assert "error: steps must be at least 1, got 0." in capsys.readouterr().err
