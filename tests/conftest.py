"""Shared fixtures: tiny configs, real photos and a Python process in which hf_vit cannot be imported."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hf_vit

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=5,
)


@pytest.fixture
def tiny_config():
    return hf_vit.VisionTransformerConfig(**TINY)


def randomize_head(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Official init zeroes the head; tests that compare logits need them non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("classifier"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A real photo (scikit-learn's china.jpg), shipped in the wheel."""
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg"))


def run_without_hf_vit(code: str, cwd: Path, timeout: int = 600, env: dict[str, str] | None = None) -> dict:
    """Run `code` in a fresh Python process where `import hf_vit` fails; it prints one JSON line, returned here.

    The process is offline unless `env` (merged over this process's environment) says otherwise, e.g. `hub.env(...)`.
    """
    prelude = "import sys\nsys.modules['hf_vit'] = None  # make the package unimportable\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | (env or {})
    env["HF_HUB_OFFLINE"] = env.get("HF_HUB_OFFLINE", "1")
    result = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub on 127.0.0.1 (tests/hub_server.py) for this process and for subprocesses given `hub.env(home)`.

    huggingface_hub reads its endpoint (and the download URL made from it), Xet and offline switches at import, so
    they are patched in its constants here.
    """
    from hub_server import HubServer
    from huggingface_hub import constants

    with HubServer(tmp_path / "hub-server") as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        yield server


def to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    array = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None]


ROOT = Path(__file__).resolve().parents[1]
DIGIT_NAMES = [f"digit{i}" for i in range(10)]


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """An imagefolder of 12 real handwritten digits per class (scikit-learn's), upscaled from 8x8 to 32x32 PNGs."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for label, name in enumerate(DIGIT_NAMES):
        (root / name).mkdir()
        for index in np.flatnonzero(digits.target == label)[:12]:
            pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((32, 32), Image.BICUBIC).save(root / name / f"{index}.png")
    return root


def load_script(name: str):
    """A script's module, to call its main(argv) in this process (no second interpreter start-up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(
    name: str, *args: str, launcher: list[str] | None = None, check: bool = True, timeout: int = 600, **env: str
) -> subprocess.CompletedProcess:
    """Run scripts/<name>.py (or the file `name`) in a new process, offline, one thread per process unless `env`
    says otherwise."""
    script = name if name.endswith(".py") else str(ROOT / "scripts" / f"{name}.py")
    command = [*(launcher or [sys.executable]), script, *args]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def pretrained(representation_size: int | None = 16) -> hf_vit.VisionTransformerForImageClassification:
    """A "pre-trained" tiny ViT at 32 px: 5 classes, a representation layer and a non-zero head to be replaced."""
    torch.manual_seed(0)
    config = hf_vit.VisionTransformerConfig(**TINY, representation_size=representation_size)
    model = randomize_head(hf_vit.VisionTransformerForImageClassification(config))
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.normal_()
    return model.eval()


@pytest.fixture(scope="session")
def pretrained_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained")
    model = pretrained()
    model.save_pretrained(folder)
    hf_vit.create_image_processor(model.config).save_pretrained(folder)
    return folder


DATA = ["--eval-fraction", "0.25", "--per-device-batch-size", "16"]


FINETUNE_DATA = ["--eval-fraction", "0.25", "--per-device-batch-size", "16"]


@pytest.fixture(scope="session")
def finetuned(digits_folder, pretrained_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetuned")
    code = load_script("finetune").main(
        [
            *("--model", str(pretrained_folder), "--dataset", str(digits_folder), "--image-size", "48"),
            *(*FINETUNE_DATA, "--gradient-accumulation-steps", "1", "--max-steps", "4", "--output-dir", str(out)),
        ]
    )
    assert code == 0
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(processes: int) -> list[str]:
    """`accelerate launch` with several processes; on a machine without GPUs they train together on the CPU."""
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port())),
    ]


# A tiny pre-training model for the scripts: ViT-Ti/16 shrunk to 2 blocks of width 32, 2x2 tokens of 8 px at 16 px.
TINY_OVERRIDES = "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,patch_size=8"
TINY_RUN = ["--model", "ViT-Ti/16", "--config-overrides", TINY_OVERRIDES, "--image-size", "16"]
LABELS = ["cat", "dog", "fish", "bird", "frog"]


def tiny_classifier(seed: int = 0, hybrid: bool = False) -> hf_vit.VisionTransformerPreTrainedModel:
    """A tiny ViT, or hybrid with one ResNet stage, with named labels and a random head."""
    from transformers import AutoModelForImageClassification

    torch.manual_seed(seed)
    if hybrid:
        config = hf_vit.HybridVisionTransformerConfig(**{**TINY, "patch_size": 1, "resnet_layers": (1,)})
    else:
        config = hf_vit.VisionTransformerConfig(**TINY)
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {name: i for i, name in enumerate(LABELS)}
    return randomize_head(AutoModelForImageClassification.from_config(config), seed).eval()
