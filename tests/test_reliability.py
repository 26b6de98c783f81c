"""Training that survives what happens to real runs: divergence, kill -9 at any moment, SIGTERM, a full disk, bad
flags and bad data. Faults are real: SIGKILL of the process (tests/probes/faults.py), signals to a running process,
a small tmpfs (in a user and mount namespace) that fills up."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_OVERRIDES, load_script, run_script
from PIL import Image
from safetensors.torch import load_file

from hf_vit.training.checkpoints import checkpoints

TINY = TINY_OVERRIDES
DROPOUT = TINY + ",hidden_dropout_prob=0.1,drop_path_rate=0.1"
PRETRAIN = ["--model", "ViT-Ti/16", "--config-overrides", DROPOUT, "--image-size", "16", "--per-device-batch-size", "8"]
FAULTS = str(ROOT / "tests" / "probes" / "faults.py")


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_bitwise_equal(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


def killed_then_resumed(script: str, moment: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run `script` with a SIGKILL at `moment`, then resume it from `latest`; returns the resumed run."""
    killed = run_script(FAULTS, moment, str(ROOT / "scripts" / f"{script}.py"), *args, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    return run_script(script, *args, "--resume-from-checkpoint", "latest")


# -- kill -9 at any moment, then `latest`: the same weights as a run that was never interrupted ----------------------


@pytest.fixture(scope="module")
def straight_pretraining(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    run_script("pretrain", *PRETRAIN, "--dataset", str(digits_folder), "--max-steps", "6", "--save-every", "2",
               "--output-dir", str(out), "--overwrite-output-dir")  # fmt: skip
    return weights(out)


@pytest.mark.parametrize(
    "moment",
    [
        "update:3",
        pytest.param("checkpoint:4", marks=pytest.mark.slow),
        "final",
    ],
)
def test_pretraining_killed_at_any_moment_resumes_to_the_same_weights(moment, straight_pretraining, digits_folder,
                                                                     tmp_path):  # fmt: skip
    out = tmp_path / "run"
    args = [
        *PRETRAIN,
        "--dataset",
        str(digits_folder),
        "--max-steps",
        "6",
        "--save-every",
        "2",
        "--output-dir",
        str(out),
    ]
    if moment == "final":
        first = run_script(FAULTS, moment, str(ROOT / "scripts" / "pretrain.py"), *args, check=False)
        assert first.returncode == -signal.SIGKILL
        assert not (out / "config.json").exists(), "a half-moved final folder holds no loadable model"
        assert "holds no model" in run_script("evaluate_model", "--model", str(out), check=False).stderr
        run_script("pretrain", *args, "--resume-from-checkpoint", "latest")
    else:
        killed_then_resumed("pretrain", moment, args)
    assert_bitwise_equal(weights(out), straight_pretraining)
    assert not list(out.glob(".tmp-*"))


FINETUNE = ["--eval-fraction", "0.25", "--per-device-batch-size", "8", "--total-batch-size", "8", "--max-steps", "6"]
FINETUNE += ["--save-every", "2", "--learning-rate", "0.05"]


@pytest.fixture(scope="module")
def straight_finetuning(digits_folder, pretrained_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight-finetune")
    args = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), *FINETUNE, "--output-dir", str(out)]
    run_script("finetune", *args, "--overwrite-output-dir")  # in a process like the killed ones: same threads
    return weights(out)


@pytest.mark.parametrize(
    "moment",
    ["trainer-step:3", pytest.param("trainer-checkpoint:4", marks=pytest.mark.slow), "final"],
)
def test_finetuning_killed_at_any_moment_resumes_to_the_same_weights(
    moment, straight_finetuning, digits_folder, pretrained_folder, tmp_path
):
    out = tmp_path / "run"
    args = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), *FINETUNE, "--output-dir", str(out)]
    killed_then_resumed("finetune", moment, args)
    assert_bitwise_equal(weights(out), straight_finetuning)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


# -- divergence ------------------------------------------------------------------------------------------------------


def test_weights_gone_infinite_are_never_checkpointed(digits_folder, pretrained_folder, tmp_path, capsys):
    """SGD at 3e38: the loss of step 1 is finite but its update makes weights infinite; no checkpoint may hold them."""
    out = tmp_path / "run"
    args = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), *FINETUNE[:-4], "--save-every", "1"]
    args += ["--learning-rate", "3e38", "--grad-clip", "0", "--warmup-steps", "0", "--output-dir", str(out)]
    assert load_script("finetune").main(args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: The weights became NaN or infinite by step ")
    good = sorted(out.glob("checkpoint-*"))
    assert (f"the last good checkpoint is {good[-1]}" in last) if good else ("no checkpoint was written" in last)
    for checkpoint in good:
        assert all(torch.isfinite(t).all() for t in weights(checkpoint).values())


def test_finetuning_that_diverges_stops_names_the_last_good_checkpoint_and_pushes_nothing(
    hub, digits_folder, pretrained_folder, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), *FINETUNE[:-4], "--save-every", "1"]
    code = load_script("finetune").main(
        [*args, "--learning-rate", "1e6", "--output-dir", str(out), "--push-to-hub", "org/diverged"]
    )
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: The ") and "became NaN or infinite" in error
    good = sorted(out.glob("checkpoint-*"))
    assert (f"the last good checkpoint is {good[-1]}" in error) if good else ("no checkpoint was written" in error)
    for checkpoint in good:
        assert all(torch.isfinite(t).all() for t in weights(checkpoint).values())
    assert not (out / "model.safetensors").exists() and not hub.hub.repos, "nothing saved or published after divergence"


# -- signals ---------------------------------------------------------------------------------------------------------


def start(script: str, *args: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll `condition` while `process` runs; a process that ended first fails the test with its stderr."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            ended = f"the run ended (exit {process.returncode}) before the moment to signal"
            pytest.fail(f"{ended}:\n{process.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def logged_updates(out) -> int:
    log = out / "log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return max((json.loads(line)["step"] for line in lines if "train_loss" in line), default=0)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_stops_and_the_run_resumes(number, digits_folder, tmp_path):
    out = tmp_path / "run"
    args = ["--model", "ViT-Ti/16", "--config-overrides", TINY, "--image-size", "16", "--dataset", str(digits_folder)]
    args += ["--per-device-batch-size", "8", "--max-steps", "400", "--logging-every", "1", "--output-dir", str(out)]
    process = start("pretrain", *args)
    wait_for(lambda: logged_updates(out) >= 2, process)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    last = stderr.strip().splitlines()[-1]
    name = signal.Signals(number).name
    assert last.startswith(f"error: stopped by {name} after update ") and "--resume-from-checkpoint latest" in last
    step = int(last.split("after update ")[1].split(";")[0])
    assert f"checkpoint-{step}" in last and (out / f"checkpoint-{step}" / "trainer_state.json").is_file()


def test_a_second_signal_acts_at_once():
    """The first SIGTERM/SIGINT is only recorded; the handling in place before (the default) is back for the next."""
    from hf_vit.training.stops import StopRequests

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: seen.append(number))
    try:
        with StopRequests() as requests:
            os.kill(os.getpid(), signal.SIGTERM)
            assert requests.received == "SIGTERM" and seen == []
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_finetuning_stops_on_sigterm_with_a_checkpoint(digits_folder, pretrained_folder, tmp_path):
    out = tmp_path / "run"
    args = ["--model", str(pretrained_folder), "--dataset", str(digits_folder), "--max-steps", "400"]
    process = start("finetune", *args, "--save-every", "1", "--total-batch-size", "16", "--output-dir", str(out))
    wait_for(lambda: bool(checkpoints(out)), process)  # the first ones are rotated out as the run goes on
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM after step ") and "--resume-from-checkpoint latest" in last
    step = int(last.split("after step ")[1].split(";")[0])
    assert f"checkpoint-{step}" in last and (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert not (out / "model.safetensors").exists()


# -- a full disk -----------------------------------------------------------------------------------------------------


def on_a_small_disk(folder, size: str, command: list[str], check: str) -> dict:
    """Run `command` with `folder` on a tmpfs of `size`, then the Python `check` there; returns both outcomes.

    The tmpfs lives in a private user and mount namespace (no root needed, nothing left mounted); where the machine
    does not allow one, the test is skipped rather than faked.
    """
    import shlex

    folder.mkdir(parents=True, exist_ok=True)
    env = f"PYTHONPATH={shlex.quote(str(ROOT))} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1"
    shell = (
        f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(folder))} || exit 99; "
        f"{env} {shlex.join(command)} 2>{shlex.quote(str(folder))}/../stderr.txt; "
        f"echo $? > {shlex.quote(str(folder))}/../rc.txt; "
        f"{env} {shlex.quote(sys.executable)} -c {shlex.quote(check)} > {shlex.quote(str(folder))}/../check.json"
    )
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell], timeout=900)
    if done.returncode == 99 or not (folder.parent / "rc.txt").exists():
        pytest.skip("this machine allows no private tmpfs (user and mount namespaces)")
    return {
        "returncode": int((folder.parent / "rc.txt").read_text()),
        "stderr": (folder.parent / "stderr.txt").read_text(),
        **json.loads((folder.parent / "check.json").read_text()),
    }


CHECK_CHECKPOINTS = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file
from hf_vit.training.checkpoints import checkpoints
out = Path(sys.argv[1] if len(sys.argv) > 1 else "OUT")
complete = checkpoints(out)
loadable = all(torch.isfinite(t).all() for c in complete for t in load_file(c / "model.safetensors").values())
print(json.dumps({"complete": [c.name for c in complete], "loadable": bool(loadable)}))
"""


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_a_full_disk_is_one_error_line_and_keeps_the_checkpoints(script, digits_folder, pretrained_folder, tmp_path):
    out = tmp_path / "disk" / "run"
    if script == "pretrain":
        args = ["--model", "ViT-Ti/16", "--config-overrides", TINY, "--image-size", "16", "--max-steps", "40"]
    else:
        args = ["--model", str(pretrained_folder), "--max-steps", "40", "--total-batch-size", "8"]
    args += ["--dataset", str(digits_folder), "--per-device-batch-size", "8", "--save-every", "1"]
    command = [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *args, "--save-total-limit", "100"]
    outcome = on_a_small_disk(
        out, "2M", [*command, "--output-dir", str(out)], CHECK_CHECKPOINTS.replace("OUT", str(out))
    )
    assert outcome["returncode"] == 1
    last = outcome["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last and "Traceback" not in outcome["stderr"]
    assert outcome["complete"] and outcome["loadable"], "the checkpoints written before the disk filled are intact"


# -- bad flags, bad config values, bad data: one line each -----------------------------------------------------------


@pytest.mark.parametrize(
    "script, flag, value, message",
    [
        ("pretrain", "--save-every", "0", "--save-every must be a positive integer; got 0."),
        ("pretrain", "--logging-every", "0", "--logging-every must be a positive integer; got 0."),
        ("pretrain", "--gradient-accumulation-steps", "0", "--gradient-accumulation-steps must be a positive integer"),
        ("finetune", "--per-device-batch-size", "0", "--per-device-batch-size must be a positive integer; got 0."),
        ("pretrain", "--random-crop-scale", "-1", "--random-crop-scale must be in (0, 1] (1 turns cropping off)"),
        ("pretrain", "--max-steps", "-5", "--max-steps must be a positive integer; got -5."),
        ("pretrain", "--image-size", "0", "--image-size must be a positive integer; got 0."),
        ("pretrain", "--mixup", "-1", "--mixup must be a non-negative finite number (0 turns mixup off); got -1.0."),
        ("pretrain", "--grad-clip", "nan", "--grad-clip must be a non-negative finite number (0 turns clipping off)"),
        ("finetune", "--learning-rate", "inf", "--learning-rate must be a positive number below 3.4e38"),
        ("pretrain", "--randaugment", "2", "--randaugment takes N,M (two integers), got '2'."),
    ],
)
def test_bad_run_flags_are_one_line(script, flag, value, message, digits_folder, tmp_path, capsys):
    argv = ["--dataset", str(digits_folder), "--output-dir", str(tmp_path / "out"), flag, value]
    assert load_script(script).main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("hiden_dropout_prob=0.1", "--config-overrides: hiden_dropout_prob is not a field of VisionTransformerConfig."),
        ("num_labels=3", "--config-overrides: num_labels come from the dataset's classes; remove them."),
        ("num_hidden_layers=-1", "num_hidden_layers must be"),
        ("hidden_size='wide'", "hidden_size must be a positive integer"),
    ],
)
def test_bad_config_overrides_are_one_line(overrides, message, digits_folder, tmp_path, capsys):
    argv = ["--model", "ViT-Ti/16", "--config-overrides", overrides, "--dataset", str(digits_folder)]
    assert load_script("pretrain").main([*argv, "--output-dir", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_unknown_model_type_truncated_weights_and_another_architecture_are_named(
    digits_folder, pretrained_folder, tmp_path, capsys
):
    evaluate = load_script("evaluate_model").main
    strange = tmp_path / "strange"
    shutil.copytree(pretrained_folder, strange)
    config = json.loads((strange / "config.json").read_text())
    (strange / "config.json").write_text(json.dumps({k: v for k, v in {**config, "model_type": "vit_but_not"}.items()
                                                     if k != "auto_map"}))  # fmt: skip
    assert evaluate(["--model", str(strange), "--dataset", str(digits_folder)]) == 1
    assert "config.json has model_type 'vit_but_not', which is neither an hf_vit model" in capsys.readouterr().err

    truncated = tmp_path / "truncated"
    shutil.copytree(pretrained_folder, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert evaluate(["--model", str(truncated), "--dataset", str(digits_folder)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the weights are not readable safetensors" in error and str(truncated / "model.safetensors") in error

    out = tmp_path / "run"
    common = ["--model", "ViT-Ti/16", "--image-size", "16", "--dataset", str(digits_folder), "--max-steps", "1"]
    run_script("pretrain", *common, "--config-overrides", TINY, "--output-dir", str(out))
    wider = TINY.replace("hidden_size=32", "hidden_size=64")
    argv = [*common, "--config-overrides", wider, "--output-dir", str(out), "--resume-from-checkpoint", "latest"]
    assert load_script("pretrain").main([*argv, "--max-steps", "2"]) == 1
    assert "holds another architecture than this run's model" in capsys.readouterr().err


def test_bad_data_is_one_line(tmp_path, capsys):
    pretrain = load_script("pretrain").main
    one_class = tmp_path / "one-class" / "cat"
    one_class.mkdir(parents=True)
    for index in range(4):
        Image.new("RGB", (16, 16), (index * 40, 0, 0)).save(one_class / f"{index}.png")
    assert pretrain(["--dataset", str(one_class.parent), "--output-dir", str(tmp_path / "a")]) == 1
    assert "an image folder needs one subfolder per class, at least two" in capsys.readouterr().err

    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b"])})
    images = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(4)]
    Dataset.from_dict({"image": images, "label": [0, None, 1, 0]}, features=features).to_parquet(
        str(tmp_path / "missing.parquet")
    )
    assert pretrain(["--dataset", str(tmp_path / "missing.parquet"), "--output-dir", str(tmp_path / "b")]) == 1
    assert "Label column 'label' has 1 missing value(s)" in capsys.readouterr().err

    only = Features({"image": ImageFeature(), "label": ClassLabel(names=["a"])})
    Dataset.from_dict({"image": images, "label": [0, 0, 0, 0]}, features=only).to_parquet(str(tmp_path / "one.parquet"))
    assert pretrain(["--dataset", str(tmp_path / "one.parquet"), "--output-dir", str(tmp_path / "c")]) == 1
    assert "The dataset has 1 class (['a']): a classifier needs at least two." in capsys.readouterr().err


def test_sixteen_bit_pngs_are_scaled_not_saturated(tmp_path):
    from hf_vit.training.data import decode_image

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    decoded = np.asarray(decode_image({"bytes": (tmp_path / "deep.png").read_bytes(), "path": None}))
    np.testing.assert_array_equal(decoded[..., 0], np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8))
    assert (decoded == 255).mean() < 0.01  # `convert("RGB")` alone saturated 99.6% of the pixels
