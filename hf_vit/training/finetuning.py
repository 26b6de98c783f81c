"""`finetune`: the paper's downstream recipe (or another named recipe) on a pre-trained ViT, with transformers' Trainer.

The pre-trained head and representation (pre-logits) layer are dropped, a zero-initialised head for the new classes
takes their place, and the position embeddings are resized to the fine-tuning resolution. The paper's recipe: SGD
with momentum 0.9, a linear warm-up then cosine decay, no weight decay, gradient clipping at global norm 1 and
batch 512 (reached by gradient accumulation).
"""

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from transformers import PretrainedConfig, PreTrainedModel, TrainerCallback, TrainingArguments

from ..loading import load_model, model_source
from ..models.configuration import POS_EMBED_INTERPOLATIONS, to_pair
from ..models.processing import create_image_processor
from ..tools.model_card import hub_id, render_model_card, weight_changes
from ..transfer import replace_head, resize_to
from .arguments import FinetuningArguments
from .augmentation import ProcessorTransform, build_transforms
from .checkpoints import (
    STAGING_FINAL,
    disk_full_as_oserror,
    move_into_place,
    non_finite_parameters,
    resolve_checkpoint,
    staging_folder,
)
from .data import Collate, ImageSamples, StreamedImages, dataset_title, load_image_data, worker_count
from .lora import BASE_FOLDER, add_lora, point_at_base, save_base, save_merged
from .metrics import TOP_K, classification_metrics
from .optimization import warmup_length
from .run import cpu_only_processes, default_interval, prepare_output_dir
from .stops import StopRequests
from .trainer import FinetuningTrainer, StopOnNonFinite, StopOnSignal, any_process, diverged


def prepare_for_finetuning(
    model: torch.nn.Module,
    num_labels: int,
    id2label: dict[int, str] | None = None,
    image_size: int | tuple[int, int] | None = None,
    interpolation: str | None = None,
) -> torch.nn.Module:
    """A new model for fine-tuning from a pre-trained hf_vit classifier, which is left untouched.

    The new model has `num_labels` classes with a zero-initialised head, no representation layer, and position
    embeddings resized from the old token grid to that of `image_size` with `interpolation` ("official" or
    "bicubic"; default the model's `config.pos_embed_interpolation`, which the new config keeps).
    """
    if not (hasattr(model, "vit") and hasattr(model, "classifier") and hasattr(model.config, "grid_size")):
        raise ValueError(
            f"Fine-tuning needs an hf_vit image classifier; got {type(model).__name__}. Convert the checkpoint "
            "to hf_vit first."
        )
    if num_labels < 1:
        raise ValueError(f"num_labels must be positive, got {num_labels}.")
    if interpolation is not None and interpolation not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {POS_EMBED_INTERPOLATIONS}, got {interpolation!r}.")
    id2label = {int(i): str(name) for i, name in (id2label or {i: f"LABEL_{i}" for i in range(num_labels)}).items()}
    if sorted(id2label) != list(range(num_labels)):
        raise ValueError(f"id2label must name classes 0..{num_labels - 1}; it has keys {sorted(id2label)[:10]}.")
    config = copy.deepcopy(model.config)
    config.pos_embed_interpolation = interpolation or config.pos_embed_interpolation
    config.problem_type = None
    config.architectures = [type(model).__name__]
    state = dict(model.state_dict())
    resize_to(config, state, config.image_size if image_size is None else image_size)
    replace_head(config, state, id2label)
    parameter = next(model.parameters())
    new_model = type(model)(config).to(device=parameter.device, dtype=parameter.dtype)
    new_model.load_state_dict(state, strict=True)
    return new_model.train(model.training)


def default_accumulation(total_batch_size: int, per_device: int, world_size: int) -> int:
    """Micro-batches per update so that an update sees at least `total_batch_size` images."""
    return max(1, math.ceil(total_batch_size / (per_device * world_size)))


class TrainerCollate(Collate):
    """Collate for the Trainer: it passes every key to the model, so the count of skipped images is dropped."""

    def __call__(self, items: list) -> dict[str, Any]:
        batch = super().__call__(items)
        batch.pop("skipped")
        return batch


class EpochAugmentation(TrainerCallback):
    """Tell the training samples the epoch, so that their seeded augmentation differs from epoch to epoch.

    Accelerate forwards `set_epoch` to the sampler rather than the dataset when the sampler has one, as the Trainer's
    does; this callback (added to the Trainer) reaches the dataset before each epoch's data loader starts.
    """

    def __init__(self, samples):
        self.samples = samples

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        self.samples.set_epoch(math.floor(state.epoch + 1e-6))


def top_k_indices(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """Keep the best classes of each image on device, not all logits: all the metrics need, and small to gather."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.topk(min(TOP_K, logits.shape[-1]), dim=-1).indices


class ComputeMetrics:
    """The Trainer's compute_metrics: accuracy (and top-5 accuracy) through the metric modules shipped in hf_vit."""

    def __init__(self, num_labels: int):
        self.num_labels = num_labels

    def __call__(self, prediction) -> dict[str, float]:
        return classification_metrics(prediction.predictions, prediction.label_ids, self.num_labels)


def training_arguments(args: FinetuningArguments) -> TrainingArguments:
    """transformers' TrainingArguments for this run: the recipe's optimiser, schedule, batch and intervals."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = args.gradient_accumulation_steps or default_accumulation(
        args.total_batch_size, args.per_device_batch_size, world_size
    )
    interval = default_interval(args.max_steps)
    return TrainingArguments(
        output_dir=args.output_dir,
        use_cpu=cpu_only_processes(),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_batch_size,
        per_device_eval_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=args.learning_rate,
        optim="sgd",
        optim_args=f"momentum={args.momentum}",
        weight_decay=args.weight_decay,
        lr_scheduler_type=args.lr_schedule,
        warmup_steps=warmup_length(args.max_steps, args.warmup_steps, args.warmup_ratio),
        max_grad_norm=args.grad_clip,
        bf16=args.bf16,
        torch_compile=args.torch_compile,
        activation_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_every,
        eval_strategy="steps",
        eval_steps=args.eval_every or interval,
        save_strategy="steps",
        save_steps=args.save_every or interval,
        save_total_limit=args.save_total_limit,
        seed=args.seed,
        logging_nan_inf_filter=False,  # a NaN loss must reach StopOnNonFinite, not be averaged away
        report_to=args.report_to,
        dataloader_num_workers=worker_count(args),
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        label_names=["labels"],
        label_smoothing_factor=args.label_smoothing,
    )


def finetune(args: FinetuningArguments | None = None, /, **fields: Any) -> dict[str, Any]:
    """Fine-tune a pre-trained model; returns the final metrics (also in `all_results.json` of the output folder).

    Takes `FinetuningArguments`, or its fields as keywords (`finetune(model="outputs/pretrain", image_size=48)`);
    unset fields come from the recipe. The output folder gets the model with its code, processor and card.
    Publishing is a separate step (`hf_vit.tools.hub.push_model` on the output folder).
    """
    from transformers import set_seed

    args = args or FinetuningArguments(**fields)
    source = model_source(args.model)  # a mistyped preset or a missing folder is one line now, before any data
    if args.mixup:
        raise ValueError("--mixup is a pre-training option; the paper fine-tunes without it.")
    if args.lora_rank is not None:
        check_lora_run(args, source)
    prepare_output_dir(args)
    set_seed(args.seed)
    data = load_image_data(args)
    names = data.label_names

    def prepared() -> tuple[PreTrainedModel, list[str]]:
        pretrained = load_model(args.model, trust_remote_code=args.trust_remote_code)
        model = prepare_for_finetuning(
            pretrained,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            image_size=args.image_size,
            interpolation=args.pos_embed_interpolation,
        )
        return model, weight_changes(pretrained.config, model.config, new_head=True)

    model, changes = prepared()
    plain, lora_counts = model, {}
    if args.lora_rank is not None:
        lora_counts["base_parameters"] = sum(param.numel() for param in model.parameters())
        model = add_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
        lora_counts["trainable_parameters"] = sum(param.numel() for param in model.parameters() if param.requires_grad)
    processor = create_image_processor(model.config)
    columns = (data.image_column, data.label_column)
    train_transform = build_transforms(args, to_pair(model.config.image_size), train=True)
    if data.streaming:
        train = StreamedImages(data.train.shuffle(seed=args.seed, buffer_size=1000), train_transform, *columns)
        evaluation = StreamedImages(data.eval, ProcessorTransform(processor), *columns)
    else:
        train = ImageSamples(data.train, train_transform, *columns, seed=args.seed)
        evaluation = ImageSamples(data.eval, ProcessorTransform(processor), *columns)
    with StopRequests() as requests:
        stop_on_signal = StopOnSignal(requests)
        trainer = FinetuningTrainer(
            model=model,
            args=training_arguments(args),
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=TrainerCollate(fixed_size=True),
            processing_class=processor,
            compute_metrics=ComputeMetrics(len(names)),
            preprocess_logits_for_metrics=top_k_indices,
            callbacks=[EpochAugmentation(train), StopOnNonFinite(), stop_on_signal],
            layer_decay=args.layer_decay,
            momentum=args.momentum,
            ema_decay=args.ema_decay,
        )
        resume = args.resume_from_checkpoint
        if resume:
            resume = str(resolve_checkpoint(resume, Path(args.output_dir)))
        trained = trainer.train(resume_from_checkpoint=resume)
    stop_on_signal.raise_if_interrupted(args.output_dir, trainer.state.global_step)
    if any_process(bool(non_finite_parameters(trainer.model))):
        raise diverged(args.output_dir, "weights", trainer.state.global_step)
    trained.metrics["train_steps"] = trainer.state.global_step
    trained.metrics["world_size"] = trainer.args.world_size
    trained.metrics["total_train_batch_size"] = (
        trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps * trainer.args.world_size
    )
    trained.metrics.update(lora_counts)
    trainer.log_metrics("train", trained.metrics)
    metrics = trainer.evaluate()
    if trainer.weight_average is not None:
        trainer.average_into_model()  # the averaged weights are the ones evaluated as eval_* and saved
    trainer.log_metrics("eval", metrics)
    results = {**trained.metrics, **metrics}
    card_inputs = (args, trainer.args, plain.config, results, data.eval_split, changes)
    card, merged_card, lora_base = finetuning_card(*card_inputs, adapter=bool(lora_counts)), None, None
    if lora_counts and trainer.is_world_process_zero():
        lora_base = prepared()[0]  # the adapter's base as it was before training (PEFT put its layers into `plain`)
        merged_card = finetuning_card(*card_inputs) if args.lora_merge else None
    save_finetuned(trainer, card, results, lora_base, merged_card)
    return results


def save_finetuned(
    trainer: FinetuningTrainer,
    card: ModelCard,
    results: dict[str, Any],
    lora_base: PreTrainedModel | None = None,
    merged_card: ModelCard | None = None,
) -> None:
    """The model, processor, card and all_results.json, written aside and moved into the output folder at once.

    A LoRA run's model is its adapter; `lora_base` (given to the main process) is the model it adapts, written to
    OUTPUT_DIR/base before the adapter is moved in, and with `merged_card` the two merged to OUTPUT_DIR/merged.
    """
    output_dir = Path(trainer.args.output_dir)
    staging = output_dir / STAGING_FINAL
    if trainer.is_world_process_zero():
        staging_folder(output_dir)
    with disk_full_as_oserror(staging, "the final model"):
        if lora_base is not None:
            save_base(lora_base, output_dir, trainer.processing_class)
        if hasattr(trainer.model, "peft_config"):  # a PEFT model: its adapter is what is saved
            point_at_base(trainer.model, output_dir)
        trainer.save_model(str(staging))  # every process: sharded weights are gathered
        if trainer.is_world_process_zero():
            (staging / "all_results.json").write_text(json.dumps(results, indent=2))
            card.save(staging / "README.md")
            if merged_card is not None:
                save_merged(lora_base, staging, output_dir, trainer.processing_class, merged_card)
            move_into_place(staging, output_dir)
    trainer.accelerator.wait_for_everyone()


def check_lora_run(args: FinetuningArguments, source: str) -> None:
    """Refuse LoRA runs that cannot give a usable adapter, before anything is loaded."""
    if source == "preset":
        raise ValueError(
            f"--lora-rank adapts pre-trained weights, and --model {args.model!r} is a preset (random weights): give "
            "a pre-trained folder or Hub repo, or fine-tune every weight (no --lora-rank)."
        )
    if args.ema_decay:
        raise ValueError(
            "--ema-decay averages every weight and is not supported with --lora-rank; pass --ema-decay 0 "
            f"(recipe {args.recipe!r} turns it on)."
        )
    if args.push_to_hub:
        raise ValueError(
            "--push-to-hub publishes full models; with --lora-rank add --lora-merge and push OUTPUT_DIR/merged "
            "with scripts/push_to_hub.py."
        )


def finetuning_card(
    args: FinetuningArguments,
    training: TrainingArguments,
    model: PreTrainedModel | PretrainedConfig,
    results: dict[str, Any],
    eval_split: str,
    changes: list[str],
    adapter: bool = False,
) -> ModelCard:
    """The fine-tuned model's card: from what and on what, at what resolution, for how long, and how well.

    A LoRA run (`args.lora_rank`) says so; with `adapter` the card is the adapter's (PEFT's library, how to load it
    onto its base), else that of the plain model it merges into.
    """
    config = getattr(model, "config", model)
    height, width = to_pair(config.image_size)
    dataset = dataset_title(args.dataset)
    dataset_id = hub_id(args.dataset) if dataset == args.dataset else None
    if args.dataset_config:
        dataset += f" ({args.dataset_config})"
    clipping = f"gradient clipping at global norm {args.grad_clip:g}" if args.grad_clip > 0 else "no gradient clipping"
    warmup = f"linear warm-up over {training.warmup_steps} steps, then " if training.warmup_steps else ""
    how = "Fine-tuned"
    if args.lora_rank is not None:
        alpha = args.lora_rank if args.lora_alpha is None else args.lora_alpha
        how = (
            f"{'A LoRA adapter' if adapter else 'LoRA (merged into the weights)'}: rank {args.lora_rank}, alpha "
            f"{alpha:g}, dropout {args.lora_dropout:g} on {', '.join(args.lora_target_modules)}, the head trained in "
            f"full ({results['trainable_parameters']:,} of {results['base_parameters']:,} parameters trained). "
            "Fine-tuned"
        )
    source = (
        f"{how} from `{args.model}` on {dataset} ({config.num_labels} classes) at {height}×{width} px for "
        f"{results['train_steps']} steps with hf_vit's `scripts/finetune.py`: SGD with momentum {args.momentum:g}, "
        f"batch {results['total_train_batch_size']}, peak learning rate {args.learning_rate:g} ({warmup}"
        f"{args.lr_schedule} decay), weight decay {args.weight_decay:g}, {clipping}. "
        f"Held-out loss {results['eval_loss']:.4f}."
    )
    metrics = {"accuracy": results["eval_accuracy"]}
    if f"eval_top{TOP_K}_accuracy" in results:
        metrics[f"top_{TOP_K}_accuracy"] = results[f"eval_top{TOP_K}_accuracy"]
    return render_model_card(
        model,
        source=source,
        changes=changes,
        model_id=args.push_to_hub or args.output_dir,
        datasets=[dataset_id] if dataset_id else None,
        base_model=hub_id(args.model),
        results=metrics,
        results_dataset=dataset_id or dataset,
        results_split=eval_split,
        adapter_base=BASE_FOLDER if adapter else None,
    )
