"""Sharing on the Hub: push with code, processor and card; pull by repo id, commit or branch where hf_vit is absent.

The Hub is tests/hub_server.py on 127.0.0.1, spoken to by the unmodified huggingface_hub client.
"""

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELS, TINY, run_without_hf_vit, tiny_classifier
from huggingface_hub import HfApi
from markdown_it import MarkdownIt
from PIL import Image

import hf_vit
from hf_vit.tools.hub import HubError, push_model
from hf_vit.tools.model_card import render_model_card

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import push_to_hub  # noqa: E402 - the CLI, from scripts/


def logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).logits.numpy()


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its hash, to show that a push left it as it was."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_push_and_pull_by_id_commit_and_branch_without_hf_vit(hub, tmp_path, photo):
    first, second, hybrid = tiny_classifier(0), tiny_classifier(1), tiny_classifier(2, hybrid=True)
    card = {"source": "Trained in a test.", "datasets": ["org/shapes"], "results": {"accuracy": 0.625}}
    first_commit = push_model(first, "org/tiny-vit", **card)
    second_commit = push_model(second, "org/tiny-vit", commit_message="Second weights", **card)
    branch_commit = push_model(first, "org/tiny-vit", revision="first-weights", **card)
    assert len({first_commit.oid, second_commit.oid, branch_commit.oid}) == 3
    push_model(hybrid, "org/tiny-hybrid", **card)

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "x.npy", x.numpy())
    photo.save(tmp_path / "photo.jpg")
    pulls = {
        "main": ("org/tiny-vit", None),
        "sha": ("org/tiny-vit", first_commit.oid),
        "branch": ("org/tiny-vit", "first-weights"),
        "hybrid": ("org/tiny-hybrid", None),
    }
    result = run_without_hf_vit(
        f"""
        import json, numpy as np, torch
        from huggingface_hub import HfApi, ModelCard
        from transformers import AutoModelForImageClassification, pipeline

        x = torch.from_numpy(np.load("x.npy"))
        try:
            AutoModelForImageClassification.from_pretrained("org/tiny-vit", trust_remote_code=False)
            refused = False
        except ValueError as error:
            refused = "trust_remote_code" in str(error)
        out = {{"refused": refused, "modules": [], "predictions": {{}}, "cards": {{}}, "files": {{}}}}
        for name, (repo, revision) in {pulls!r}.items():
            model = AutoModelForImageClassification.from_pretrained(repo, revision=revision, trust_remote_code=True)
            with torch.no_grad():
                np.save(name + ".npy", model.eval()(x).logits.numpy())
            out["modules"].append(type(model).__module__)
        for repo in ("org/tiny-vit", "org/tiny-hybrid"):
            classify = pipeline("image-classification", model=repo, trust_remote_code=True)
            out["predictions"][repo] = classify("photo.jpg", top_k=5)
            card = ModelCard.load(repo)
            out["cards"][repo] = {{"data": card.data.to_dict(), "text": card.text}}
            out["files"][repo] = sorted(HfApi().list_repo_files(repo))
        model.push_to_hub("org/re-shared")  # the hybrid, with transformers' own push, where hf_vit is absent
        again = AutoModelForImageClassification.from_pretrained("org/re-shared", trust_remote_code=True).eval()
        with torch.no_grad():
            np.save("re-shared.npy", again(x).logits.numpy())
        print(json.dumps(out))
        """,
        cwd=tmp_path,
        env=hub.env(tmp_path / "client-home"),
    )
    assert result["refused"], "remote code must need trust_remote_code=True"
    assert not any("hf_vit" in module for module in result["modules"])
    expected = {"main": second, "sha": first, "branch": first, "hybrid": hybrid, "re-shared": hybrid}
    for name, model in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), logits(model, x), err_msg=name)

    code = {"org/tiny-vit": ["pos_embed.py"], "org/tiny-hybrid": ["modeling_hybrid.py", "pos_embed.py", "resnet.py"]}
    for repo, model in [("org/tiny-vit", second), ("org/tiny-hybrid", hybrid)]:
        processor = hf_vit.create_image_processor(model.config)
        with Image.open(tmp_path / "photo.jpg") as saved, torch.no_grad():
            probs = model(**processor(saved, return_tensors="pt")).logits.softmax(-1)[0]
        predictions = result["predictions"][repo]
        assert [p["label"] for p in predictions] == [LABELS[i] for i in probs.argsort(descending=True)]
        np.testing.assert_allclose([p["score"] for p in predictions], probs.sort(descending=True).values, atol=1e-5)

        assert result["files"][repo] == sorted(
            [".gitattributes", "README.md", "config.json", "configuration.py", "model.safetensors", "modeling.py"]
            + ["preprocessor_config.json"]
            + code[repo]
        )
        data, text = result["cards"][repo]["data"], result["cards"][repo]["text"]
        assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-classification"
        assert data["tags"][:4] == ["vision-transformer", "image-classification", "hf_vit", "custom_code"]
        assert data["license"] == "apache-2.0" and data["datasets"] == ["org/shapes"]
        (model_index,) = data["model-index"]
        (results,) = model_index["results"]
        assert results["metrics"] == [{"type": "accuracy", "value": 0.625, "name": "accuracy"}]
        assert results["dataset"] == {"name": "org/shapes", "type": "org/shapes", "split": "validation"}
        assert f'from_pretrained("{repo}", trust_remote_code=True)' in text
        assert "Dosovitskiy and Lucas Beyer" in text
    assert result["cards"]["org/tiny-hybrid"]["data"]["tags"][4:] == ["hybrid", "resnet"]
    assert "| ResNet units per stage / width factor | 1 / 1 |" in result["cards"]["org/tiny-hybrid"]["text"]
    assert not hub.unrouted, f"the client used endpoints the test Hub lacks: {hub.unrouted}"


@pytest.fixture
def saved_folder(tmp_path) -> Path:
    folder = tmp_path / "saved"
    model = tiny_classifier(0)
    model.save_pretrained(folder)
    render_model_card(model, source="Trained in a test.").save(folder / "README.md")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.bin").write_bytes(b"not shared")
    (folder / "train_log.jsonl").write_text("{}\n")
    (folder / "training_args.bin").write_bytes(b"a pickle that transformers' Trainer writes")
    return folder


def test_cli_pushes_a_folder_to_a_branch_and_fails_in_one_line(hub, saved_folder, tmp_path, capsys, monkeypatch):
    before = digests(saved_folder)
    argv = ["--model", str(saved_folder), "--repo-id", "org/from-folder", "--revision", "dev", "--private"]
    assert push_to_hub.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"Pushed {saved_folder} to org/from-folder (dev) at commit ")
    api = HfApi()
    assert api.model_info("org/from-folder").private
    files = set(api.list_repo_files("org/from-folder", revision="dev"))
    assert {"model.safetensors", "modeling.py", "preprocessor_config.json", "README.md"} <= files
    assert not {"train_log.jsonl", "training_args.bin", "checkpoint-10/optimizer.bin"} & files, "only the model goes"
    assert api.list_repo_files("org/from-folder") == [".gitattributes"], "main is untouched"

    forbidden = subprocess.run(
        [sys.executable, "scripts/push_to_hub.py", "--model", str(saved_folder), "--repo-id", "forbidden/tiny"],
        cwd=ROOT,
        env={**hub.env(tmp_path / "cli-home"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert forbidden.returncode == 1 and forbidden.stdout == ""
    assert forbidden.stderr == (
        "error: Could not push to forbidden/tiny: the Hub answered 403: "
        'You don\'t have the rights to create a model under the namespace "forbidden"\n'
    )

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", closed)
    assert push_to_hub.main(["--model", str(saved_folder), "--repo-id", "org/offline"]) == 1
    assert capsys.readouterr().err == (
        f"error: Could not push to org/offline: cannot reach the Hub at {closed} ([Errno 111] Connection refused)\n"
    )
    assert digests(saved_folder) == before, "pushing must not change the local folder"


def received(hub, repo_id: str, revision: str = "main") -> dict[str, bytes]:
    """The files of `repo_id` at `revision` as the test Hub stored them."""
    repo = hub.hub.repos[("model", repo_id)]
    return {path: hub.hub.read(entry) for path, entry in repo.commits[repo.branches[revision]].files.items()}


def test_a_push_uploads_only_the_model_files_and_refuses_links_out_and_hidden_files(hub, saved_folder, tmp_path):
    """Links to a token and to /etc/passwd, a hidden credentials file, logs and helper code in the folder stay local;
    extra files go up only when named, and a named or needed file that is hidden, a pickle or a link out is refused
    before anything is sent."""
    token = tmp_path / "home" / ".cache" / "huggingface" / "token"
    token.parent.mkdir(parents=True)
    token.write_text("hf_SECRETtoken")
    (saved_folder / "token.json").symlink_to(token)
    (saved_folder / "passwd.py").symlink_to("/etc/passwd")
    (saved_folder / ".credentials.json").write_text('{"key": "SECRETkey"}')
    (saved_folder / "all_results.json").write_text('{"eval_accuracy": 0.5}')
    (saved_folder / "helpers.py").write_text("LOCAL = True\n")
    push_model(saved_folder, "org/tiny")
    files = received(hub, "org/tiny")
    code = ["configuration.py", "modeling.py", "pos_embed.py"]  # pos_embed.py: imported by modeling.py
    model = ["README.md", "config.json", *code, "model.safetensors"]
    assert sorted(files) == sorted([".gitattributes", "preprocessor_config.json", *model])
    for name in model:
        assert files[name] == (saved_folder / name).read_bytes(), name

    push_model(saved_folder, "org/tiny", include=["all_results.json"])
    assert received(hub, "org/tiny")["all_results.json"] == b'{"eval_accuracy": 0.5}'
    refused = [
        ("token.json", r"'token.json' is a link to .*/huggingface/token, outside .*saved; hf_vit uploads only files"),
        ("passwd.py", "'passwd.py' is a link to /etc/passwd, outside"),
        (".credentials.json", r"saved/\.credentials\.json is a hidden file; hf_vit never uploads hidden files"),
        ("training_args.bin", "training_args.bin is a pickle, which runs code when loaded"),
        ("../outside.txt", "'../outside.txt' leads outside"),
        ("missing.txt", "missing.txt does not exist"),
    ]
    for name, message in refused:
        with pytest.raises(ValueError, match=message):
            push_model(saved_folder, "org/refused", include=[name])
    (saved_folder / "pos_embed.py").rename(tmp_path / "pos_embed.py")
    (saved_folder / "pos_embed.py").symlink_to(tmp_path / "pos_embed.py")
    with pytest.raises(ValueError, match="'pos_embed.py' is a link to .*, outside"):
        push_model(saved_folder, "org/refused")
    assert ("model", "org/refused") not in hub.hub.repos, "refused before anything is sent"
    stored = [path.read_bytes() for path in hub.hub.root.rglob("*") if path.is_file()]
    assert not any(b"SECRET" in content or b"root:" in content for content in stored)


def test_cli_include_pushes_named_files_and_refuses_a_link_out_in_one_line(hub, saved_folder, tmp_path, capsys):
    (saved_folder / "all_results.json").write_text("{}")
    (saved_folder / "eval").mkdir()
    (saved_folder / "eval" / "predictions.csv").write_text("id,label\n")
    argv = ["--model", str(saved_folder), "--repo-id", "org/with-results"]
    assert push_to_hub.main([*argv, "--include", "all_results.json", "eval/predictions.csv"]) == 0
    assert {"all_results.json", "eval/predictions.csv"} <= set(received(hub, "org/with-results"))

    (saved_folder / "token.json").symlink_to(tmp_path / "token")
    (tmp_path / "token").write_text("hf_SECRETtoken")
    result = subprocess.run(
        [sys.executable, "scripts/push_to_hub.py", *argv, "--include", "token.json"],
        cwd=ROOT,
        env={**hub.env(tmp_path / "cli-home"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: 'token.json' is a link to {tmp_path / 'token'}, outside {saved_folder}; hf_vit uploads only files "
        "inside the model folder."
    )


def test_folders_without_safetensors_or_code_are_refused(tmp_path, saved_folder, capsys):
    (saved_folder / "model.safetensors").rename(saved_folder / "pytorch_model.bin")
    assert push_to_hub.main(["--model", str(saved_folder), "--repo-id", "org/x"]) == 1
    assert capsys.readouterr().err == (
        f"error: {saved_folder} has no .safetensors weights (only pickle files: pytorch_model.bin, "
        "training_args.bin); hf_vit shares safetensors only: load the model and save it again with save_pretrained.\n"
    )
    no_code = tmp_path / "no-code"
    tiny_classifier(0).save_pretrained(no_code)
    (no_code / "modeling.py").unlink()
    with pytest.raises(ValueError, match=r"was not saved with its code \(no auto_map, or missing modeling.py\)"):
        push_model(no_code, "org/x")


def test_weights_left_by_an_earlier_push_are_deleted(hub):
    model = tiny_classifier(0)
    push_model(model, "org/tiny-vit")
    api = HfApi()
    shard = "model-00001-of-00002.safetensors"
    api.upload_file(path_or_fileobj=b"old shard", path_in_repo=shard, repo_id="org/tiny-vit")
    commit = push_model(model, "org/tiny-vit")
    files = api.list_repo_files("org/tiny-vit", revision=commit.oid)
    assert shard not in files and "model.safetensors" in files


def test_push_errors_name_the_repo_and_the_reason(hub):
    with pytest.raises(HubError) as error:
        push_model(tiny_classifier(0), "forbidden/tiny")
    assert str(error.value) == (
        "Could not push to forbidden/tiny: the Hub answered 403: "
        'You don\'t have the rights to create a model under the namespace "forbidden"'
    )


def test_model_card_describes_the_preset_and_its_results():
    config = hf_vit.create_config("ViT-B/16", image_size=384, num_labels=10)
    card = render_model_card(
        config,
        source="Fine-tuned on CIFAR-10.",
        model_id="org/vit-b16-cifar10",
        datasets="cifar10",
        base_model="org/vit-b16-in21k",
        results={"accuracy": 0.9876},
        license="mit",
    )
    data = card.data.to_dict()
    assert data["base_model"] == "org/vit-b16-in21k" and data["license"] == "mit"
    assert data["model-index"][0]["name"] == "vit-b16-cifar10"
    assert "| cifar10 | validation | accuracy | 0.9876 |" in card.text
    assert "ViT-B/16 (86.1 M parameters) classifying 384×384 px images into 10 classes" in card.text
    assert "| Parameters | 86,098,186 |" in card.text  # 86,567,656 with ImageNet's 1,000 classes at 224 px
    assert "| Patch size | 16×16 px (24×24 grid, 577 tokens) |" in card.text
    assert "| Layers / heads | 12 / 12 |" in card.text

    default = render_model_card(hf_vit.create_config("ViT-B/16"), source="x")
    assert "| Parameters | 86,567,656 |" in default.text
    hybrid = render_model_card(hf_vit.create_config("R50+ViT-B/16"), source="x")
    assert "R50+ViT-B/16 (98.7 M parameters)" in hybrid.text and "| Parameters | 98,659,112 |" in hybrid.text
    assert "feature map of stride 16. Each 1×1 cell" in hybrid.text
    encoder = hf_vit.VisionTransformerConfig(**TINY, architectures=["VisionTransformerModel"])
    encoder_card = render_model_card(encoder, source="x")
    assert encoder_card.data.pipeline_tag == "image-feature-extraction"
    assert "Custom ViT (" in encoder_card.text and "AutoModel.from_pretrained" in encoder_card.text
    with pytest.raises(ValueError, match="results need the dataset they were measured on"):
        render_model_card(config, source="x", results={"accuracy": 0.5})


def test_card_title_names_the_folder_or_repo_and_the_example_loads_the_path(tmp_path):
    config = hf_vit.VisionTransformerConfig(**TINY)
    folder = tmp_path / "runs" / "ft"
    for model_id, title in [(str(folder), "ft"), (f"{folder}/", "ft"), ("org/vit-digits", "vit-digits"), (None, None)]:
        card = render_model_card(config, source="x", model_id=model_id)
        heading = next(line for line in card.text.splitlines() if line.startswith("# "))
        assert heading == f"# {title or 'Custom ViT'}"
        loads = f'from_pretrained("{model_id or "path/to/model"}", trust_remote_code=True)'
        assert loads in card.text, "the loading example keeps the path as given"
    assert (
        next(
            line
            for line in render_model_card(hf_vit.create_config("ViT-B/16"), source="x").text.splitlines()
            if line.startswith("# ")
        )
        == "# ViT-B/16"
    )


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every table row as a Markdown renderer (markdown-it, with GitHub's tables) reads them."""
    rows, cell_open = [], False
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        if token.type == "tr_open":
            rows.append([])
        cell_open = token.type in ("td_open", "th_open") or (cell_open and token.type == "inline")
        if token.type == "inline" and cell_open:
            rows[-1].append("".join(child.content for child in token.children if child.type in ("text", "softbreak")))
    return rows


def test_card_escapes_label_and_split_names():
    """Names from a dataset are literal text in one table cell each: no broken row, no HTML, no image or link."""
    image = "![x](http://example.com/pixel.png)"
    labels = ["a|b", "two\nlines", "<script>alert(1)</script>", image, "back\\"]
    config = hf_vit.VisionTransformerConfig(**TINY)
    config.id2label = dict(enumerate(labels))
    card = render_model_card(
        config, source="x", results={"accuracy": 0.5}, results_dataset="org/x", results_split="|a\nb"
    )
    rows = table_rows(card.text)
    assert len(rows) == 10 + 2, "the architecture table (header and 9 rows) and the results table (header and 1 row)"
    assert all(len(row) == 2 for row in rows[:10]) and all(len(row) == 4 for row in rows[10:])
    assert rows[9] == [
        "Labels",
        "a|b, two lines, <script>alert(1)</script>, ![x](http://example.com/pixel.png), back\\",
    ]
    assert rows[11] == ["org/x", "|a b", "accuracy", "0.5"]
    rendered = MarkdownIt("commonmark").enable("table").render(card.text)
    assert "<script" not in rendered and "<img" not in rendered and "&lt;script&gt;" in rendered


def test_card_publishes_no_local_dataset_path(tmp_path, monkeypatch):
    """A dataset given as a local path is "local dataset" in the text and the model-index, and not in `datasets`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes").mkdir()  # a folder that reads like a Hub id: what the scripts loaded, so it is local
    config = hf_vit.VisionTransformerConfig(**TINY)
    for local in ["/home/me/data", "~/data", "shapes", str(tmp_path / "shapes"), "../data"]:
        card = render_model_card(config, source="x", datasets=[local, "org/shapes"], results={"accuracy": 0.5})
        data = card.data.to_dict()
        assert data["datasets"] == ["org/shapes"]
        assert data["model-index"][0]["results"][0]["dataset"] == {
            "name": "local dataset",
            "type": "local dataset",
            "split": "validation",
        }
        assert local not in str(card).replace("org/shapes", ""), local
        assert "Data: local dataset, org/shapes." in card.text and "| local dataset | validation |" in card.text
    card = render_model_card(config, source="x", results={"accuracy": 0.5}, results_dataset="scikit-learn's digits")
    assert card.data.eval_results[0].dataset_name == "scikit-learn's digits", "plain names are not paths"


def test_card_templates_ship_inside_the_package():
    templates = Path(hf_vit.__file__).parent / "tools" / "model_cards"
    assert sorted(p.name for p in templates.glob("*.md")) == ["hybrid.md", "vit.md"]
    assert (ROOT / "model_cards" / "vit.md").read_text() == (templates / "vit.md").read_text()


def test_the_test_hub_answers_as_the_client_expects(hub):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    api = HfApi()
    assert api.whoami()["name"] == "tester"
    repo = api.create_repo("org/checks").repo_id
    with pytest.raises(ValueError, match="needs type and value"):
        api.upload_file(
            path_or_fileobj=b"---\nmodel-index:\n- name: x\n  results:\n  - task: {type: t}\n    dataset: {type: d}\n"
            b"    metrics: [{type: accuracy}]\n---\n",
            path_in_repo="README.md",
            repo_id=repo,
        )
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, ".gitattributes", revision="no-such-branch")
    assert [ref.name for ref in api.list_repo_refs(repo).branches] == ["main"]


@pytest.mark.slow
def test_pretrain_pushes_its_output_folder_with_its_card(hub, tmp_path):
    out = tmp_path / "run"
    overrides = "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,intermediate_size=64,patch_size=4"
    command = [sys.executable, "scripts/pretrain.py", "--config-overrides", overrides, "--image-size", "8"]
    command += ["--max-steps", "2", "--per-device-batch-size", "8", "--output-dir", str(out)]
    env = {**hub.env(tmp_path / "home"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "--push-to-hub", "org/digits"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = json.loads((out / "all_results.json").read_text())["eval_accuracy"]
    api = HfApi()
    assert {"model.safetensors", "modeling.py", "preprocessor_config.json"} <= set(api.list_repo_files("org/digits"))
    card = (out / "README.md").read_text()
    assert Path(api.hf_hub_download("org/digits", "README.md", cache_dir=tmp_path / "cache")).read_text() == card
    assert f"value: {accuracy}" in card and "Pre-trained from scratch with hf_vit's `scripts/pretrain.py`" in card
