"""Typed arguments of the training and evaluation entry points; the scripts parse them with `HfArgumentParser`.

Each entry point takes one dataclass composed of the groups it uses (data, augmentation, run), so `--help` lists
only what a command reads. Fields that a recipe sets default to None and are filled from the recipe
(`hf_vit.training.recipes`) when the dataclass is built; every value is checked there too, so a bad flag is one
clear error before anything is loaded. This module imports neither torch nor transformers: `--help` stays fast.
"""

import copy
import math
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from .recipes import RECIPES, default_recipe, recipe_defaults

# The encoder's Linear layers (hf_vit.models.modeling): attention's fused query/key/value and output projections,
# and the MLP's two layers. The head is trained in full, not adapted.
LORA_TARGETS = ["qkv", "proj", "fc1", "fc2"]


def arg(default: Any = None, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with the help text (and other argparse settings) that HfArgumentParser shows."""
    return field(default=default, metadata={"help": help, **metadata})


def recipe_arg(help: str, **metadata: Any) -> Any:
    return arg(None, f"{help} Default: the recipe's", **metadata)


def _finite_at_least(low: float, inclusive: bool = True):
    def check(value: float) -> bool:
        return math.isfinite(value) and (value >= low if inclusive else value > low)

    return check


# Field -> (what it must be, test). Every entry point's fields are checked against the rules for their names.
RULES: dict[str, tuple[str, Any]] = {
    **{
        name: ("a positive integer", lambda v: v >= 1)
        for name in (
            "per_device_batch_size",
            "gradient_accumulation_steps",
            "total_batch_size",
            "logging_every",
            "save_every",
            "eval_every",
            "save_total_limit",
            "max_steps",
            "image_size",
            "batch_size",
            "seeds",
            "shots",
            "threads",
        )
    },
    "num_workers": ("a non-negative integer", lambda v: v >= 0),
    "warmup_steps": ("a non-negative integer", lambda v: v >= 0),
    "epochs": ("a positive number", _finite_at_least(0, inclusive=False)),
    "learning_rate": ("a positive number below 3.4e38 (the largest float32)", lambda v: 0 < v < 3.4e38),
    "weight_decay": ("a non-negative finite number", _finite_at_least(0)),
    "grad_clip": ("a non-negative finite number (0 turns clipping off)", _finite_at_least(0)),
    "mixup": ("a non-negative finite number (0 turns mixup off)", _finite_at_least(0)),
    "cutmix": ("a non-negative finite number (0 turns CutMix off)", _finite_at_least(0)),
    "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
    "drop_path_rate": ("in [0, 1)", lambda v: 0 <= v < 1),
    "ema_decay": ("in [0, 1) (0 turns the average off)", lambda v: 0 <= v < 1),
    "layer_decay": ("in (0, 1] (1 turns it off)", lambda v: 0 < v <= 1),
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "adam_beta1": ("in [0, 1)", lambda v: 0 <= v < 1),
    "adam_beta2": ("in [0, 1)", lambda v: 0 <= v < 1),
    "warmup_ratio": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "eval_fraction": ("in (0, 1)", lambda v: 0 < v < 1),
    "random_crop_scale": ("in (0, 1] (1 turns cropping off)", lambda v: 0 < v <= 1),
    "l2_reg": ("a non-negative finite number", _finite_at_least(0)),
    "lora_rank": ("a positive integer (the rank of each low-rank update)", lambda v: v >= 1),
    "lora_alpha": ("a positive finite number", _finite_at_least(0, inclusive=False)),
    "lora_dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
}


def check_values(args: Any) -> None:
    """Raise a ValueError naming the flag of the first value that breaks its rule."""
    for item in fields(args):
        value = getattr(args, item.name)
        if item.name not in RULES:
            continue
        description, test = RULES[item.name]
        for single in value if isinstance(value, list) else [value]:
            if single is not None and (isinstance(single, bool) or not test(single)):
                flag = "--" + item.name.replace("_", "-")
                raise ValueError(f"{flag} must be {description}; got {single!r}.")


@dataclass
class DataArguments:
    """Which images, which columns, which split is held out."""

    dataset: str = arg(
        "digits",
        "'digits' (scikit-learn's 1,797 handwritten digits, built in), a Hub dataset id, an imagefolder directory, "
        "or parquet / webdataset (.tar) files (comma-separated or a glob).",
    )
    dataset_config: str | None = arg(None, "Configuration name of a Hub dataset.")
    image_column: str | None = arg(None, "Default: the first of image, img, jpg, png, webp, pixel_values.")
    label_column: str | None = arg(None, "Default: the first of label, labels, cls, fine_label, class.")
    train_split: str = arg("train", "The split to train on (and to hold a fraction out of).")
    eval_split: str | None = arg(
        None,
        "The split to evaluate on; default 'validation' or 'test' if present, else a held-out fraction of the "
        "training split (--eval-fraction).",
    )
    eval_fraction: float = arg(0.1, "Held out of the training split when there is no eval split.")
    image_size: int | None = arg(None, "Resolution (default: the model's, or the recipe's for a preset).")
    streaming: bool = arg(False, "Stream the data instead of downloading it whole.")
    num_workers: int | None = arg(
        None,
        "DataLoader worker processes. Default: 0 when the model runs on the CPU, else the cores per process less one, "
        "at most 8.",
    )
    seed: int = arg(0, "Seeds the held-out split, and in training the initialisation, order and augmentation.")


@dataclass
class AugmentationArguments:
    """Training-time augmentation (the inception crop, flips, RandAugment, mixup and CutMix)."""

    random_crop_scale: float | None = recipe_arg(
        "Smallest area fraction of the inception crop (officially 0.05); 1 turns cropping off."
    )
    hflip: bool | None = recipe_arg("Random horizontal flips (`--hflip false` turns them off).")
    randaugment: str | None = arg(None, "RandAugment as N,M: N ops of magnitude M.", metavar="N,M")
    mixup: float | None = recipe_arg("Mixup with Beta(ALPHA, ALPHA); 0 turns it off.", metavar="ALPHA")
    cutmix: float | None = recipe_arg(
        "CutMix with Beta(ALPHA, ALPHA); 0 turns it off (with mixup too: one of the two per batch).", metavar="ALPHA"
    )


@dataclass
class RunArguments:
    """Where the run writes, how often it logs, evaluates and checkpoints, and where it is published."""

    output_dir: str = arg("outputs/run", "Where the model, checkpoints, logs and results go.")
    eval_every: int | None = arg(None, "Evaluate every N updates (and at the end); default: 5 times per run.")
    save_every: int | None = arg(
        None, "Checkpoint every N updates (and at the end); default: 5 times per run, at most 1,000 updates apart."
    )
    save_total_limit: int = arg(2, "Rotating checkpoints kept.")
    logging_every: int = arg(20, "Log the training loss every N updates.")
    resume_from_checkpoint: str | None = arg(None, "A checkpoint folder, or 'latest'.", metavar="PATH|latest")
    overwrite_output_dir: bool = arg(False, "Write into an output folder that holds an earlier run (it is replaced).")
    report_to: str = arg("none", "Trackers: tensorboard, wandb, ... or none.")
    push_to_hub: str | None = arg(None, "Push the final model to this Hub repo.", metavar="ORG/NAME")


class RecipeMixin:
    """Fill the unset fields from the recipe, then check every value."""

    task: str  # the recipes' key for this entry point

    def __post_init__(self) -> None:
        self.recipe = self.recipe or default_recipe(self.dataset)
        for name, value in recipe_defaults(self.recipe, self.task).items():
            if getattr(self, name, value) is None:
                setattr(self, name, value)
        check_values(self)


def show_recipe_defaults(cls: type) -> type:
    """Say in each recipe field's help what every recipe sets it to (argparse would show its None default)."""
    for item in fields(cls):
        values = {name: getattr(recipe, cls.task).get(item.name) for name, recipe in RECIPES.items()}
        if item.default is None and any(value is not None for value in values.values()):
            shown = ", ".join(f"{name}: {value}" for name, value in values.items() if value is not None)
            own = copy.copy(item)  # the groups' fields are shared by the entry points, whose recipes differ
            # "%(default).0s" prints nothing, and stops argparse from adding "(default: None)".
            own.metadata = MappingProxyType(
                {**item.metadata, "help": f"{item.metadata['help']} ({shown})%(default).0s"}
            )
            cls.__dataclass_fields__[item.name] = own
    return cls


RECIPE_HELP = "Named defaults: " + "; ".join(f"{name}: {recipe.description}" for name, recipe in RECIPES.items())


@show_recipe_defaults
@dataclass
class PretrainingArguments(RunArguments, AugmentationArguments, DataArguments, RecipeMixin):
    """Everything `hf_vit.pretrain` and scripts/pretrain.py take."""

    task = "pretraining"
    recipe: str | None = arg(
        None, RECIPE_HELP + " Default: digits without --dataset, else paper.", choices=list(RECIPES)
    )
    model: str | None = recipe_arg("A preset (see hf_vit.list_presets()) or a saved folder.")
    config_overrides: str = arg("", 'Config fields as "k=v,...", e.g. "num_hidden_layers=6".')
    objective: Literal["classification", "masked-patch"] = arg("classification", "What the model learns.")
    representation_layer: bool | None = recipe_arg("Add the pre-logits layer (Dense + tanh) to a preset.")
    drop_path_rate: float | None = recipe_arg("Stochastic depth of the last block (linear from 0 in the first).")
    label_smoothing: float | None = recipe_arg("Label smoothing of the classification loss.")
    ema_decay: float | None = recipe_arg(
        "Decay of an exponential moving average of the weights, evaluated and saved instead of them; 0 turns it off."
    )
    per_device_batch_size: int | None = recipe_arg("Images per device per micro-batch.")
    gradient_accumulation_steps: int = arg(1, "Micro-batches per update.")
    learning_rate: float | None = recipe_arg("Peak learning rate.")
    weight_decay: float | None = recipe_arg("Decoupled (AdamW) weight decay.")
    adam_beta1: float = arg(0.9, "Adam beta1.")
    adam_beta2: float = arg(0.999, "Adam beta2.")
    warmup_steps: int | None = recipe_arg("Linear warm-up: at most this many updates, ...")
    warmup_ratio: float | None = recipe_arg("... and at most this fraction of the run.")
    lr_schedule: Literal["linear", "cosine"] | None = recipe_arg("Decay after the warm-up.")
    max_steps: int | None = arg(None, "Optimizer updates; overrides --epochs.")
    epochs: float | None = recipe_arg("Passes over the training data.")
    grad_clip: float | None = recipe_arg("Global gradient-norm clip; 0 turns it off.")
    threads: int | None = arg(
        None,
        "CPU threads of a model trained on the CPU. Default: the cores the rest of the machine leaves free, re-read "
        "every few seconds (OMP_NUM_THREADS fixes it too).",
    )
    fsdp: bool = arg(
        False,
        "Shard weights, gradients and optimiser state over the processes (FSDP2 through Accelerate; GPUs only), "
        "for ViT-H/14, R50+ViT-L/32 and larger.",
    )
    output_dir: str = arg("outputs/pretrain", "Where the model, checkpoints, logs and results go.")


@show_recipe_defaults
@dataclass
class FinetuningArguments(RunArguments, AugmentationArguments, DataArguments, RecipeMixin):
    """Everything `hf_vit.finetune` and scripts/finetune.py take; turned into transformers' TrainingArguments.

    Not a subclass of TrainingArguments on purpose: that imports torch at once and lists ~100 flags, where this
    lists the ones fine-tuning reads and answers --help in a fraction of a second.
    """

    task = "finetuning"
    recipe: str | None = arg(
        None, RECIPE_HELP + " Default: digits without --dataset, else paper.", choices=list(RECIPES)
    )
    model: str | None = recipe_arg("A pre-trained hf_vit folder or Hub repo.")
    trust_remote_code: bool = arg(False, "Allow a Hub repo's own modeling code.")
    pos_embed_interpolation: Literal["official", "bicubic"] | None = arg(
        None, "How position embeddings are resized to --image-size (default: the model's, 'official')."
    )
    learning_rate: float | None = recipe_arg("Peak SGD learning rate; the paper sweeps 0.001, 0.003, 0.01, 0.03.")
    momentum: float | None = recipe_arg("SGD momentum.")
    weight_decay: float | None = recipe_arg("Weight decay.")
    max_steps: int | None = recipe_arg("Updates.")
    warmup_steps: int | None = recipe_arg("Linear warm-up: at most this many updates, ...")
    warmup_ratio: float | None = recipe_arg("... and at most this fraction of the run.")
    lr_schedule: Literal["linear", "cosine"] | None = recipe_arg("Decay after the warm-up.")
    grad_clip: float | None = recipe_arg("Global gradient-norm clip; 0 turns it off.")
    per_device_batch_size: int | None = recipe_arg("Images per device per micro-batch.")
    gradient_accumulation_steps: int | None = arg(
        None, "Micro-batches per update; default: enough to reach --total-batch-size over all devices."
    )
    total_batch_size: int | None = recipe_arg("Images per update over all devices (the paper's 512).")
    layer_decay: float | None = recipe_arg(
        "Layer-wise learning-rate decay: block i of L learns at layer_decay^(L + 1 - i) of the rate; 1 turns it off."
    )
    label_smoothing: float | None = recipe_arg("Label smoothing of the classification loss.")
    ema_decay: float | None = recipe_arg(
        "Decay of an exponential moving average of the weights, evaluated and saved instead of them; 0 turns it off."
    )
    bf16: bool = arg(False, "bfloat16 mixed precision.")
    torch_compile: bool = arg(False, "Compile the model with torch.compile.")
    gradient_checkpointing: bool = arg(False, "Recompute activations in the backward pass.")
    lora_rank: int | None = arg(
        None,
        "Train LoRA adapters of this rank on the pre-trained weights (and the new head in full) instead of every "
        "weight; the output is a PEFT adapter with its base model in OUTPUT_DIR/base. Default: full fine-tuning.",
    )
    lora_alpha: float | None = arg(None, "LoRA scale numerator: updates are scaled by alpha / rank. Default: the rank.")
    lora_dropout: float = arg(0.0, "Dropout on the LoRA branch's input.")
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS),
        metadata={"help": "Layers that get adapters (names of Linear layers in the encoder: its attention and MLP)."},
    )
    lora_merge: bool = arg(
        False, "Also write the adapter merged into the base weights, a plain hf_vit model, to OUTPUT_DIR/merged."
    )
    output_dir: str = arg("outputs/finetune", "Where the model, checkpoints, logs and results go.")

    def __post_init__(self) -> None:
        super().__post_init__()
        lora_only = {"lora_alpha": self.lora_alpha is not None, "lora_dropout": self.lora_dropout != 0.0}
        lora_only |= {"lora_merge": self.lora_merge, "lora_target_modules": self.lora_target_modules != LORA_TARGETS}
        given = [name for name, set_ in lora_only.items() if set_]
        if given and self.lora_rank is None:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags} configure LoRA, which --lora-rank turns on; add --lora-rank (e.g. 8).")


@dataclass
class InferenceArguments(DataArguments):
    """A trained model run over a dataset."""

    model: str = arg(None, "A saved folder or Hub repo of an image classifier.", required=True)
    trust_remote_code: bool = arg(False, "Allow a Hub repo's own modeling code (not needed for hf_vit).")
    batch_size: int = arg(64, "Images per forward pass.")
    device: str = arg("auto", "'auto' (CUDA when there is one), 'cpu', 'cuda:1', ...")
    output: str | None = arg(None, "Also write the results here.", metavar="FILE.json")

    def __post_init__(self) -> None:
        check_values(self)


@dataclass
class EvaluationArguments(InferenceArguments):
    """Top-1/top-5 accuracy of a classifier on a split; with no --eval-split, the split finetune.py held out."""

    model: str | None = arg(None, "A saved folder or Hub repo of an image classifier (or give --onnx).")
    onnx: str | None = arg(
        None,
        "Evaluate this exported classifier (scripts/export.py) with ONNX Runtime instead of --model; its image "
        "processor and labels are the files written beside it.",
        metavar="MODEL.onnx",
    )
    eval_split: str | None = arg(
        None,
        "Evaluate on this whole split; default: the held-out fraction of --train-split that finetune.py uses "
        "(or its validation/test split).",
        aliases=["--split"],
    )
    int8: bool = arg(
        False, "Run the model with int8 weights (dynamic quantisation of its Linear layers; CPU only, see README)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.model is None) == (self.onnx is None):
            raise ValueError("Name one model to evaluate: --model (PyTorch weights) or --onnx (an exported model).")
        if self.onnx is not None and not self.onnx.endswith(".onnx"):
            raise ValueError(f"--onnx takes an .onnx file written by scripts/export.py, got {self.onnx!r}.")
        if self.onnx is not None and self.int8:
            raise ValueError("--int8 quantises a PyTorch model's weights; --onnx runs an exported graph as it is.")


@dataclass
class FewshotArguments(InferenceArguments):
    """Few-shot linear evaluation of frozen features."""

    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25], metadata={"help": "Images per class."})
    seeds: int = arg(3, "Draws of the training images per shot count.")
    l2_reg: float = arg(2.0**10, "Ridge penalty (the paper's 2^10).")
