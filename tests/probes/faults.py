"""Run a script with a real `kill -9` (SIGKILL) of this process at a chosen moment, to test crash recovery.

usage: faults.py MOMENT SCRIPT [ARGS...], MOMENT one of
  update:N       pre-training, right after update N (before any checkpoint of it)
  checkpoint:N   pre-training, while checkpoint N is being written (this process's state is in the staging folder)
  final          pre-training and fine-tuning, while the final model is moved into the output folder
  trainer-step:N         fine-tuning, in the step after update N
  trainer-checkpoint:N   fine-tuning, while the Trainer writes checkpoint N
HF_VIT_KILL_RANK (default 0) picks the process that dies; the others are ended by their launcher.
"""

import os
import runpy
import signal
import sys


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def this_rank() -> bool:
    return os.environ.get("RANK", "0") == os.environ.get("HF_VIT_KILL_RANK", "0")


moment, script, *arguments = sys.argv[1:]
kind, _, number = moment.partition(":")
if kind == "update":
    from hf_vit.training.loop import PretrainingLoop

    after_update = PretrainingLoop._after_update

    def _after_update(self, *args, **kwargs):
        if self.step == int(number) and this_rank():
            die()
        return after_update(self, *args, **kwargs)

    PretrainingLoop._after_update = _after_update
elif kind == "checkpoint":
    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def _save_state(self, output_dir=None, **kwargs):
        result = save_state(self, output_dir, **kwargs)
        if output_dir.endswith(f"checkpoint-{number}") and this_rank():
            die()
        return result

    Accelerator.save_state = _save_state
elif kind == "final":
    from hf_vit.training import checkpoints

    replace = os.replace

    def _replace(source, target):
        replace(source, target)
        if ".tmp-final" in str(source) and this_rank():
            die()  # after the first file of the final folder is moved in

    checkpoints.os.replace = _replace
elif kind == "trainer-step":
    import transformers

    training_step = transformers.Trainer.training_step

    def _training_step(self, *args, **kwargs):
        if self.state.global_step == int(number) and this_rank():
            die()
        return training_step(self, *args, **kwargs)

    transformers.Trainer.training_step = _training_step
elif kind == "trainer-checkpoint":
    import transformers

    save_optimizer = transformers.Trainer._save_optimizer_and_scheduler

    def _save_optimizer_and_scheduler(self, output_dir):
        save_optimizer(self, output_dir)
        if output_dir.rstrip("/").endswith(f"checkpoint-{number}") and this_rank():
            die()

    transformers.Trainer._save_optimizer_and_scheduler = _save_optimizer_and_scheduler
else:
    raise SystemExit(f"unknown moment {moment!r}")
sys.argv = [script, *arguments]
runpy.run_path(script, run_name="__main__")
