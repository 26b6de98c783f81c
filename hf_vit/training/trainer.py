"""transformers' Trainer with the guarantees of hf_vit's pre-training loop.

Checkpoints are written aside and renamed into place only when complete (so `latest` never picks a half-written one),
and only while the weights are finite; a NaN or infinite loss stops the run with the last good checkpoint named;
SIGTERM/SIGINT finish the step, checkpoint and stop.
"""

import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from .checkpoints import checkpoints, disk_full_as_oserror, non_finite_parameters
from .optimization import layer_decay_groups, weight_average
from .stops import NonFiniteLossError, StopRequests, TrainingInterrupted

STAGING = ".tmp-checkpoint"
AVERAGE_FILE = "weight_average.safetensors"  # the average of the weights, in each checkpoint that has one


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (so that all of them take the same branch)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor(float(flag))
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def diverged(output_dir: str, what: str, step: int) -> NonFiniteLossError:
    last = checkpoints(Path(output_dir))
    where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"
    return NonFiniteLossError(
        f"The {what} became NaN or infinite by step {step}; stopping ({where}). Lower --learning-rate, raise "
        "--warmup-steps or check the data."
    )


class FinetuningTrainer(Trainer):
    """A Trainer whose checkpoints are complete or absent and never hold non-finite weights; optionally with
    layer-wise learning-rate decay (SGD with momentum over `layer_decay_groups`) and an average of the weights
    (`ema_decay`: evaluated next to the trained weights, kept in checkpoints, and what `average_into_model` makes the
    model before it is saved)."""

    _staging_root: str | None = None

    def __init__(self, *args, layer_decay: float = 1.0, momentum: float = 0.9, ema_decay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay
        self.momentum = momentum
        self.weight_average = weight_average(self.model, ema_decay)  # on the device the Trainer moved the model to
        if self.weight_average is not None:
            self.add_callback(UpdateAverage(self.weight_average))

    def create_optimizer(self, model=None):
        if self.layer_decay == 1.0 or self.optimizer is not None:
            return super().create_optimizer(model)
        momentum = float(
            dict(item.split("=") for item in (self.args.optim_args or "momentum=0").split(","))["momentum"]
        )
        groups = layer_decay_groups(self.model, self.args.learning_rate, self.layer_decay, self.args.weight_decay)
        self.optimizer = torch.optim.SGD(groups, lr=self.args.learning_rate, momentum=momentum)
        return self.optimizer

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The trained weights' metrics, or with a weight average its metrics (`eval_*`) and theirs (`eval_raw_*`)."""
        if self.weight_average is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        raw = super().evaluate(eval_dataset, ignore_keys, f"{metric_key_prefix}_raw")
        trained = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
        self.average_into_model()
        try:
            averaged = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self.model.load_state_dict(trained)
        return {**averaged, **raw}

    def average_into_model(self) -> None:
        """Give the model the averaged weights (before the final save)."""
        self.model.load_state_dict(self.weight_average.module.state_dict())

    def train(self, resume_from_checkpoint: str | None = None, **kwargs) -> TrainOutput:
        """Train, or, from a checkpoint of the last step, only load it (transformers would run one step more)."""
        if resume_from_checkpoint:
            state = TrainerState.load_from_json(str(Path(resume_from_checkpoint) / TRAINER_STATE_NAME))
            if state.global_step >= self.args.max_steps:
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = state
                losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
                loss = losses[-1] if losses else float("nan")
                return TrainOutput(state.global_step, loss, {"train_loss": loss})
        if resume_from_checkpoint and self.weight_average is not None:
            saved = load_file(str(Path(resume_from_checkpoint) / AVERAGE_FILE))
            self.weight_average.load_state_dict({name: tensor.to(self.args.device) for name, tensor in saved.items()})
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:  # a run stopped by an error leaves its progress bar open; the error belongs on a line of its own
            for callback in self.callback_handler.callbacks:
                if getattr(callback, "training_bar", None) is not None:
                    callback.training_bar.close()

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        bad = non_finite_parameters(self.model)
        if any_process(bool(bad)):
            raise diverged(self.args.output_dir, "weights", self.state.global_step)
        root = Path(super()._get_output_dir(trial))
        staging = root / STAGING
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_root = str(staging)
        try:
            with disk_full_as_oserror(staging, f"checkpoint {self.state.global_step}"):
                super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()  # every process has written its part before the rename
        if self.args.should_save:
            if self.weight_average is not None:
                average = {name: tensor.detach().cpu() for name, tensor in self.weight_average.state_dict().items()}
                save_file(average, str(staging / name / AVERAGE_FILE))
            shutil.rmtree(root / name, ignore_errors=True)
            (staging / name).rename(root / name)
            staging.rmdir()
            for old in checkpoints(root)[: -self.args.save_total_limit]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()


class UpdateAverage(TrainerCallback):
    """Fold the weights into their average after every update."""

    def __init__(self, weight_average):
        self.weight_average = weight_average

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        self.weight_average.update_parameters(model)


class StopOnNonFinite(TrainerCallback):
    """Stop the run as soon as a logged loss or gradient norm is NaN or infinite (nothing saved after it)."""

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        values = [logs[key] for key in ("loss", "grad_norm") if logs and isinstance(logs.get(key), float)]
        if any(not math.isfinite(value) for value in values):
            raise diverged(args.output_dir, "training loss", state.global_step)


class StopOnSignal(TrainerCallback):
    """On SIGTERM/SIGINT (to any process): finish the step, save a checkpoint, stop; `interrupted` says why."""

    def __init__(self, requests: StopRequests):
        self.requests = requests
        self.interrupted: str | None = None

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if any_process(self.requests.received is not None):
            self.interrupted = self.requests.received or "a signal to another process"
            control.should_save = True
            control.should_training_stop = True

    def raise_if_interrupted(self, output_dir: str, step: int) -> None:
        if self.interrupted:
            found = checkpoints(Path(output_dir))
            raise TrainingInterrupted(
                f"stopped by {self.interrupted} after step {step}; the checkpoint is {found[-1]}: continue with "
                "--resume-from-checkpoint latest."
            )
