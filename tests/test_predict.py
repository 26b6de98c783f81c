"""scripts/predict.py: a folder of real images classified as transformers' pipeline classifies them, file by file."""

import csv
import json
from pathlib import Path

import pytest
from conftest import load_script
from PIL import Image

SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def images(digits_folder, tmp_path_factory) -> Path:
    """Real images in a tree: 2 handwritten digits of each class in subfolders, two photos (JPEG), a PNG that is not
    an image, and a text file that is no image at all (not a candidate)."""
    from sklearn.datasets import load_sample_images

    root = tmp_path_factory.mktemp("predict")
    for class_folder in sorted(digits_folder.iterdir()):
        (root / "digits" / class_folder.name).mkdir(parents=True)
        for png in sorted(class_folder.glob("*.png"))[:2]:
            (root / "digits" / class_folder.name / png.name).write_bytes(png.read_bytes())
    for name, pixels in zip(("china", "flower"), load_sample_images().images, strict=True):
        Image.fromarray(pixels).save(root / f"{name}.jpg", quality=90)
    (root / "broken.png").write_text("not a PNG")
    (root / "notes.txt").write_text("not an image")
    return root


def test_predictions_equal_the_pipeline_file_by_file(pretrained_folder, images, tmp_path, capsys):
    from transformers import pipeline

    extra = tmp_path / "extra.png"
    Image.open(next((images / "digits" / "digit3").glob("*.png"))).save(extra)
    out = tmp_path / "predictions.json"
    args = ["--model", str(pretrained_folder), "--input", str(images), extra.as_uri(), str(tmp_path / "missing.jpg")]
    assert load_script("predict").main([*args, "--top-k", "3", "--batch-size", "7", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    files = sorted(str(path) for path in images.rglob("*") if path.suffix in (".png", ".jpg"))
    assert [row["file"] for row in rows] == [*files, extra.as_uri(), str(tmp_path / "missing.jpg")]
    errors = {Path(row["file"]).name: row["error"] for row in rows if "error" in row}
    assert errors.keys() == {"broken.png", "missing.jpg"}
    assert errors["broken.png"].startswith("not a readable image (cannot identify image file")
    assert errors["missing.jpg"] == "no such file or folder"
    assert "warning: " + str(images / "broken.png") in capsys.readouterr().err

    classify = pipeline("image-classification", model=str(pretrained_folder), trust_remote_code=True)
    for row in rows:
        if "error" in row:
            continue
        expected = classify(str(extra) if row["file"] == extra.as_uri() else row["file"], top_k=3)
        assert row["labels"] == [item["label"] for item in expected], row["file"]
        assert row["scores"] == pytest.approx([item["score"] for item in expected], abs=SCORE_TOLERANCE, rel=0)
    assert len(rows) - len(errors) == 23  # 20 digits, 2 photos, the file:// URL


def test_csv_on_stdout_lists_each_file_with_its_labels(pretrained_folder, images, capsys):
    folder = images / "digits" / "digit0"
    assert load_script("predict").main(["--model", str(pretrained_folder), "--input", str(folder), "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(captured.out.splitlines()))
    assert [row["file"] for row in rows] == sorted(str(path) for path in folder.glob("*.png"))
    assert all(row["label_1"].startswith("LABEL_") and float(row["score_1"]) >= float(row["score_2"]) for row in rows)
    assert list(rows[0]) == ["file", "label_1", "score_1", "label_2", "score_2", "error"]
    assert "classified 2 images; 0 could not be read" in captured.err


def test_bad_model_is_one_error_line(tmp_path, capsys):
    assert load_script("predict").main(["--model", "ViT-Ti/16", "--input", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "error: --model 'ViT-Ti/16' is a preset, whose weights are random; name a trained model.\n"
    )
    assert load_script("predict").main(["--model", str(tmp_path / "nothere"), "--input", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: --model ")
