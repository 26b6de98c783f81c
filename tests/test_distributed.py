"""Data parallelism with real processes (gloo on the CPU): sharding, equivalence with one process, checkpoints and
resume across ranks, evaluation over all ranks, crash recovery. Every run asserts its world size from inside."""

import json
import shutil

import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES, TINY_RUN, launch, load_script, run_script, run_without_hf_vit
from safetensors.torch import load_file

TINY = [*TINY_RUN, "--logging-every", "1"]
DROPOUT = TINY_OVERRIDES + ",hidden_dropout_prob=0.1,drop_path_rate=0.1"


def pretrain(processes: int, *args: str, check: bool = True, script: str = "pretrain"):
    launcher = launch(processes) if processes > 1 else None
    return run_script(script, *args, launcher=launcher, check=check)


def results(folder) -> dict:
    return json.loads((folder / "all_results.json").read_text())


def assert_same_weights(left, right, atol: float = 0.0) -> None:
    first, second = load_file(left / "model.safetensors"), load_file(right / "model.safetensors")
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0 if atol == 0 else 1e-4, atol=atol, msg=name)


def test_two_processes_get_disjoint_shards_of_the_one_process_batches(digits_folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    probe = str(ROOT / "tests" / "probes" / "data_shards.py")
    run_script(probe, str(digits_folder), "16", str(one))
    run_script(probe, str(digits_folder), "8", str(two), launcher=launch(2))
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert single["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    steps = min(len(ranks[0]["steps"]), len(ranks[1]["steps"]))
    assert steps >= 2 * 6  # two epochs of 108 training images in batches of 2 x 8
    for step in range(6):  # the first epoch: each global batch split between the ranks, nothing seen twice
        first, second = ranks[0]["steps"][step], ranks[1]["steps"][step]
        assert len(first) == len(second) == 8 and not set(first) & set(second)
        assert sorted(first + second) == sorted(single["steps"][step])


def test_two_processes_step_like_one_process_with_the_whole_batch(digits_folder, tmp_path):
    """2 x 8 (and 2 x 4 x 2 accumulated) give the weights of 1 x 16 after several AdamW updates; evaluation over
    both ranks counts each of the 12 held-out images once and equals one process's."""
    common = [*TINY, "--dataset", str(digits_folder), "--max-steps", "4", "--warmup-steps", "0"]
    one, two, accumulated = tmp_path / "one", tmp_path / "two", tmp_path / "accumulated"
    pretrain(1, *common, "--per-device-batch-size", "16", "--output-dir", str(one))
    run = pretrain(2, *common, "--per-device-batch-size", "8", "--output-dir", str(two))
    assert "Training on cpu with 2 processes (MULTI_CPU)." in run.stdout
    pretrain(
        2, *common, "--per-device-batch-size", "4", "--gradient-accumulation-steps", "2", "--output-dir",
        str(accumulated),
    )  # fmt: skip
    assert results(one)["world_size"] == 1
    assert results(two)["world_size"] == results(accumulated)["world_size"] == 2
    assert_same_weights(one, two, atol=1e-5)
    assert_same_weights(one, accumulated, atol=1e-5)
    assert results(one)["eval_samples"] == results(two)["eval_samples"] == 12
    assert results(two)["eval_accuracy"] == results(one)["eval_accuracy"]
    assert results(two)["eval_loss"] == pytest.approx(results(one)["eval_loss"], abs=1e-5)


def test_two_processes_resume_exactly_from_their_checkpoint_with_dropout(digits_folder, tmp_path):
    common = ["--config-overrides", DROPOUT, "--dataset", str(digits_folder), "--per-device-batch-size", "8"]
    common = [*TINY[:2], *common, *TINY[4:], "--max-steps", "6", "--save-every", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(2, *common, "--output-dir", str(straight))
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    state = json.loads((resumed / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and sorted(p.name for p in (resumed / "checkpoint-3").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    run = pretrain(2, *common, "--resume-from-checkpoint", "latest", "--output-dir", str(resumed))
    assert "Resumed from" in run.stdout and "at update 3" in run.stdout
    assert_same_weights(straight, resumed)  # bit for bit
    single = pretrain(1, *common, "--resume-from-checkpoint", "latest", "--output-dir", str(resumed), check=False)
    assert single.returncode == 1
    assert "was written by 2 process(es) and this run has 1" in single.stderr.strip().splitlines()[-1]


def test_a_rank_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(digits_folder, tmp_path):
    out = tmp_path / "run"
    common = [*TINY, "--dataset", str(digits_folder), "--per-device-batch-size", "8", "--save-every", "2"]
    faults = str(ROOT / "tests" / "probes" / "faults.py")
    killed = run_script(
        faults, "checkpoint:4", str(ROOT / "scripts" / "pretrain.py"), *common, "--max-steps", "6", "--output-dir",
        str(out), launcher=launch(2), check=False, HF_VIT_KILL_RANK="1",
    )  # fmt: skip
    assert killed.returncode != 0
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]  # checkpoint 4 never completed
    assert list(out.glob(".tmp-checkpoint-4")), "the staging folder of the interrupted checkpoint"
    run = pretrain(2, *common, "--max-steps", "6", "--resume-from-checkpoint", "latest", "--output-dir", str(out))
    assert "at update 2" in run.stdout and results(out)["train_steps"] == 6


def test_finetuning_on_two_processes_equals_one_with_the_whole_batch(digits_folder, pretrained_folder, tmp_path):
    common = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--max-steps", "3"]
    common += ["--eval-fraction", "0.25", "--learning-rate", "0.1", "--total-batch-size", "16", "--save-every", "10"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert load_script("finetune").main([*common, "--per-device-batch-size", "16", "--output-dir", str(one)]) == 0
    pretrain(2, *common, "--per-device-batch-size", "8", "--output-dir", str(two), script="finetune")
    assert results(one)["world_size"] == 1 and results(two)["world_size"] == 2
    assert results(two)["total_train_batch_size"] == 16
    assert_same_weights(one, two, atol=1e-5)
    assert results(two)["eval_accuracy"] == results(one)["eval_accuracy"]


def test_fsdp_is_refused_where_accelerate_cannot_shard(digits_folder, tmp_path):
    run = pretrain(2, *TINY, "--dataset", str(digits_folder), "--fsdp", "--output-dir", str(tmp_path), check=False)
    assert run.returncode == 1
    assert "--fsdp needs several processes on GPUs" in run.stderr and "MULTI_CPU with 2 process(es)" in run.stderr


def test_fsdp2_shards_trains_resumes_and_consolidates_our_model_on_the_cpu(tmp_path):
    """What Accelerate's FSDP2 plugin does on GPUs, done with torch's `fully_shard` on the CPU (Accelerate itself
    refuses FSDP without GPUs): sharded training equals unsharded, a sharded checkpoint resumes exactly, and the
    consolidated folder loads with AutoModelForImageClassification in a process without hf_vit."""
    run_script(str(ROOT / "tests" / "probes" / "fsdp_shard.py"), str(tmp_path), launcher=launch(2))
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["world_size"] == 2 and record["local_rows"] * 2 == record["rows"] == 64  # half of fc1 each
    assert record["max_diff_vs_unsharded"] < 1e-5
    assert record["max_diff_resumed"] == 0.0
    expected = torch.load(tmp_path / "logits.pt")
    result = run_without_hf_vit(
        f"""
        import json, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "consolidated")!r},
                                                                trust_remote_code=True).eval()
        pixels = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        print(json.dumps(model(pixels).logits.tolist()))
        """,
        cwd=tmp_path,
    )
    torch.testing.assert_close(torch.tensor(result), expected, rtol=0, atol=1e-5)
