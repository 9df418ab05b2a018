"""--preprocess: presets, the spec language, the fit check against the model input, and the pixel math."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from int8flow.tasks.data import (
    PRESETS,
    PreprocessError,
    PreprocessSpec,
    check_fits,
    load_photo,
    parse_preprocess,
    preprocess_batch,
    preprocess_imagenet_tf,
)


def random_image(height: int, width: int, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_presets_hold_the_published_constants():
    assert PRESETS == {
        "imagenet-tf": PreprocessSpec(256, 224, 1.0, (127.0,), (128.0,), "rgb"),
        "imagenet-torch": PreprocessSpec(256, 224, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "rgb"),
        "mnist": PreprocessSpec(None, None, 1 / 255, (0.0,), (1.0,), "gray"),
    }


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_name_parses_to_the_preset(name):
    assert parse_preprocess(name) == PRESETS[name]
    assert parse_preprocess(f" {name} ") == PRESETS[name]


def test_keys_override_a_preset():
    assert parse_preprocess("imagenet-tf,crop=200") == PreprocessSpec(256, 200, 1.0, (127.0,), (128.0,), "rgb")
    assert parse_preprocess("imagenet-torch, resize=none, channels=bgr") == PreprocessSpec(
        None, 224, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bgr"
    )


def test_a_spec_without_preset_starts_from_raw_pixels():
    assert parse_preprocess("crop=28") == PreprocessSpec(None, 28, 1.0, (0.0,), (1.0,), "rgb")
    assert parse_preprocess("resize=256,crop=224,mean=123.7/116.3/103.5,std=58.4/57.1/57.4,channels=bgr") == (
        PreprocessSpec(256, 224, 1.0, (123.7, 116.3, 103.5), (58.4, 57.1, 57.4), "bgr")
    )
    assert parse_preprocess("scale=0.5,mean=-1,std=2,channels=gray") == PreprocessSpec(
        None, None, 0.5, (-1.0,), (2.0,), "gray"
    )


@pytest.mark.parametrize(
    "spec",
    [*PRESETS.values(), PreprocessSpec(300, 288, 0.0123, (1.5, -2.0, 3.25), (0.1,), "bgr")],
    ids=[*PRESETS, "custom"],
)
def test_str_is_spec_text_that_reads_back_equal(spec):
    assert parse_preprocess(str(spec)) == spec


def test_str_spells_every_key():
    assert str(PRESETS["imagenet-tf"]) == "resize=256,crop=224,scale=1,mean=127,std=128,channels=rgb"
    assert str(PRESETS["mnist"]) == "resize=none,crop=none,scale=0.00392156862745098,mean=0,std=1,channels=gray"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "imagenet",
            r"--preprocess 'imagenet': unknown preset 'imagenet'; use one of imagenet-tf, imagenet-torch, "
            r"mnist, or key=value pairs with keys resize, crop, scale, mean, std, channels",
        ),
        (
            "imagenet-tf,size=3",
            r"--preprocess 'imagenet-tf,size=3': unknown key 'size'; valid keys: resize, crop, "
            r"scale, mean, std, channels",
        ),
        ("imagenet-tf,mnist", r"'mnist' is not key=value \(a preset name may only come first\)"),
        ("crop=224,crop=200", r"key 'crop' given twice; keep one"),
        ("crop=2.5", r"crop='2.5' is not a whole number of pixels or none; e.g. crop=224"),
        ("resize=0", r"resize=0: must be a whole number of pixels >= 1, or none"),
        ("scale=1/255", r"scale='1/255' is not a number; e.g. scale=0.00392156862745098"),
        ("scale=0", r"scale=0.0: must be a finite number > 0"),
        ("mean=0.5/x/0.5", r"mean='0.5/x/0.5' is not a number or '/'-separated numbers; e.g. mean=123.7/116.3/103.5"),
        ("std=1/2", r"std=1/2: channels=rgb needs 1 or 3 finite values separated by '/', e.g. std=58.4/57.1/57.4"),
        ("imagenet-torch,channels=gray", r"mean=0.485/0.456/0.406: channels=gray needs 1 finite value, e.g. mean=0.5"),
        ("std=1/0/1", r"std=1/0/1: must not be zero"),
        ("mean=nan", r"mean=nan: channels=rgb needs 1 or 3 finite values"),
        ("channels=rgba", r"channels='rgba': use one of rgb, bgr, gray"),
    ],
)
def test_malformed_text_is_refused_naming_the_key(text, message):
    with pytest.raises(PreprocessError, match=message):
        parse_preprocess(text)


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("imagenet-tf", (1, 3, 224, 224)),
        ("imagenet-torch", (None, 3, 224, 224)),
        ("imagenet-tf", (None, 3, None, None)),
        ("mnist", (None, 1, 28, 28)),
        ("mnist", (None, None, None, None)),
        ("imagenet-tf,channels=gray,crop=28", (8, 1, 28, 28)),
    ],
)
def test_fitting_specs_pass(text, shape):
    check_fits(parse_preprocess(text), shape, text)


@pytest.mark.parametrize(
    ("text", "shape", "message"),
    [
        (
            "imagenet-tf",
            (1, 1, 28, 28),
            r"^--preprocess 'imagenet-tf' does not fit the model input \(1, 1, 28, 28\): "
            r"3-channel \(rgb\) images but the model input has 1 channel; use --preprocess 'mnist', or add "
            r"channels=gray$",
        ),
        (
            "imagenet-tf,channels=gray",
            (None, 1, 28, 28),
            r"\(N, 1, 28, 28\): crop=224 makes 224x224 images but the "
            r"model input is 28x28; use --preprocess 'mnist', or add crop=28$",
        ),
        (
            "mnist",
            (1, 3, 224, 224),
            r"1-channel \(gray\) images but the model input has 3 channels; use --preprocess "
            r"'imagenet-tf' or 'imagenet-torch', or add channels=rgb \(or bgr\)$",
        ),
        (
            "imagenet-tf",
            (1, 3, 240, 240),
            r"crop=224 makes 224x224 images but the model input is 240x240; "
            r"add crop=240$",
        ),
        (
            "imagenet-torch",
            (1, 3, 200, 300),
            r"model input is 200x300; add resize=none,crop=none and store images at "
            r"200x300 \(HxW\)$",
        ),
        (
            "mnist",
            (1, 4, 28, 28),
            r"has 4 channels; only 1-channel \(gray\) or 3-channel \(rgb, bgr\) inputs are "
            r"supported$",
        ),
        (
            "mnist",
            (1, 28, 28),
            r"\(1, 28, 28\): the input is not NCHW \(4 dimensions\); int8flow calibrates image "
            r"models with NCHW inputs only$",
        ),
    ],
)
def test_misfits_name_the_spec_the_shape_and_the_remedy(text, shape, message):
    with pytest.raises(PreprocessError, match=message):
        check_fits(parse_preprocess(text), shape, text)


def test_mnist_preset_is_pixels_over_255():
    images = [random_image(28, 28, None, seed) for seed in range(3)]
    batch = preprocess_batch(images, PRESETS["mnist"], (None, 1, 28, 28))
    expected = np.stack(images)[:, None].astype(np.float32) * np.float32(1 / 255)
    assert batch.dtype == np.float32 and batch.shape == (3, 1, 28, 28) and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, expected)


def test_imagenet_torch_preset_crops_the_centre_and_normalises_per_channel():
    # Short side already 256, so the resize keeps every pixel and the expectation is plain NumPy.
    image = random_image(256, 300)
    batch = preprocess_batch([image], PRESETS["imagenet-torch"], (1, 3, 224, 224))
    top, left = (256 - 224) // 2, (300 - 224) // 2
    crop = image[top : top + 224, left : left + 224].astype(np.float32)
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    expected = ((crop * np.float32(1 / 255) - mean) / std).transpose(2, 0, 1)
    np.testing.assert_array_equal(batch[0], expected)


def imagenet_tf_reference(image: Image.Image) -> np.ndarray:
    """EfficientNet-Lite's preprocessing written out: short side 256, centre 224, (x - 127) / 128."""
    width, height = image.size
    ratio = 256 / min(width, height)
    size = (max(256, round(width * ratio)), max(256, round(height * ratio)))
    resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    pixels = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)


@pytest.mark.parametrize("name", ["chelsea", "rocket", "camera"])
def test_imagenet_tf_preset_is_efficientnet_lite_preprocessing(name):
    photo = load_photo(name)
    batch = preprocess_batch([photo], PRESETS["imagenet-tf"], (1, 3, 224, 224))
    np.testing.assert_array_equal(batch[0], imagenet_tf_reference(Image.fromarray(photo)))
    np.testing.assert_array_equal(batch[0], preprocess_imagenet_tf(photo))


def test_bgr_reverses_the_channels_of_rgb():
    images = [random_image(240, 260, seed=1), random_image(300, 230, seed=2)]
    rgb = preprocess_batch(images, parse_preprocess("imagenet-tf"), (2, 3, 224, 224))
    bgr = preprocess_batch(images, parse_preprocess("imagenet-tf,channels=bgr"), (2, 3, 224, 224))
    np.testing.assert_array_equal(bgr, rgb[:, ::-1])


def test_gray_from_rgb_is_itu_r_601_luma():
    image = random_image(28, 28, seed=3).astype(np.int64)
    batch = preprocess_batch([image.astype(np.uint8)], parse_preprocess("channels=gray"), (1, 1, 28, 28))
    # Pillow's fixed-point L = R * 299/1000 + G * 587/1000 + B * 114/1000, rounded.
    luma = (image[..., 0] * 19595 + image[..., 1] * 38470 + image[..., 2] * 7471 + 0x8000) >> 16
    np.testing.assert_array_equal(batch[0, 0], luma.astype(np.float32))


def test_rgb_from_gray_repeats_the_grey_level():
    image = random_image(30, 30, None, seed=4)
    batch = preprocess_batch([image], parse_preprocess("crop=30"), (1, 3, 30, 30))
    np.testing.assert_array_equal(batch[0], np.stack([image] * 3).astype(np.float32))


def test_an_empty_batch_has_the_model_shape():
    batch = preprocess_batch([], PRESETS["imagenet-tf"], (None, 3, 224, 224))
    assert batch.shape == (0, 3, 224, 224) and batch.dtype == np.float32


def test_images_of_the_wrong_size_are_refused_with_a_fix():
    with pytest.raises(
        PreprocessError,
        match=r"^image 0 of the batch: preprocessed to 32x30 \(HxW\) but the model "
        r"input needs 28x28; add crop=28 \(with resize=28 or more\)$",
    ):
        preprocess_batch([random_image(32, 30, None)], PRESETS["mnist"], (1, 1, 28, 28))


def test_images_of_different_sizes_cannot_share_a_batch_of_free_size():
    images = [random_image(20, 20, None), random_image(20, 24, None)]
    with pytest.raises(
        PreprocessError,
        match=r"^b.png: preprocessed to 20x24 \(HxW\) but a.png to 20x20; images of "
        r"one batch need equal sizes",
    ):
        preprocess_batch(images, PRESETS["mnist"], (None, 1, None, None), ["a.png", "b.png"])
    assert preprocess_batch(images[:1] * 2, PRESETS["mnist"], (None, 1, None, None)).shape == (2, 1, 20, 20)


def test_an_image_smaller_than_the_crop_is_refused():
    with pytest.raises(
        PreprocessError,
        match=r"^cat.jpg: image is 100x120 \(HxW\), smaller than crop=112; add "
        r"resize=112 \(or more\) so every image covers the crop$",
    ):
        preprocess_batch([random_image(100, 120)], parse_preprocess("crop=112"), (1, 3, 112, 112), ["cat.jpg"])


def test_arrays_that_are_not_images_are_refused():
    with pytest.raises(
        PreprocessError,
        match=r"^image 0 of the batch: image of shape \(28, 28, 4\) and dtype uint8; "
        r"expected uint8 HxW \(grey\) or HxWx3 \(RGB\)$",
    ):
        preprocess_batch([random_image(28, 28, 4)], PRESETS["mnist"], (1, 1, 28, 28))
    with pytest.raises(PreprocessError, match=r"image of shape \(28, 28\) and dtype float32"):
        preprocess_batch([np.zeros((28, 28), np.float32)], PRESETS["mnist"], (1, 1, 28, 28))


def test_a_batch_is_checked_against_the_model_input():
    with pytest.raises(PreprocessError, match=r"does not fit the model input \(1, 1, 28, 28\)"):
        preprocess_batch([random_image(256, 256)], PRESETS["imagenet-tf"], (1, 1, 28, 28))
