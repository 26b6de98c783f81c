"""What pre-training and fine-tuning runs share around their loops: the output folder and default intervals."""

import math
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
        state = PartialState()
        if state.is_main_process:
            shutil.rmtree(folder)
        state.wait_for_everyone()


def is_main_process() -> bool:
    """Whether this is the process that prints, saves and publishes (the only one without a launcher)."""
    from accelerate import PartialState

    return PartialState().is_main_process
