"""Pre-training with Accelerate: the paper's upstream recipe, on one CPU, many GPUs or TPUs, with the same code.

Adam(0.9, 0.999) with decoupled weight decay 0.1, linear warm-up and linear (or cosine) decay, gradient clipping
at global norm 1, the representation layer on. The training step has no host syncs and fixed shapes, so XLA
compiles it once; the loss is checked for non-finite values only where the host looks anyway (logging,
evaluation, checkpoints).
"""

import argparse
import ast
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelCard
from torch.nn import functional as F

from ..models.configuration import HybridVisionTransformerConfig, to_pair
from ..models.modeling import VisionTransformerForMaskedPatchPrediction, mean_colour_classes
from ..models.modeling_hybrid import HybridVisionTransformerForMaskedPatchPrediction
from ..models.presets import create_config, resolve_preset
from ..models.processing import create_image_processor
from ..tools.hub import push_model
from ..tools.model_card import hub_id, render_model_card
from .cli import add_run_arguments
from .data import Collate, ImageData, ImageSamples, StreamedImages, build_transforms, is_digits, load_image_data
from .runtime import DataWait, ThreadGovernor, loader_options
from .transforms import Normalize

PAPER_RUN_STEPS = 300_000  # ~90 epochs of ImageNet-21k at batch 4096, over which the paper warms up 10k steps
PAPER_WARMUP_STEPS = 10_000
STATE_FILE = "trainer_state.json"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops and no checkpoint is written after it."""


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, optimisation and run flags of pretrain.py."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="ViT-Ti/16", help="A preset (see hf_vit.list_presets()) or a saved folder.")
    model.add_argument("--config-overrides", default="", help='Config fields as "k=v,...", e.g. "num_hidden_layers=6".')
    model.add_argument("--objective", choices=("classification", "masked-patch"), default="classification")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--per-device-batch-size", type=int, default=64)
    opt.add_argument("--gradient-accumulation-steps", type=int, default=1)
    opt.add_argument("--learning-rate", type=float, default=1e-3)
    opt.add_argument("--weight-decay", type=float, default=0.1, help="Decoupled (AdamW) weight decay.")
    opt.add_argument("--adam-beta1", type=float, default=0.9)
    opt.add_argument("--adam-beta2", type=float, default=0.999)
    opt.add_argument("--warmup-steps", type=int, default=None, help="Default: the paper's 10k of 300k, scaled.")
    opt.add_argument("--lr-schedule", choices=("linear", "cosine"), default="linear")
    opt.add_argument("--max-steps", type=int, default=None, help="Optimizer updates; overrides --epochs.")
    opt.add_argument("--epochs", type=float, default=None, help="Default 30 for the built-in digits, else 90.")
    opt.add_argument("--grad-clip", type=float, default=1.0, help="Global gradient norm clip; 0 turns it off.")
    opt.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of a model trained on the CPU. Default: the cores the rest of the machine leaves free, "
        "re-read every few seconds (OMP_NUM_THREADS fixes it too).",
    )
    add_run_arguments(parser, output_dir="outputs/pretrain")


def parse_overrides(text: str) -> dict[str, Any]:
    """Parse "k=v,k2=v2" with Python literals (never eval): numbers, booleans, None, tuples, strings."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _split_top_level(text))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config-overrides item {item!r} is not key=value.")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return overrides


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so "resnet_layers=(3,4,9),hidden_size=64" has two items."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def build_model(args: argparse.Namespace, data: ImageData):
    """A preset or a saved folder/repo, sized to the data (classes, resolution), for the chosen objective."""
    from transformers import AutoConfig, AutoModelForImageClassification

    overrides = parse_overrides(args.config_overrides)
    if args.image_size:
        overrides["image_size"] = args.image_size
    names = data.label_names
    labels = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    if is_preset(args.model):
        overrides.setdefault("image_size", 32 if is_digits(args) else 224)
        config = create_config(args.model, **overrides, **labels)
        if "representation_size" not in overrides:  # the paper pre-trains with the pre-logits layer
            config.representation_size = config.hidden_size
        if args.objective == "masked-patch":
            return masked_patch_class(config)(config)
        return AutoModelForImageClassification.from_config(config)
    config = AutoConfig.from_pretrained(args.model, **overrides, **labels)
    if args.objective == "masked-patch":
        return masked_patch_class(config).from_pretrained(args.model, config=config)
    return AutoModelForImageClassification.from_pretrained(args.model, config=config, ignore_mismatched_sizes=True)


def masked_patch_class(config) -> type:
    """The masked-patch-prediction model for a ViT or hybrid config."""
    if isinstance(config, HybridVisionTransformerConfig):
        return HybridVisionTransformerForMaskedPatchPrediction
    return VisionTransformerForMaskedPatchPrediction


def is_preset(name: str) -> bool:
    try:
        resolve_preset(name)
    except ValueError:
        return False
    return True


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and kernels only, not biases, norms, tokens or position embeddings (as is usual for ViT)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or "position_embeddings" in name or name.endswith("_token")
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate_at(step: int, base: float, warmup: int, total: int, schedule: str) -> float:
    """Linear warm-up to `base`, then linear or cosine decay to zero at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * progress))
    return base * (1 - progress)


def default_warmup(total_steps: int) -> int:
    """The paper's 10k warm-up steps of a ~300k-step run, scaled to this run's length."""
    return max(1, min(PAPER_WARMUP_STEPS, round(total_steps * PAPER_WARMUP_STEPS / PAPER_RUN_STEPS)))


def mixup(pixels: torch.Tensor, labels: torch.Tensor, alpha: float, num_classes: int) -> tuple[torch.Tensor, ...]:
    """Blend each image with the batch reversed; soft targets blend the same way (one Beta draw on the host)."""
    lam = float(np.random.beta(alpha, alpha))
    targets = F.one_hot(labels, num_classes).float()
    return lam * pixels + (1 - lam) * pixels.flip(0), lam * targets + (1 - lam) * targets.flip(0)


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_checkpoint(value: str, output_dir: Path) -> Path:
    """`latest` is the newest complete checkpoint in the output dir; anything else is a path."""
    if value == "latest":
        found = _checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume-from-checkpoint latest: no checkpoint-* folder in {output_dir}.")
        return found[-1]
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume-from-checkpoint {value}: not a checkpoint folder (no {STATE_FILE}).")
    return path


def load_models_on_host(models: list[torch.nn.Module], input_dir: str) -> None:
    """Load checkpointed weights for accelerate's `load_state` on XLA, where safetensors cannot write into device
    tensors: read each file on the host, copy it in, and take the model off the list accelerate still loads."""
    from safetensors.torch import load_file

    for index, model in enumerate(models):
        name = "model.safetensors" if index == 0 else f"model_{index}.safetensors"
        model.load_state_dict(load_file(os.path.join(input_dir, name)))
    models.clear()


class Trainer:
    """The loop: one object so that checkpoints, evaluation and resume share the run's state."""

    def __init__(self, args: argparse.Namespace):
        from accelerate import Accelerator, DistributedType
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        self.args = args
        self.output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=None if args.report_to == "none" else args.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir)),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        )
        self.threads = ThreadGovernor.for_device(self.accelerator.device, args.threads)
        self.normalize = Normalize()  # uint8 batches are scaled to [-1, 1] on the device
        self.data_wait = DataWait()
        set_seed(args.seed)
        self.data = load_image_data(args, seed=args.seed)
        self.model = build_model(args, self.data)
        self.image_size = to_pair(self.model.config.image_size)
        self.train_loader = self._loader(self.data.train, train=True)
        self.eval_loader = self._loader(self.data.eval, train=False)
        optimizer = torch.optim.AdamW(
            decay_groups(self.model, args.weight_decay),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
        )
        self.model, self.optimizer, self.train_loader, self.eval_loader = self.accelerator.prepare(
            self.model, optimizer, self.train_loader, self.eval_loader
        )
        if self.accelerator.distributed_type == DistributedType.XLA:
            # Accelerate's XLA loader wrapper lacks the `dataset` that save_state/load_state read (accelerate 1.15):
            # checkpoint the DataLoaderShard inside it, which holds the same seeded sampler.
            self.accelerator._dataloaders = [getattr(dl, "dataloader", dl) for dl in self.accelerator._dataloaders]
            self.accelerator.register_load_state_pre_hook(load_models_on_host)
        self.total_steps = self._total_steps()
        self.warmup = args.warmup_steps if args.warmup_steps is not None else default_warmup(self.total_steps)
        self.step = 0
        self.epoch = 0
        self.batches_done = 0  # micro-batches of the current epoch already consumed
        self.skipped = 0
        self.train_loss = 0.0
        self.samples = 0

    def _loader(self, dataset, train: bool) -> torch.utils.data.DataLoader:
        transform = build_transforms(self.args, self.image_size, train, uint8=True)
        columns = (self.data.image_column, self.data.label_column)
        if self.data.streaming:
            if train:
                dataset = dataset.shuffle(seed=self.args.seed, buffer_size=1000)
            samples = StreamedImages(dataset, transform, *columns)
        else:
            samples = ImageSamples(dataset, transform, *columns, seed=self.args.seed)
        return torch.utils.data.DataLoader(
            samples,
            batch_size=self.args.per_device_batch_size,
            shuffle=train and not self.data.streaming,
            drop_last=train,
            collate_fn=Collate(fixed_size=train),
            **loader_options(self.args.num_workers, self.accelerator.device),
        )

    def _total_steps(self) -> int:
        if self.args.max_steps:
            return self.args.max_steps
        if self.data.streaming:
            raise ValueError("A streamed dataset has no length: pass --max-steps.")
        epochs = self.args.epochs or (30 if is_digits(self.args) else 90)
        updates_per_epoch = max(1, len(self.train_loader) // self.args.gradient_accumulation_steps)
        return max(1, round(epochs * updates_per_epoch))

    # -- the step ---------------------------------------------------------------------------------------------------

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels, labels = self.normalize(batch["pixel_values"]), batch["labels"]
        if self.args.objective == "masked-patch":
            return self.model(pixel_values=pixels).loss
        if self.args.mixup > 0:
            pixels, targets = mixup(pixels, labels, self.args.mixup, len(self.data.label_names))
            return F.cross_entropy(self.model(pixel_values=pixels).logits.float(), targets)
        return F.cross_entropy(self.model(pixel_values=pixels).logits.float(), labels)

    def print(self, message: str) -> None:
        """Print once per run: accelerate's own `print` asks for the local main process, which XLA on the CPU
        reports as local index -1, so it would stay silent there."""
        if self.accelerator.is_main_process:
            print(message, flush=True)

    def train(self) -> dict[str, float]:
        from tqdm.auto import tqdm

        accelerator, args = self.accelerator, self.args
        if args.resume_from_checkpoint:
            self.load_checkpoint(resolve_checkpoint(args.resume_from_checkpoint, self.output_dir))
        accelerator.init_trackers("hf_vit_pretrain", config={k: str(v) for k, v in vars(args).items()})
        device = accelerator.device
        self.print(
            f"Training on {device} ({accelerator.distributed_type.value}, {accelerator.num_processes} processes)."
        )
        running = torch.zeros((), device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        running_count = 0
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not accelerator.is_main_process, desc="train")
        self.start_time, start_step = time.perf_counter(), self.step
        self.model.train()
        while self.step < self.total_steps:
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
                with accelerator.accumulate(self.model):
                    loss = self._loss(batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if args.grad_clip > 0:
                            accelerator.clip_grad_norm_(self.model.parameters(), args.grad_clip)
                        lr = learning_rate_at(
                            self.step, args.learning_rate, self.warmup, self.total_steps, args.lr_schedule
                        )
                        for group in self.optimizer.param_groups:
                            group["lr"] = lr
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                finite &= torch.isfinite(loss.detach())
                running += loss.detach()
                running_count += 1
                self.samples += batch["pixel_values"].shape[0] * accelerator.num_processes
                if accelerator.sync_gradients:
                    self.step += 1
                    bar.update(1)
                    if self.threads is not None:
                        self.threads.update()
                    if self._after_update(running, running_count, finite, bar):
                        running.zero_()
                        running_count = 0
                    if self.step >= self.total_steps:
                        break
            else:
                if not seen and not self.batches_done:
                    raise ValueError(
                        "the training data gave no full batch: it has fewer images than --per-device-batch-size "
                        f"({args.per_device_batch_size}) × {accelerator.num_processes} processes; lower the batch size."
                    )
                self.epoch += 1
                self.batches_done = 0
        bar.close()
        elapsed = time.perf_counter() - self.start_time
        data_wait_share = self._mean(self.data_wait.share(elapsed))
        metrics = self.evaluate()
        results = {
            **metrics,
            "train_loss": self.train_loss,
            "train_steps": self.step,
            "train_samples_per_second": self.samples / elapsed if self.step > start_step else 0.0,
            "train_runtime_seconds": elapsed,
            "train_data_wait_share": data_wait_share,
            "train_cpu_threads": self.threads.threads if self.threads is not None else None,
            "skipped_images": self._total(self.skipped + self.eval_skipped),
        }
        self.save_final(results)
        accelerator.end_training()
        return results

    def _after_update(self, running: torch.Tensor, count: int, finite: torch.Tensor, bar) -> bool:
        """Log, evaluate and checkpoint on their schedules (the only host syncs); True when the loss was logged."""
        accelerator, args = self.accelerator, self.args
        at_end = self.step >= self.total_steps
        logged = self.step % args.logging_every == 0 or at_end
        if logged:
            self._check_finite(finite)
            self.train_loss = accelerator.reduce(running, "mean").item() / count
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{self.train_loss:.4f}", lr=f"{lr:.2e}")
            wait = self.data_wait.share(time.perf_counter() - self.start_time)
            accelerator.log(
                {"train_loss": self.train_loss, "learning_rate": lr, "data_wait_share": wait}, step=self.step
            )
            self._log_line(
                {"step": self.step, "train_loss": self.train_loss, "learning_rate": lr, "data_wait_share": wait}
            )
        if args.eval_every and self.step % args.eval_every == 0 and not at_end:
            self._check_finite(finite)
            metrics = self.evaluate()
            accelerator.log(metrics, step=self.step)
            self._log_line({"step": self.step, **metrics})
        if self.step % args.save_every == 0 or at_end:
            self._check_finite(finite)
            self.save_checkpoint()
        return logged

    def _check_finite(self, finite: torch.Tensor) -> None:
        if not bool(self.accelerator.reduce(finite.float(), "min").item()):
            last = _checkpoints(self.output_dir)
            where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"
            raise NonFiniteLossError(
                f"The training loss became NaN or infinite by update {self.step}; stopping ({where}). "
                "Lower --learning-rate, raise --warmup-steps or check the data."
            )

    def _mean(self, value: float) -> float:
        """Average a per-process host value over all processes."""
        return float(self.accelerator.reduce(torch.tensor(value, device=self.accelerator.device), "mean").item())

    def _total(self, count: int) -> int:
        """Sum a per-process host count over all processes."""
        return int(self.accelerator.reduce(torch.tensor(count, device=self.accelerator.device), "sum").item())

    def _log_line(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")

    # -- evaluation -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and top-1 accuracy on the eval split (for masked-patch: accuracy of the predicted colours)."""
        accelerator = self.accelerator
        self.model.eval()
        total_loss = torch.zeros((), device=accelerator.device)
        correct = torch.zeros((), device=accelerator.device)
        count = torch.zeros((), device=accelerator.device)
        self.eval_skipped = 0
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.args.seed)  # the same corruption every evaluation for masked-patch
        for batch in self.eval_loader:
            self.eval_skipped += batch.pop("skipped")
            if batch["pixel_values"].numel() == 0:
                continue
            pixels, labels = self.normalize(batch["pixel_values"]), batch["labels"]
            if self.args.objective == "masked-patch":
                model = accelerator.unwrap_model(self.model)
                batch_size, tokens = pixels.shape[0], model.vit.embeddings.position_embeddings.shape[1]
                tokens -= model.vit.embeddings.num_prefix_tokens
                predicted, masked, sources = model.corrupt(batch_size, tokens, pixels.device)
                out = self.model(
                    pixel_values=pixels, predicted_pos=predicted, bool_masked_pos=masked, source_patches=sources
                )
                targets = mean_colour_classes(pixels, model.config.token_stride)
                hits = (out.logits.argmax(-1) == targets) & predicted
                weight = predicted.sum()
                total_loss += out.loss * weight
                correct += hits.sum()
                count += weight
            else:
                logits = self.model(pixel_values=pixels).logits.float()
                logits, labels = accelerator.gather_for_metrics((logits, labels))
                total_loss += F.cross_entropy(logits, labels, reduction="sum")
                correct += (logits.argmax(-1) == labels).sum()
                count += labels.numel()
        torch.random.set_rng_state(generator_state)
        if self.args.objective == "masked-patch":
            total_loss, correct, count = (accelerator.reduce(t, "sum") for t in (total_loss, correct, count))
        self.model.train()
        count_value = max(1.0, count.item())
        return {"eval_loss": total_loss.item() / count_value, "eval_accuracy": correct.item() / count_value}

    # -- checkpoints ------------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """`accelerator.save_state` into a temporary folder, renamed into place once complete; keep the newest few."""
        accelerator = self.accelerator
        final = self.output_dir / f"checkpoint-{self.step}"
        staging = self.output_dir / f".tmp-checkpoint-{self.step}"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batches_done": self.batches_done,
                "samples": self.samples,
                "skipped": self.skipped,
                "total_steps": self.total_steps,
                "warmup": self.warmup,
            }
            (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
            for old in _checkpoints(self.output_dir)[: -self.args.save_total_limit]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer, RNG and the data position; the schedule follows from the step."""
        self.accelerator.load_state(str(path))
        state = json.loads((path / STATE_FILE).read_text())
        self.step, self.epoch, self.batches_done = state["step"], state["epoch"], state["batches_done"]
        self.samples, self.skipped = state["samples"], state["skipped"]
        self.print(f"Resumed from {path} at update {self.step} (epoch {self.epoch}).")

    def save_final(self, results: dict[str, float]) -> None:
        """The model, its image processor, a model card and all_results.json in the output dir."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        model = accelerator.unwrap_model(self.model)
        # Host copies: safetensors cannot read tensors that live on an XLA device.
        state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        model.save_pretrained(self.output_dir, state_dict=state_dict)
        processor = create_image_processor(model.config)
        processor.save_pretrained(self.output_dir)
        (self.output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        self._card(model, results).save(self.output_dir / "README.md")
        if self.args.push_to_hub:
            push_model(self.output_dir, self.args.push_to_hub)

    def _card(self, model, results: dict[str, float]) -> ModelCard:
        """What was trained on what, for how long, and how well it did on the held-out data."""
        args = self.args
        dataset = "scikit-learn's digits" if is_digits(args) else args.dataset
        objective = "image classification" if args.objective == "classification" else "masked patch prediction"
        height, width = to_pair(model.config.image_size)
        source = (
            f"Pre-trained from scratch with hf_vit's `scripts/pretrain.py` on {dataset} ({objective}): {self.step} "
            f"updates of {args.per_device_batch_size * args.gradient_accumulation_steps} images per device at "
            f"{height}×{width} px, peak learning rate {args.learning_rate:g}, weight decay {args.weight_decay:g}. "
            f"Held-out loss {results['eval_loss']:.4f}."
        )
        on_hub = not is_digits(args) and hub_id(args.dataset)
        return render_model_card(
            model,
            source=source,
            model_id=args.push_to_hub or str(self.output_dir),
            datasets=[args.dataset] if on_hub else None,
            results={"accuracy": results["eval_accuracy"]} if args.objective == "classification" else None,
            results_dataset=dataset,
            results_split=args.eval_split or "held-out",
        )
