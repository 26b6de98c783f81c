"""The pre-training loop over Accelerate: the same code on one CPU, many GPUs or TPU cores.

The step has no host syncs and fixed shapes, so XLA compiles it once; the loss is checked for non-finite values only
where the host looks anyway (logging, evaluation, checkpoints). Randomness is reproducible across resumes: the data
order comes from the seeded sampler, each image's augmentation from its own seed, and everything drawn during an
update (dropout, drop-path, mixup, masking) from the global RNG reseeded per update and process.
"""

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from .arguments import PretrainingArguments
from .checkpoints import checkpoints, load_checkpoint, non_finite_parameters, resolve_checkpoint, save_checkpoint
from .run import default_interval
from .runtime import DataWait, ThreadGovernor
from .stops import NonFiniteLossError, StopRequests, TrainingInterrupted
from .transforms import Normalize

LOG_FILE = "log.jsonl"


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class ids or mixed (soft) targets, each smoothed towards uniform by `label_smoothing`."""
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def update_seed(seed: int, micro_batch: tuple[int, int], process: int) -> int:
    """The RNG seed of one micro-batch (epoch, index) on one process: independent streams, the same on resume."""
    return hash((seed, *micro_batch, process)) % 2**63


class PretrainingLoop:
    """Updates, logging, evaluation and checkpoints of one pre-training run; `run()` returns its metrics."""

    def __init__(self, args: PretrainingArguments, accelerator, model, optimizer, scheduler, train_loader, eval_loader,
                 num_classes: int, total_steps: int, mixing=None, ema=None):  # fmt: skip
        self.args = args
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.num_classes = num_classes
        self.total_steps = total_steps
        self.mixing = mixing
        self.ema = ema  # torch.optim.swa_utils.AveragedModel of the weights, evaluated and saved when given
        self.normalize = Normalize()  # the loaders give uint8 pixels: scaled to [-1, 1] here, on the device
        self.threads: ThreadGovernor | None = None  # set by `run`, for the run only
        self.data_wait = DataWait()
        self.output_dir = Path(args.output_dir)
        self.eval_every = args.eval_every or default_interval(total_steps)
        self.save_every = args.save_every or default_interval(total_steps)
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch already consumed
        self.skipped = 0
        self.eval_skipped = 0
        self.train_loss = float("nan")
        self.samples = 0

    def print(self, message: str) -> None:
        """Print once per run: accelerate's own `print` asks for the local main process, which XLA on the CPU
        reports as local index -1, so it would stay silent there."""
        if self.accelerator.is_main_process:
            print(message, flush=True)

    # -- the updates ------------------------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels, labels = self.normalize(batch["pixel_values"]), batch["labels"]
        if self.args.objective == "masked-patch":
            return self.model(pixel_values=pixels).loss
        targets = labels
        if self.mixing is not None:
            pixels, targets = self.mixing(pixels, labels)
        return classification_loss(self.model(pixel_values=pixels).logits, targets, self.args.label_smoothing)

    def run(self) -> dict[str, Any]:
        """Train to `total_steps` and evaluate; torch's thread count is the process's own again afterwards."""
        threads_before = torch.get_num_threads()
        self.threads = ThreadGovernor.for_device(self.accelerator.device, self.args.threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads_before)

    def _run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        accelerator, args = self.accelerator, self.args
        if args.resume_from_checkpoint:
            self._resume(resolve_checkpoint(args.resume_from_checkpoint, self.output_dir))
        else:
            self._start_log()
        accelerator.init_trackers("hf_vit_pretrain", config={k: str(v) for k, v in vars(args).items()})
        device = accelerator.device
        count, kind = accelerator.num_processes, accelerator.distributed_type
        how = f"{count} process{'es' if count > 1 else ''}" + ("" if kind == "NO" else f" ({kind.value})")
        self.print(f"Training on {device.type} with {how}.")
        self.running = torch.zeros((), device=device)  # the loss summed since it was last logged
        self.running_count = 0
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # every loss so far was finite
        self.bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not accelerator.is_main_process, desc="train"
        )
        self.start_time, start_step = time.perf_counter(), self.step
        self.model.train()
        try:
            with StopRequests() as stop:
                while self.step < self.total_steps:
                    self._epoch(stop)
        finally:
            self.bar.close()  # before any error message, which would otherwise land on the bar's line
        elapsed = time.perf_counter() - self.start_time
        data_wait_share = self._mean(self.data_wait.share(elapsed))
        metrics = self.evaluate()
        self._log_line({"step": self.step, **metrics})
        return {
            **metrics,
            "train_loss": self.train_loss,
            "train_steps": self.step,
            "train_samples_per_second": self.samples / elapsed if self.step > start_step else 0.0,
            "train_runtime_seconds": elapsed,
            "train_data_wait_share": data_wait_share,
            "train_cpu_threads": self.threads.threads if self.threads is not None else None,
            "skipped_images": self._total(self.skipped + self.eval_skipped),
            "world_size": accelerator.num_processes,
        }

    def _epoch(self, stop: StopRequests) -> None:
        """The rest of the current epoch, or the updates left in the run, whichever ends first."""
        accelerator, args = self.accelerator, self.args
        self.train_loader.set_epoch(self.epoch)
        loader = self.train_loader
        if self.batches_done:
            loader = accelerator.skip_first_batches(self.train_loader, self.batches_done)
        seen = 0
        for batch in self.data_wait.iterate(loader):
            seen += 1
            self.batches_done += 1
            self.skipped += batch.pop("skipped")
            if batch["pixel_values"].numel() == 0:  # not one readable image in the batch
                continue
            torch.manual_seed(update_seed(args.seed, (self.epoch, self.batches_done), accelerator.process_index))
            with accelerator.accumulate(self.model):
                loss = self._loss(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.grad_clip > 0:
                    accelerator.clip_grad_norm_(self.model.parameters(), args.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.finite &= torch.isfinite(loss.detach())
            self.running += loss.detach()
            self.running_count += 1
            self.samples += batch["pixel_values"].shape[0] * accelerator.num_processes
            if accelerator.sync_gradients:
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(accelerator.unwrap_model(self.model))
                self.step += 1
                self.bar.update(1)
                if self.threads is not None:
                    self.threads.update()
                self._after_update()
                self._stop_if_asked(stop)
                if self.step >= self.total_steps:
                    return
        if not seen and not self.batches_done:
            raise ValueError(
                "the training data gave no full batch: it has fewer images than --per-device-batch-size "
                f"({args.per_device_batch_size}) × {accelerator.num_processes} processes; lower the batch size."
            )
        self.epoch += 1
        self.batches_done = 0

    def _after_update(self) -> None:
        """Log, evaluate and checkpoint on their schedules (the only host syncs)."""
        accelerator, args = self.accelerator, self.args
        at_end = self.step >= self.total_steps
        if self.step % args.logging_every == 0 or at_end:
            self._check_finite()
            self.train_loss = accelerator.reduce(self.running, "mean").item() / self.running_count
            self.running.zero_()
            self.running_count = 0
            lr = self.optimizer.param_groups[0]["lr"]
            self.bar.set_postfix(loss=f"{self.train_loss:.4f}", lr=f"{lr:.2e}")
            record = {"train_loss": self.train_loss, "learning_rate": lr}
            record["data_wait_share"] = self.data_wait.share(time.perf_counter() - self.start_time)
            accelerator.log(record, step=self.step)
            self._log_line({"step": self.step, **record})
        if self.step % self.eval_every == 0 and not at_end:
            self._check_finite()
            metrics = self.evaluate()
            accelerator.log(metrics, step=self.step)
            self._log_line({"step": self.step, **metrics})
        if self.step % self.save_every == 0 or at_end:
            self._check_finite()
            self.save_checkpoint()

    def _stop_if_asked(self, stop: StopRequests) -> None:
        """On SIGTERM/SIGINT (on any process), checkpoint this update and stop."""
        asked = stop.received is not None
        if self.accelerator.num_processes > 1:
            flag = torch.tensor(float(asked), device=self.accelerator.device)
            asked = bool(self.accelerator.reduce(flag, "max").item())
        if not asked:
            return
        self._check_finite()
        path = checkpoints(self.output_dir)[-1:] if self.step % self.save_every == 0 else [self.save_checkpoint()]
        raise TrainingInterrupted(
            f"stopped by {stop.received or 'a signal to another process'} after update {self.step}; the checkpoint "
            f"is {path[0]}: continue with --resume-from-checkpoint latest."
        )

    def _check_finite(self) -> None:
        """Stop when the loss or the weights (this process's shard of them) went non-finite on any process."""
        bad = non_finite_parameters(self.accelerator.unwrap_model(self.model))
        flags = torch.stack([self.finite.float(), torch.tensor(float(not bad), device=self.finite.device)])
        loss_ok, weights_ok = (bool(flag) for flag in self.accelerator.reduce(flags, "min").tolist())
        if loss_ok and weights_ok:
            return
        last = checkpoints(self.output_dir)
        where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"
        what = "training loss" if not loss_ok else "weights" + (f" ({len(bad)} tensors, e.g. {bad[0]})" if bad else "")
        raise NonFiniteLossError(
            f"The {what} became NaN or infinite by update {self.step}; stopping ({where}). "
            "Lower --learning-rate, raise --warmup-steps or check the data."
        )

    def _mean(self, value: float) -> float:
        """Average a per-process host value over all processes."""
        return float(self.accelerator.reduce(torch.tensor(value, device=self.accelerator.device), "mean").item())

    def _total(self, count: int) -> int:
        """Sum a per-process host count over all processes."""
        return int(self.accelerator.reduce(torch.tensor(count, device=self.accelerator.device), "sum").item())

    # -- the log ----------------------------------------------------------------------------------------------------

    def _start_log(self) -> None:
        if self.accelerator.is_main_process:
            (self.output_dir / LOG_FILE).unlink(missing_ok=True)

    def _log_line(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / LOG_FILE, "a") as log:
                log.write(json.dumps(record) + "\n")

    # -- evaluation -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and top-1 accuracy on the eval split, each held-out image counted once over all processes.

        With a weight average (EMA), `eval_*` are the average's (the model that is saved) and `eval_raw_*` the
        trained weights'. For masked-patch prediction: loss and accuracy of the predicted colours, with the same
        corruption every time.
        """
        if self.ema is None:
            return self._evaluate(self.model, "eval")
        return {**self._evaluate(self.ema.module, "eval"), **self._evaluate(self.model, "eval_raw")}

    def _evaluate(self, model: torch.nn.Module, prefix: str) -> dict[str, float]:
        accelerator = self.accelerator
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64)
        self.eval_skipped = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.args.seed)
            for batch in self.eval_loader:
                self.eval_skipped += batch.pop("skipped")
                if batch["pixel_values"].numel() == 0:
                    continue
                per_sample = self._eval_batch(model, self.normalize(batch["pixel_values"]), batch["labels"])
                per_sample = torch.cat([per_sample, torch.ones_like(per_sample[:, :1])], dim=1)
                totals += accelerator.gather_for_metrics(per_sample).double().sum(0).cpu()
        self.model.train()
        loss, correct, count, images = totals.tolist()
        count = max(count, 1.0)
        return {f"{prefix}_loss": loss / count, f"{prefix}_accuracy": correct / count, f"{prefix}_samples": int(images)}

    def _eval_batch(self, model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(batch, 3): each image's summed loss, correct predictions and predictions made by `model`."""
        if self.args.objective != "masked-patch":
            logits = model(pixel_values=pixels).logits.float()
            loss = F.cross_entropy(logits, labels, reduction="none")
            return torch.stack([loss, (logits.argmax(-1) == labels).float(), torch.ones_like(loss)], dim=1)
        from ..models.modeling import mean_colour_classes

        inner = self.accelerator.unwrap_model(model)
        tokens = inner.vit.embeddings.position_embeddings.shape[1] - inner.vit.embeddings.num_prefix_tokens
        predicted, masked, sources = inner.corrupt(pixels.shape[0], tokens, pixels.device)
        out = model(pixel_values=pixels, predicted_pos=predicted, bool_masked_pos=masked, source_patches=sources)
        targets = mean_colour_classes(pixels, inner.config.token_stride)
        per_token = F.cross_entropy(out.logits.float().transpose(1, 2), targets, reduction="none")
        weight = predicted.float()
        hits = (out.logits.argmax(-1) == targets).float() * weight
        return torch.stack([(per_token * weight).sum(1), hits.sum(1), weight.sum(1)], dim=1)

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "samples": self.samples,
            "skipped": self.skipped,
            "total_steps": self.total_steps,
            "world_size": self.accelerator.num_processes,
        }

    def save_checkpoint(self) -> Path:
        """Checkpoint the run (callers have checked that loss and weights are finite)."""
        return save_checkpoint(self.accelerator, self.output_dir, self.step, self.state(), self.args.save_total_limit)

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(self.accelerator, path)
        self.step, self.epoch, self.batches_done = state["step"], state["epoch"], state["batches_done"]
        self.samples, self.skipped = state["samples"], state["skipped"]
        if self.accelerator.is_main_process and (self.output_dir / LOG_FILE).is_file():
            kept = [
                line
                for line in (self.output_dir / LOG_FILE).read_text().splitlines()
                if json.loads(line).get("step", 0) <= self.step
            ]
            (self.output_dir / LOG_FILE).write_text("".join(line + "\n" for line in kept))
        self.print(f"Resumed from {path} at update {self.step} (epoch {self.epoch}).")
