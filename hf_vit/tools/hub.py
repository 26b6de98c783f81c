"""Share models on the Hugging Face Hub: weights (safetensors only), config with `auto_map`, the modeling code, the
image processor and the model card go up in one commit, so a repo is never half updated.

`push_model` takes a model or a folder saved by hf_vit (a training or conversion output folder); the scripts'
`--push-to-hub REPO` flags call it with their output folder. The local folder is only read, never written.
"""

import fnmatch
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoConfig, BaseImageProcessor, PreTrainedModel
from transformers.dynamic_module_utils import get_relative_imports

from ..models.processing import create_image_processor
from .files import file_in_folder
from .model_card import render_model_card

# What transformers loads from a model folder besides the weights and the code; all else stays local unless named.
MODEL_FILES = ("config.json", "preprocessor_config.json", "README.md")
WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
# Weights that would be loaded in place of ours if a previous push left them behind.
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
# Pickle-based formats run code when loaded: never shared (training_args.bin and optimizer states stay local too).
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
NETWORK_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3")
DEFAULT_SOURCE = "Uploaded from a local folder with hf_vit; no record of its training came with it."

logger = logging.getLogger(__name__)


class HubError(RuntimeError):
    """The Hub refused the push or could not be reached; the message names the repo and the reason."""


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def check_folder(folder: Path) -> dict[str, Any]:
    """The folder's config.json, after checking that it holds a model saved with its code and safetensors weights."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: save the model there first (model.save_pretrained).")
    names = {path.name for path in folder.iterdir() if path.is_file()}
    if "config.json" not in names:
        raise ValueError(f"{folder} has no config.json: it is not a saved model.")
    if WEIGHTS not in names and WEIGHTS_INDEX not in names:
        pickles = sorted(name for name in names if _matches(name, PICKLE_PATTERNS))
        found = f" (only pickle files: {', '.join(pickles)})" if pickles else ""
        raise ValueError(
            f"{folder} has no .safetensors weights{found}; hf_vit shares safetensors only: load the model and "
            "save it again with save_pretrained."
        )
    config = json.loads(_model_file(folder, "config.json").read_text())
    modules = {reference.split(".")[0] for reference in _auto_map_references(config)}
    missing = sorted(f"{module}.py" for module in modules if f"{module}.py" not in names)
    if not modules or missing:
        raise ValueError(
            f"{folder} was not saved with its code (no auto_map, or missing {', '.join(missing) or 'modules'}): "
            "load it with hf_vit and save it again with save_pretrained."
        )
    return config


def _auto_map_references(config: dict[str, Any]) -> list[str]:
    """The "module.Class" references of `auto_map` (a value may be a list, as for tokenizers)."""
    values = config.get("auto_map", {}).values()
    return [ref for value in values for ref in (value if isinstance(value, (list, tuple)) else [value]) if ref]


def _model_file(folder: Path, name: str) -> Path:
    """`folder / name` for a file that a push reads and uploads; a ValueError names it when it is hidden, a pickle,
    not a file, or lies outside the folder (`..`, an absolute name, a link out)."""
    try:
        path = file_in_folder(folder, name)
    except ValueError as error:
        raise ValueError(f"{error}; hf_vit uploads only files inside the model folder.") from None
    if any(part.startswith(".") for part in Path(name).parts):
        raise ValueError(f"{path} is a hidden file; hf_vit never uploads hidden files.")
    if _matches(path.name, PICKLE_PATTERNS):
        raise ValueError(f"{path} is a pickle, which runs code when loaded; hf_vit shares safetensors only.")
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file.")
    return path


def _code_files(folder: Path, config: dict[str, Any]) -> list[str]:
    """The modules that `auto_map` names and, recursively, those they import relatively: what transformers copies
    next to the weights and loads as remote code."""
    pending = [reference.split(".")[0] for reference in _auto_map_references(config)]
    found: list[str] = []
    while pending:
        module = pending.pop()
        if not module.isidentifier():
            raise ValueError(f"{folder}: the model's code imports {module!r}, which is not a module of the folder.")
        if f"{module}.py" not in found:
            found.append(f"{module}.py")
            pending += get_relative_imports(_model_file(folder, f"{module}.py"))
    return sorted(found)


def model_files(folder: str | Path, include: Sequence[str] = ()) -> dict[str, Path]:
    """The files of a saved model folder that a push uploads, by their name in the repo.

    These are the weights that transformers loads (model.safetensors, or the index and the shards it names),
    config.json, preprocessor_config.json and README.md where present, the code (`_code_files`), and the files named
    in `include` (paths relative to the folder). Checkpoints, logs, tokens and anything else stay local. Raises
    ValueError for a folder that is not a saved model, naming any file to upload that is hidden, a pickle, missing,
    or outside the folder (a link out included).
    """
    folder = Path(folder)
    config = check_folder(folder)
    names = [name for name in MODEL_FILES if os.path.lexists(folder / name)]  # links too: a link out is refused
    if os.path.lexists(folder / WEIGHTS_INDEX):
        try:
            shards = sorted(set(json.loads(_model_file(folder, WEIGHTS_INDEX).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{folder / WEIGHTS_INDEX} is not a weight index ({error}).") from None
        names += [WEIGHTS_INDEX, *shards]
    else:
        names.append(WEIGHTS)
    names += _code_files(folder, config) + list(include)
    return {name: _model_file(folder, name) for name in dict.fromkeys(names)}


def _operations(folder: Path, generated: dict[str, bytes], include: Sequence[str] = ()) -> list[CommitOperationAdd]:
    """Additions for the model files of `folder` (and `include`), where `generated` files (a card, a processor) take
    precedence."""
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        for name, path in model_files(folder, include).items()
        if name not in generated
    ]
    return operations + [CommitOperationAdd(path_in_repo=n, path_or_fileobj=b) for n, b in generated.items()]


def _stale_weights(api: HfApi, repo_id: str, revision: str | None, keep: set[str]) -> list[CommitOperationDelete]:
    """Weight files of an earlier push that are not in this one (e.g. shards after a push of one file)."""
    remote = api.list_repo_files(repo_id, revision=revision)
    return [
        CommitOperationDelete(path_in_repo=path)
        for path in remote
        if "/" not in path and _matches(path, WEIGHT_PATTERNS) and path not in keep
    ]


def _reason(error: Exception, endpoint: str) -> str:
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        response = error.response
        message = error.server_message or response.headers.get("X-Error-Message") or response.reason_phrase
        return f"the Hub answered {response.status_code}: {message.strip().splitlines()[0]}"
    return f"cannot reach the Hub at {endpoint} ({error})"


def _is_hub_failure(error: Exception) -> bool:
    """HTTP errors, offline mode, and network errors of whichever HTTP library huggingface_hub uses."""
    root_module = type(error).__module__.split(".")[0]
    return isinstance(error, (HfHubHTTPError, ConnectionError, TimeoutError)) or root_module in NETWORK_MODULES


def push_model(
    folder_or_model: str | Path | PreTrainedModel,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    processor: BaseImageProcessor | None = None,
    token: str | None = None,
    include: Sequence[str] = (),
    **card_kwargs: Any,
) -> CommitInfo:
    """Push a model, or a folder saved by hf_vit, to `repo_id` in one commit; returns it (`.oid`, `.commit_url`).

    It is also `model.push_to_hub(repo_id, ...)` of every hf_vit model (set in `hf_vit/models/__init__.py`).

    The repo is created if needed (public unless `private`), and `revision` names a branch that is created from
    `main` if it does not exist. A model is saved with its code and an image processor (`processor`, or the paper's
    preprocessing for its config). A folder is pushed as it is (`model_files`: weights, config, processor config,
    code and card; checkpoints, logs and other files stay local unless named in `include`, paths relative to the
    folder), with the paper's image processor if it has none and a model card if it has no README.md.
    `card_kwargs` (`source`, `datasets`, `base_model`, `results`, `license`, ... of `render_model_card`) render a
    new card in either case. Without them the card written is a default one, which never replaces a README.md
    already on the branch (it is kept, with a warning); a folder's own README.md and a card rendered from
    `card_kwargs` do replace it. Weight files left on the branch by an earlier push and not part of this one are
    deleted.

    Raises ValueError for a folder that is not a model saved with code and safetensors weights or a file to upload
    that is hidden, a pickle or outside the folder (a link out), and `HubError` when the Hub refuses the push or
    cannot be reached.
    """
    api = HfApi(token=token)
    generated: dict[str, bytes] = {}
    default_card = not card_kwargs
    with tempfile.TemporaryDirectory() as staging:
        if isinstance(folder_or_model, PreTrainedModel):
            folder, model_or_config = Path(staging), folder_or_model
            folder_or_model.save_pretrained(folder)
            (processor or create_image_processor(folder_or_model.config)).save_pretrained(folder)
            card_kwargs.setdefault("source", "Pushed from Python with hf_vit.")
            check_folder(folder)
        else:
            folder = Path(folder_or_model)
            check_folder(folder)
            model_or_config = AutoConfig.from_pretrained(folder)
            if processor is not None or not (folder / "preprocessor_config.json").exists():
                processor = processor or create_image_processor(model_or_config)
                generated["preprocessor_config.json"] = processor.to_json_string().encode()
            if not card_kwargs and not (folder / "README.md").exists():
                card_kwargs["source"] = DEFAULT_SOURCE
        if card_kwargs:
            card_kwargs.setdefault("model_id", repo_id)
            generated["README.md"] = str(render_model_card(model_or_config, **card_kwargs)).encode()
        operations = _operations(folder, generated, include)
        message = commit_message or f"Upload {type(model_or_config).__name__.removesuffix('Config')} with hf_vit"
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            if default_card and "README.md" in generated and api.file_exists(repo_id, "README.md", revision=revision):
                logger.warning(
                    "Kept the model card already on %s; pass card arguments (e.g. source=...) to replace it.", repo_id
                )
                operations = [op for op in operations if op.path_in_repo != "README.md"]
            operations += _stale_weights(api, repo_id, revision, {op.path_in_repo for op in operations})
            return api.create_commit(repo_id, operations, commit_message=message, revision=revision)
        except Exception as error:
            if not _is_hub_failure(error):
                raise
            raise HubError(f"Could not push to {repo_id}: {_reason(error, api.endpoint)}") from error
