"""Share models on the Hugging Face Hub: weights (safetensors only), config with `auto_map`, the modeling code, the
image processor and the model card go up in one commit, so a repo is never half updated.

`push_model` takes a model or a folder saved by hf_vit (a training or conversion output folder); the scripts'
`--push-to-hub REPO` flags call it with their output folder. The local folder is only read, never written.
"""

import fnmatch
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoConfig, BaseImageProcessor, PreTrainedModel

from ..models.processing import create_image_processor
from .model_card import render_model_card

# Files of a saved model that are shared; anything else in an output folder (checkpoints, logs) stays local.
SHARED_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.json", "*.py", "README.md")
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
    if not any(name.endswith(".safetensors") for name in names):
        pickles = sorted(name for name in names if _matches(name, PICKLE_PATTERNS))
        found = f" (only pickle files: {', '.join(pickles)})" if pickles else ""
        raise ValueError(
            f"{folder} has no .safetensors weights{found}; hf_vit shares safetensors only: load the model and "
            "save it again with save_pretrained."
        )
    config = json.loads((folder / "config.json").read_text())
    modules = {reference.split(".")[0] for reference in config.get("auto_map", {}).values()}
    missing = sorted(f"{module}.py" for module in modules if f"{module}.py" not in names)
    if not modules or missing:
        raise ValueError(
            f"{folder} was not saved with its code (no auto_map, or missing {', '.join(missing) or 'modules'}): "
            "load it with hf_vit and save it again with save_pretrained."
        )
    return config


def _operations(folder: Path, generated: dict[str, bytes]) -> list[CommitOperationAdd]:
    """Additions for the shared files of `folder`, where `generated` files (a card, a processor) take precedence."""
    operations = [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
        for path in sorted(folder.iterdir())
        if path.is_file() and _matches(path.name, SHARED_PATTERNS) and path.name not in generated
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
    **card_kwargs: Any,
) -> CommitInfo:
    """Push a model, or a folder saved by hf_vit, to `repo_id` in one commit; returns it (`.oid`, `.commit_url`).

    It is also `model.push_to_hub(repo_id, ...)` of every hf_vit model (set in `hf_vit/__init__.py`).

    The repo is created if needed (public unless `private`), and `revision` names a branch that is created from
    `main` if it does not exist. A model is saved with its code and an image processor (`processor`, or the paper's
    preprocessing for its config). A folder is pushed as it is (top-level weights, json and code files; checkpoints
    and logs stay local), with the paper's image processor if it has none and a model card if it has no README.md.
    `card_kwargs` (`source`, `datasets`, `base_model`, `results`, `license`, ... of `render_model_card`) render a
    new card in either case. Without them the card written is a default one, which never replaces a README.md
    already on the branch (it is kept, with a warning); a folder's own README.md and a card rendered from
    `card_kwargs` do replace it. Weight files left on the branch by an earlier push and not part of this one are
    deleted.

    Raises ValueError for a folder that is not a model saved with code and safetensors weights, and `HubError` when
    the Hub refuses the push or cannot be reached.
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
        operations = _operations(folder, generated)
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
