"""hf_vit.training.transforms: the same crops as torchvision's pipeline, decoded faster, normalised on the device."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from hf_vit.training.data import ImageSamples
from hf_vit.training.transforms import (
    Normalize,
    RandomResizedCrop,
    Resize,
    decode,
    decode_region,
    open_image,
    reduction_for,
)


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    """Real photos (scikit-learn's china.jpg and flower.jpg) at ImageNet-like 500x375, JPEG quality 90."""
    from sklearn.datasets import load_sample_images

    return [jpeg(Image.fromarray(pixels).resize((500, 375), Image.LANCZOS)) for pixels in load_sample_images().images]


def reference(size: int, scale: tuple[float, float] = (0.05, 1.0)) -> v2.Compose:
    """The pipeline ours replaces: decode to PIL, torchvision's inception crop and flip on the PIL image."""
    crop = v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return v2.Compose([crop, v2.RandomHorizontalFlip(), v2.PILToTensor()])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


@pytest.mark.parametrize("seed", range(6))
def test_accurate_crop_equals_torchvision_pipeline_under_the_same_seed(photos, seed):
    ours = RandomResizedCrop(224)
    data = photos[seed % 2]
    torch.manual_seed(seed)
    pixels = ours(data)
    torch.manual_seed(seed)
    expected = reference(224)(Image.open(io.BytesIO(data)).convert("RGB"))
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224) and pixels.is_contiguous()
    # Same box and flip; torch's uint8 bicubic kernel rounds like PIL's to within one level.
    assert (pixels.int() - expected.int()).abs().max() <= 2
    assert (pixels.int() - expected.int()).abs().float().mean() < 0.05


def test_sampled_box_and_flip_are_torchvision_draws():
    ours = RandomResizedCrop(224, scale=(0.05, 1.0))
    crop = v2.RandomResizedCrop(224, scale=(0.05, 1.0))
    for seed in range(50):
        torch.manual_seed(seed)
        params = ours.sample(500, 375)
        torch.manual_seed(seed)
        box = crop.make_params([torch.empty(3, 375, 500)])
        flip = bool(torch.rand(1) < 0.5)
        assert (params.top, params.left, params.height, params.width, params.flip) == (
            box["top"],
            box["left"],
            box["height"],
            box["width"],
            flip,
        )


def test_fast_decode_is_close_to_the_accurate_decode(photos):
    for seed, data in enumerate(photos):
        torch.manual_seed(seed)
        accurate = RandomResizedCrop(224)(data)
        torch.manual_seed(seed)
        fast = RandomResizedCrop(224, fast_decode=True)(data)
        assert not torch.equal(fast, accurate)  # the fast IDCT did run
        assert psnr(fast, accurate) > 38


def test_jpeg_decoded_by_libjpeg_turbo_equals_pil_and_other_modes_become_rgb(photos, tmp_path):
    for data in photos:
        pixels = decode_region(open_image(data), 10, 20, 300, 400)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[10:310, 20:420]
        assert pixels.shape == (3, 300, 400)
        assert np.abs(pixels.permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1
    image = Image.open(io.BytesIO(photos[0]))
    for mode in ("L", "CMYK"):
        data = jpeg(image.convert(mode))
        pixels = decode_region(open_image(data), 0, 0, 375, 500)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert pixels.shape == (3, 375, 500)
        assert np.abs(pixels.permute(1, 2, 0).numpy().astype(int) - expected).mean() < 1


def test_reduced_decode_only_where_the_crop_keeps_the_output_pixels(photos):
    assert reduction_for((375, 500), (224, 224)) == 1
    assert reduction_for((448, 449), (224, 224)) == 2
    assert reduction_for((447, 1000), (224, 224)) == 1
    assert reduction_for((375, 500), (32, 32)) == 8
    assert reduction_for((200, 130), (32, 32)) == 4
    image = decode(open_image(photos[0]).pil(), reduction=4)
    assert image.size == (125, 94)  # libjpeg's 1/4 scale: ceil(500 / 4) x ceil(375 / 4)
    # A small output: most crops are decoded at 1/2 to 1/8 scale and still look like the full decode's crops.
    fast = RandomResizedCrop(48, reduced_decode=True)
    full = RandomResizedCrop(48, reduced_decode=False)
    reductions = []
    for seed in range(8):
        torch.manual_seed(seed)
        params = fast.sample(500, 375)
        reductions.append(reduction_for((params.height, params.width), (48, 48)))
        torch.manual_seed(seed)
        reduced = fast(photos[seed % 2])
        torch.manual_seed(seed)
        expected = full(photos[seed % 2])
        assert psnr(reduced, expected) > 30
    assert sum(r > 1 for r in reductions) >= 4


def test_samples_are_reproducible_per_seed_epoch_and_index(photos):
    dataset = [{"image": {"bytes": data, "path": None}, "label": label} for label, data in enumerate(photos * 2)]
    transform = RandomResizedCrop(64)
    samples = ImageSamples(dataset, transform, "image", "label", seed=3)
    first = [samples[i][0] for i in range(4)]
    assert torch.equal(samples[2][0], first[2])  # any order, any worker: the same pixels
    assert not torch.equal(first[0], first[2])  # same photo, another index: another crop
    samples.set_epoch(1)
    assert not torch.equal(samples[0][0], first[0])
    samples.set_epoch(0)
    assert torch.equal(samples[0][0], first[0])


def test_eval_resize_matches_torchvision_and_other_formats_become_rgb(photos, tmp_path):
    image = Image.open(io.BytesIO(photos[0])).convert("RGB")
    expected = v2.Compose([v2.Resize((224, 224), interpolation=v2.InterpolationMode.BICUBIC), v2.PILToTensor()])
    pixels = Resize(224, reduced_decode=False)(photos[0])
    assert (pixels.int() - expected(image).int()).abs().max() <= 2
    grey = tmp_path / "grey.png"
    image.convert("L").save(grey)
    assert Resize(32)(str(grey)).shape == (3, 32, 32)
    assert RandomResizedCrop(32)(image.convert("RGBA")).shape == (3, 32, 32)


def test_unreadable_images_become_none_and_bad_settings_are_named():
    assert RandomResizedCrop(32)(b"not an image") is None
    assert Resize(32)({"bytes": b"\xff\xd8\xff truncated", "path": None}) is None
    with pytest.raises(ValueError, match=r"scale must satisfy 0 < min <= max <= 1, got \(0.5, 0.1\)"):
        RandomResizedCrop(32, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="interpolation must be 'bicubic' or 'bilinear', got 'nearest'"):
        RandomResizedCrop(32, interpolation="nearest")
    with pytest.raises(ValueError, match="Normalize expects uint8 or float pixels, got torch.int32"):
        Normalize()(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


def test_normalize_on_the_device_equals_the_float_pipeline():
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(pixels))
    torch.testing.assert_close(Normalize(mean, std)(pixels), expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(Normalize()(pixels), pixels.float() / 127.5 - 1, atol=1e-6, rtol=0)
    assert Normalize()(pixels, torch.bfloat16).dtype == torch.bfloat16
