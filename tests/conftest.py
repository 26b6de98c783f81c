"""Shared fixtures: tiny configs, real photos and a Python process in which hf_vit cannot be imported."""

import json
import os
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
