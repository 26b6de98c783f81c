"""Checkpoints and final folders that are complete or absent, never half written, on any number of processes.

A checkpoint is written by every process into a hidden staging folder; only when all of them are done does the main
process add the run's state file and rename the folder into place. `latest` therefore only ever finds complete
checkpoints. The final model folder is written aside too and moved in file by file, `config.json` last, so a crash
leaves no loadable model rather than a truncated one that looks complete.
"""

import errno
import json
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"
PREFIX = "checkpoint-"
LOW_SPACE = 16 * 2**20  # a write that fails with less free than this is taken for a full disk


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (named checkpoint-N, with their state file), oldest first."""
    found = [
        path
        for path in Path(output_dir).glob(f"{PREFIX}*")
        if path.name[len(PREFIX) :].isdigit() and (path / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda path: int(path.name[len(PREFIX) :]))


def resolve_checkpoint(value: str, output_dir: Path) -> Path:
    """`latest` is the newest complete checkpoint in the output dir; anything else is a checkpoint folder."""
    if value == "latest":
        found = checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"--resume-from-checkpoint latest: no complete checkpoint-* folder in {output_dir}."
            )
        return found[-1]
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"--resume-from-checkpoint {value}: not a complete checkpoint folder (no {STATE_FILE})."
        )
    return path


@contextmanager
def disk_full_as_oserror(folder: Path, what: str):
    """Turn the many shapes of a full disk (torch.save's RuntimeError, safetensors' errors) into one OSError.

    Anything written so far under `folder` is removed: it is incomplete, and the space is better given back.
    """
    try:
        yield
    except Exception as error:
        full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)
        free = shutil.disk_usage(folder.parent if not folder.exists() else folder).free
        if not full and free >= LOW_SPACE:
            raise
        shutil.rmtree(folder, ignore_errors=True)
        raise OSError(
            errno.ENOSPC,
            f"No space left on device while writing {what} ({free / 2**20:.1f} MiB free in {folder.parent}); the "
            "earlier checkpoints are intact: free space, then continue with --resume-from-checkpoint latest",
        ) from None


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that hold a NaN or an infinity (one host sync when all are finite)."""
    named = list(model.named_parameters())
    flags = torch.stack([torch.isfinite(param.detach()).all() for _, param in named])
    if bool(flags.all()):
        return []
    return [name for (name, _), ok in zip(named, flags.tolist(), strict=True) if not ok]


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """`accelerator.save_state` of every process into a staging folder, renamed into place once all are done.

    `state` (the run's position: step, epoch, batches, world size, ...) is written by the main process after every
    process has finished writing, as the marker of a complete checkpoint; the oldest beyond `keep` are removed.
    """
    final = Path(output_dir) / f"{PREFIX}{step}"
    staging = Path(output_dir) / f".tmp-{PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with disk_full_as_oserror(staging, f"checkpoint {step}"):
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()  # every process has written its shard and RNG state before the rename
        if accelerator.is_main_process:
            (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in checkpoints(Path(output_dir))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore weights, optimiser, schedule, RNG and sampler state; return the run's state from the checkpoint."""
    state = json.loads((Path(path) / STATE_FILE).read_text())
    written_by = state.get("world_size", 1)
    if written_by != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {written_by} process(es) and this run has {accelerator.num_processes}: the data "
            f"position and random states would not continue the same run. Resume with {written_by} process(es)."
        )
    try:
        accelerator.load_state(str(path))
    except RuntimeError as error:
        if "size mismatch" not in str(error) and "Missing key" not in str(error):
            raise
        raise ValueError(
            f"{path} holds another architecture than this run's model ({str(error).splitlines()[1].strip()}): "
            "resume with the same --model and --config-overrides."
        ) from None
    return state


STAGING_FINAL = ".tmp-final"


def staging_folder(output_dir: Path) -> Path:
    """An empty hidden folder inside `output_dir` where a final model is written before it is moved into place."""
    staging = Path(output_dir) / STAGING_FINAL
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


# The files that make a folder loadable: a model's config, a PEFT adapter's config. They are moved in last.
LOADABLE_MARKERS = ("config.json", "adapter_config.json")


def move_into_place(staging: Path, output_dir: Path) -> None:
    """Move the files written in `staging` into `output_dir`, `config.json` (an adapter's `adapter_config.json`)
    last, after syncing them to disk.

    A previous model's config.json is removed first: until the new one is in place the folder holds no loadable
    model rather than a mix of two.
    """
    output_dir = Path(output_dir)
    for path in staging.iterdir():
        with open(path, "rb") as file:
            os.fsync(file.fileno())
    for marker in LOADABLE_MARKERS:
        (output_dir / marker).unlink(missing_ok=True)
    names = sorted(path.name for path in staging.iterdir())
    for name in sorted(names, key=lambda name: name in LOADABLE_MARKERS):
        os.replace(staging / name, output_dir / name)
    staging.rmdir()


def write_folder_atomically(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Call `write(folder)` on a staging folder, then move its files into `output_dir` (see `move_into_place`)."""
    staging = staging_folder(output_dir)
    with disk_full_as_oserror(staging, "the final model"):
        write(staging)
        move_into_place(staging, output_dir)
