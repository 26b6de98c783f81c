"""LoRA fine-tuning through PEFT: low-rank adapters on the encoder's Linear layers, the new head trained in full.

Fine-tuning changes more than the adapted weights: the head is new (other classes) and the position embeddings may be
resized. The model an adapter adapts is therefore the pre-trained one after that preparation, which is deterministic;
it is saved next to the adapter (`base/`, a plain hf_vit folder) so that the adapter loads with PEFT alone:
`PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained("OUT/base", trust_remote_code=True),
"OUT")`. `merged/` (on request) holds the two merged into one plain hf_vit model.
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .checkpoints import write_folder_atomically

BASE_FOLDER = "base"
MERGED_FOLDER = "merged"
HEAD = "classifier"


@contextmanager
def peft_deprecation_quiet() -> Iterator[None]:
    """PEFT reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; the FutureWarning is
    about PEFT, not the run, and would land in every LoRA run's output."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


def adaptable_layers(model: torch.nn.Module) -> list[str]:
    """The distinct names (last component) of the Linear layers that a LoRA adapter can target, the head excluded."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return sorted(name for name in names - {HEAD} if not name.isdigit())  # not Sequential indices (pre-logits)


def check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """A ValueError naming the targets that are no adaptable layer of `model`, and the layers that are."""
    available = adaptable_layers(model)
    if HEAD in targets:
        raise ValueError(
            f"--lora-target-modules: {HEAD!r} is the new head, which LoRA fine-tuning trains in full; remove it."
        )
    unknown = [name for name in targets if name not in available]
    if unknown or not targets:
        raise ValueError(
            f"--lora-target-modules {' '.join(targets) or '(none)'}: {', '.join(unknown) or 'nothing'} matches no "
            f"Linear layer of the model; choose among {', '.join(available)}."
        )


def add_lora(
    model: PreTrainedModel, rank: int, alpha: float | None, dropout: float, targets: list[str]
) -> torch.nn.Module:
    """`model` wrapped by PEFT: frozen, with rank-`rank` adapters on `targets` and a trainable copy of the head.

    The adapter names no base until `point_at_base`: the model was prepared from another (whose folder PEFT would
    record), and its own base folder is written only with the final adapter.
    """
    from peft import LoraConfig, get_peft_model

    check_targets(model, targets)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        modules_to_save=[HEAD],
    )
    model.name_or_path = ""
    with peft_deprecation_quiet():
        return get_peft_model(model, config)


def merge_adapter(base: PreTrainedModel, adapter: str | Path) -> PreTrainedModel:
    """The adapter in folder `adapter` merged into `base` (which it modifies): a plain model, no PEFT layers."""
    from peft import PeftModel

    with peft_deprecation_quiet():
        return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def point_at_base(model, output_dir: Path) -> None:
    """Record OUTPUT_DIR/base as the adapter's base (`base_model_name_or_path`), so that transformers'
    `from_pretrained` and `pipeline` given the adapter folder find it on this machine."""
    for config in model.peft_config.values():
        config.base_model_name_or_path = str((Path(output_dir) / BASE_FOLDER).resolve())


def _write(model: PreTrainedModel, folder: Path, processor, card=None) -> None:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if card is not None:
        card.save(folder / "README.md")


def save_base(base: PreTrainedModel, output_dir: Path, processor) -> None:
    """`base` with its processor in OUTPUT_DIR/base, complete or absent (`write_folder_atomically`)."""
    write_folder_atomically(Path(output_dir) / BASE_FOLDER, lambda folder: _write(base, folder, processor))


def save_merged(base: PreTrainedModel, adapter: Path, output_dir: Path, processor, card) -> None:
    """The adapter in folder `adapter` merged into `base` (modified), a plain hf_vit model, in OUTPUT_DIR/merged."""
    merged = merge_adapter(base, adapter)
    write_folder_atomically(Path(output_dir) / MERGED_FOLDER, lambda folder: _write(merged, folder, processor, card))
