"""`pretrain`: the paper's upstream recipe (or another named recipe) from a preset or a saved folder, with Accelerate.

Builds the data, model, optimiser and schedule from `PretrainingArguments`, runs `PretrainingLoop`, and writes the
model, its image processor, a model card and `all_results.json` into the output folder.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..loading import load_model, model_source, parse_overrides
from ..models.configuration import to_pair
from ..models.processing import create_image_processor
from ..tools.model_card import hub_id, render_model_card
from ..tools.plotting import save_training_curve
from .arguments import PretrainingArguments
from .augmentation import batch_mixing, build_transforms
from .checkpoints import write_folder_atomically
from .data import Collate, ImageData, ImageSamples, StreamedImages, dataset_title, load_image_data, worker_count
from .loop import LOG_FILE, PretrainingLoop
from .optimization import build_optimizer, build_scheduler, warmup_length, weight_average
from .run import check_world_size, cpu_only_processes, prepare_output_dir
from .runtime import loader_options


def build_model(args: PretrainingArguments, labels: list[str]):
    """A preset (with the representation layer if the recipe says so) or a saved folder, for the objective."""
    overrides = parse_overrides(args.config_overrides)
    if args.image_size:
        overrides["image_size"] = args.image_size
    if args.drop_path_rate:
        overrides.setdefault("drop_path_rate", args.drop_path_rate)
    preset = model_source(args.model) == "preset"
    if preset and args.representation_layer and "representation_size" not in overrides:
        from ..models.presets import create_config

        overrides["representation_size"] = overrides.get("hidden_size", create_config(args.model).hidden_size)
    task = "masked-patch" if args.objective == "masked-patch" else "image-classification"
    return load_model(args.model, task, config_overrides=overrides, labels=labels)


def data_loader(
    dataset, data: ImageData, transform, batch_size: int, train: bool, args: PretrainingArguments, device=None
):
    """Decoded, augmented batches; training batches keep a fixed size (XLA compiles the step once)."""
    columns = (data.image_column, data.label_column)
    if data.streaming:
        if train:
            dataset = dataset.shuffle(seed=args.seed, buffer_size=1000)
        samples = StreamedImages(dataset, transform, *columns)
    else:
        samples = ImageSamples(dataset, transform, *columns, seed=args.seed)
    return torch.utils.data.DataLoader(
        samples,
        batch_size=batch_size,
        shuffle=train and not data.streaming,
        drop_last=train,
        collate_fn=Collate(fixed_size=train),
        **loader_options(worker_count(args), device or torch.device("cpu")),
    )


def total_updates(args: PretrainingArguments, data: ImageData, train_loader) -> int:
    if args.max_steps:
        return args.max_steps
    if data.streaming:
        raise ValueError("A streamed dataset has no length: pass --max-steps.")
    updates_per_epoch = max(1, len(train_loader) // args.gradient_accumulation_steps)
    return max(1, round(args.epochs * updates_per_epoch))


def build_accelerator(args: PretrainingArguments):
    """The run's Accelerator: several processes without GPUs train together on the CPU; the world size checked."""
    from accelerate import Accelerator, DistributedType
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    output_dir = str(args.output_dir)
    accelerator = Accelerator(
        cpu=cpu_only_processes(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),
        fsdp_plugin=fsdp_plugin() if args.fsdp else None,
    )
    check_world_size(accelerator.num_processes)
    if args.fsdp and args.ema_decay:
        raise ValueError("--ema-decay averages whole weights, which --fsdp shards: use one of the two.")
    if args.fsdp and accelerator.distributed_type != DistributedType.FSDP:
        raise ValueError(
            f"--fsdp needs several processes on GPUs: Accelerate shards only there, and this run is "
            f"{accelerator.distributed_type.value} with {accelerator.num_processes} process(es)."
        )
    return accelerator


def fsdp_plugin():
    """FSDP2 over Accelerate: each encoder block (and the embeddings) sharded as one unit, sharded checkpoints."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from ..models.modeling import VisionTransformerPreTrainedModel

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=list(VisionTransformerPreTrainedModel._no_split_modules),
        state_dict_type="SHARDED_STATE_DICT",
        reshard_after_forward=True,
    )


def load_models_on_host(models: list[torch.nn.Module], input_dir: str) -> None:
    """Load checkpointed weights for accelerate's `load_state` on XLA, where safetensors cannot write into device
    tensors: read each file on the host, copy it in, and take the model off the list accelerate still loads."""
    from safetensors.torch import load_file

    for index, model in enumerate(models):
        name = "model.safetensors" if index == 0 else f"model_{index}.safetensors"
        model.load_state_dict(load_file(os.path.join(input_dir, name)))
    models.clear()


def pretrain(args: PretrainingArguments | None = None, /, **fields: Any) -> dict[str, Any]:
    """Pre-train a ViT or hybrid; returns the final metrics (also in `all_results.json` of the output folder).

    Takes `PretrainingArguments`, or its fields as keywords (`pretrain(model="ViT-S/16", dataset=..., max_steps=...)`);
    unset fields come from the recipe. Run it under `accelerate launch` for several devices. Publishing is a separate
    step (`hf_vit.tools.hub.push_model` on the output folder).
    """
    from accelerate import DistributedType
    from accelerate.utils import set_seed

    args = args or PretrainingArguments(**fields)
    model_source(args.model)  # a mistyped preset or a missing folder is one line now, before any data is loaded
    accelerator = build_accelerator(args)
    prepare_output_dir(args)
    set_seed(args.seed)
    data = load_image_data(args)
    model = build_model(args, data.label_names)
    image_size = to_pair(model.config.image_size)
    batch, device = args.per_device_batch_size, accelerator.device
    # uint8 images until the device, where the loop scales them (transforms.Normalize)
    train_loader = data_loader(data.train, data, build_transforms(args, image_size, True, uint8=True), batch, True,
                               args, device)  # fmt: skip
    eval_loader = data_loader(data.eval, data, build_transforms(args, image_size, False, uint8=True), batch, False,
                              args, device)  # fmt: skip
    optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, (args.adam_beta1, args.adam_beta2))
    total = total_updates(args, data, train_loader)
    warmup = warmup_length(total, args.warmup_steps, args.warmup_ratio)
    scheduler = build_scheduler(optimizer, args.lr_schedule, warmup, total)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    accelerator.register_for_checkpointing(scheduler)
    ema = weight_average(accelerator.unwrap_model(model), args.ema_decay)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    if accelerator.distributed_type == DistributedType.XLA:
        # Accelerate's XLA loader wrapper lacks the `dataset` that save_state/load_state read (accelerate 1.15):
        # checkpoint the DataLoaderShard inside it, which holds the same seeded sampler.
        accelerator._dataloaders = [getattr(dl, "dataloader", dl) for dl in accelerator._dataloaders]
        accelerator.register_load_state_pre_hook(load_models_on_host)
    mixing = None if args.objective == "masked-patch" else batch_mixing(args, len(data.label_names))
    loop = PretrainingLoop(
        args, accelerator, model, optimizer, scheduler, train_loader, eval_loader, len(data.label_names), total, mixing,
        ema,
    )  # fmt: skip
    results = loop.run()
    save_final(accelerator, model if ema is None else ema.module, args, results, data)
    accelerator.end_training()
    return results


def save_final(accelerator, model, args: PretrainingArguments, results: dict[str, Any], data: ImageData) -> None:
    """The model, its image processor, a model card and all_results.json, moved into the output folder at once."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # gathers sharded (FSDP) weights; on every process
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
        # Host copies: safetensors cannot read tensors that live on an XLA device.
        state_dict = {name: tensor.detach().cpu() for name, tensor in state_dict.items()}

        def write(folder: Path) -> None:
            model.save_pretrained(folder, state_dict=state_dict)
            create_image_processor(model.config).save_pretrained(folder)
            (folder / "all_results.json").write_text(json.dumps(results, indent=2))
            pretraining_card(model, args, results, data).save(folder / "README.md")

        write_folder_atomically(Path(args.output_dir), write)
        # The run's loss and accuracy against the updates, beside the results (nothing without matplotlib).
        save_training_curve(Path(args.output_dir) / LOG_FILE, Path(args.output_dir) / "training_curve.png")
    accelerator.wait_for_everyone()


def pretraining_card(model, args: PretrainingArguments, results: dict[str, Any], data: ImageData):
    """What was trained on what, for how long, and how well it did on the held-out data."""
    title = dataset_title(args.dataset)
    objective = "image classification" if args.objective == "classification" else "masked patch prediction"
    height, width = to_pair(model.config.image_size)
    batch = args.per_device_batch_size * args.gradient_accumulation_steps * results["world_size"]
    source = (
        f"Pre-trained from scratch with hf_vit's `scripts/pretrain.py` (recipe `{args.recipe}`) on {title} "
        f"({objective}): {results['train_steps']} updates of {batch} images at {height}×{width} px, peak learning "
        f"rate {args.learning_rate:g}, weight decay {args.weight_decay:g}. Held-out loss {results['eval_loss']:.4f}."
    )
    dataset_id = hub_id(args.dataset) if title == args.dataset else None
    return render_model_card(
        model,
        source=source,
        model_id=args.push_to_hub or args.output_dir,
        datasets=[dataset_id] if dataset_id else None,
        results={"accuracy": results["eval_accuracy"]} if args.objective == "classification" else None,
        results_dataset=dataset_id or title,
        results_split=data.eval_split,
    )
