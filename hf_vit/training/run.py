"""What pre-training and fine-tuning runs share around their loops: the output folder and default intervals."""

import math
import os
import shutil
from pathlib import Path

from .arguments import RunArguments


def default_interval(total_steps: int) -> int:
    """Five times per run, at most 1,000 updates apart: short runs get checkpoints and curves too."""
    return max(1, min(1000, math.ceil(total_steps / 5)))


def prepare_output_dir(args: RunArguments) -> None:
    """Refuse a folder that holds an earlier run, unless resuming it or asked to overwrite it (then it is emptied).

    Every process checks (they only read), so all fail together; the main process empties, the others wait.
    """
    from accelerate import PartialState

    folder = Path(args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output-dir {folder} is a file, not a folder.")
    used = folder.is_dir() and any(folder.iterdir())
    if used and not args.resume_from_checkpoint:
        if not args.overwrite_output_dir:
            raise ValueError(
                f"--output-dir {folder} already holds a run; pass --overwrite-output-dir to replace it, "
                "--resume-from-checkpoint latest to continue it, or choose another folder."
            )
        state = PartialState(cpu=cpu_only_processes())
        if state.is_main_process:
            shutil.rmtree(folder)
        state.wait_for_everyone()


def is_main_process() -> bool:
    """Whether this is the process that prints, saves and publishes (the only one without a launcher)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only_processes()).is_main_process


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun, srun) started for this run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cpu_only_processes() -> bool:
    """Several processes on a machine without GPUs or TPU: they must train on the CPU together (gloo), not alone."""
    import torch
    from accelerate.utils import is_torch_xla_available

    return launched_processes() > 1 and not torch.cuda.is_available() and not is_torch_xla_available()


def check_world_size(num_processes: int) -> None:
    """Refuse a run whose processes would each train alone on the same data (a launcher Accelerate did not see)."""
    if launched_processes() not in (1, num_processes):
        raise ValueError(
            f"the launcher started {launched_processes()} processes but Accelerate sees {num_processes}: each would "
            "train alone on the same data. Launch with `accelerate launch --multi_gpu --num_processes N` or torchrun."
        )
