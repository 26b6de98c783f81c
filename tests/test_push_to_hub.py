"""`model.push_to_hub`, the call every transformers user makes, writes hf_vit's card with the model, and never
replaces a card already on the Hub unless asked. The Hub is tests/hub_server.py on 127.0.0.1."""

import logging
from pathlib import Path

import numpy as np
import torch
from conftest import LABELS, run_without_hf_vit, tiny_classifier
from huggingface_hub import HfApi, ModelCard
from PIL import Image

import hf_vit
from hf_vit.tools.model_card import TAGS


def test_push_to_hub_writes_our_card_and_the_pulled_model_classifies_without_hf_vit(hub, tmp_path, photo):
    models = {"org/std-vit": tiny_classifier(), "org/std-hybrid": tiny_classifier(hybrid=True)}
    for repo, model in models.items():
        commit = model.push_to_hub(repo)
        assert commit.oid and commit.commit_url.endswith(commit.oid)
    photo.save(tmp_path / "photo.jpg")
    result = run_without_hf_vit(
        f"""
        import json
        from huggingface_hub import HfApi, ModelCard
        from transformers import pipeline

        out = {{}}
        for repo in {list(models)!r}:
            card = ModelCard.load(repo)
            classify = pipeline("image-classification", model=repo, trust_remote_code=True)
            out[repo] = {{
                "data": card.data.to_dict(),
                "text": card.text,
                "files": sorted(HfApi().list_repo_files(repo)),
                "predictions": classify("photo.jpg", top_k=5),
            }}
        print(json.dumps(out))
        """,
        cwd=tmp_path,
        env=hub.env(tmp_path / "client-home"),
    )
    code = {"org/std-vit": ["pos_embed.py"], "org/std-hybrid": ["modeling_hybrid.py", "pos_embed.py", "resnet.py"]}
    for repo, model in models.items():
        data, text = result[repo]["data"], result[repo]["text"]
        assert data["pipeline_tag"] == "image-classification" and data["library_name"] == "transformers"
        assert data["tags"][:4] == TAGS and data["license"] == "apache-2.0"
        assert "Pushed from Python with hf_vit." in text and "*An Image is Worth 16x16 Words*" in text
        assert f'pipeline("image-classification", model="{repo}", trust_remote_code=True)' in text
        assert result[repo]["files"] == sorted(
            [".gitattributes", "README.md", "config.json", "configuration.py", "model.safetensors", "modeling.py"]
            + ["preprocessor_config.json"]
            + code[repo]
        )
        processor = hf_vit.create_image_processor(model.config)
        with Image.open(tmp_path / "photo.jpg") as saved, torch.no_grad():
            probs = model(**processor(saved, return_tensors="pt")).logits.softmax(-1)[0]
        predictions = result[repo]["predictions"]
        assert [p["label"] for p in predictions] == [LABELS[i] for i in probs.argsort(descending=True)]
        np.testing.assert_allclose([p["score"] for p in predictions], probs.sort(descending=True).values, atol=1e-5)
    assert result["org/std-hybrid"]["data"]["tags"][4:] == ["hybrid", "resnet"]
    assert "ResNet+ViT hybrid" in result["org/std-hybrid"]["text"]
    assert not hub.unrouted, f"the client used endpoints the test Hub lacks: {hub.unrouted}"


def test_push_to_hub_keeps_a_card_already_on_the_hub_unless_given_one(hub, tmp_path, caplog):
    api = HfApi()
    own_card = b"---\nlicense: mit\n---\n# Notes I wrote on the Hub\n"
    api.create_repo("org/own-card")
    api.upload_file(path_or_fileobj=own_card, path_in_repo="README.md", repo_id="org/own-card")
    model = tiny_classifier()
    with caplog.at_level(logging.WARNING, logger="hf_vit.tools.hub"):
        commit = model.push_to_hub("org/own-card")
    assert "Kept the model card already on org/own-card; pass card arguments (e.g. source=...) to replace it." in (
        caplog.text
    )
    files = api.list_repo_files("org/own-card", revision=commit.oid)
    assert {"model.safetensors", "modeling.py", "preprocessor_config.json"} <= set(files)
    card = api.hf_hub_download("org/own-card", "README.md", revision=commit.oid, cache_dir=tmp_path / "cache")
    assert Path(card).read_bytes() == own_card

    model.push_to_hub("org/own-card", source="Fine-tuned on shapes in a test.", datasets=["org/shapes"])
    replaced = ModelCard.load("org/own-card")
    assert "Fine-tuned on shapes in a test." in replaced.text and replaced.data.datasets == ["org/shapes"]
    assert not hub.unrouted, f"the client used endpoints the test Hub lacks: {hub.unrouted}"
