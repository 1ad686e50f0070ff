"""The runtime's image processor against transformers' image processors (their PIL backends, the reference).

Each step (resize size, Pillow resize, center crop with padding, rescale, normalize, channel flip, RGB
conversion, array-to-PIL) is compared with transformers' own step function; whole processors with
ViTImageProcessorPil, DeiTImageProcessorPil, BeitImageProcessorPil, ConvNextImageProcessorPil,
CLIPImageProcessorPil, BitImageProcessorPil and MobileViTImageProcessorPil (and AutoImageProcessor with
backend="pil" for hub-style configs), on the real photos of ../shared/data/_assets and on synthetic
images of many sizes, aspect ratios and modes. Tolerance 1e-5 (the runtime is in fact bit-exact).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT
from image_helpers import MODES, SIZES, exif_rotated_jpeg, photo_paths, png_bytes, synthetic
from runtime_under_test import rt

PIL = pytest.importorskip("PIL")
from PIL import Image

TOL = 1e-5
IMAGENET_DEFAULT = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}

# preprocessor_config.json as the hub publishes them for widely used checkpoints (old files: feature_extractor_type,
# int sizes, no do_rescale), written out here since the hub cannot be reached.
HUB_CONFIGS = {
    "google/vit-base-patch16-224": {"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
                                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224},
    "facebook/deit-base-distilled-patch16-224": {"crop_size": 224, "do_center_crop": True, "do_normalize": True,
                                                 "do_resize": True, "feature_extractor_type": "DeiTFeatureExtractor",
                                                 "resample": 3, "size": 256, **IMAGENET_DEFAULT},
    "microsoft/beit-base-patch16-224": {"crop_size": 224, "do_center_crop": False, "do_normalize": True, "do_resize": True,
                                        "feature_extractor_type": "BeitFeatureExtractor", "image_mean": [0.5, 0.5, 0.5],
                                        "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224},
    "facebook/convnext-tiny-224": {"crop_pct": 0.875, "do_normalize": True, "do_resize": True,
                                   "feature_extractor_type": "ConvNextFeatureExtractor", "resample": 3, "size": 224,
                                   **IMAGENET_DEFAULT},
    "facebook/convnext-base-384": {"crop_pct": 0.875, "do_normalize": True, "do_resize": True,
                                   "feature_extractor_type": "ConvNextFeatureExtractor", "resample": 3, "size": 384,
                                   **IMAGENET_DEFAULT},
    "microsoft/resnet-50": {"crop_pct": 0.875, "do_normalize": True, "do_resize": True,
                            "feature_extractor_type": "ConvNextFeatureExtractor", "resample": 3, "size": 224, **IMAGENET_DEFAULT},
    "openai/clip-vit-base-patch32": {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                                     "feature_extractor_type": "CLIPFeatureExtractor",
                                     "image_mean": [0.48145466, 0.4578275, 0.40821073],
                                     "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224},
    "apple/mobilevit-small": {"crop_size": 256, "do_center_crop": True, "do_flip_channel_order": True, "do_resize": True,
                              "feature_extractor_type": "MobileViTFeatureExtractor", "resample": 2, "size": 288},
    "microsoft/swin-tiny-patch4-window7-224": {"do_normalize": True, "do_resize": True,
                                               "feature_extractor_type": "ViTFeatureExtractor", "resample": 3, "size": 224,
                                               **IMAGENET_DEFAULT},
    "google/bit-50": {"crop_size": {"height": 448, "width": 448}, "do_center_crop": True, "do_convert_rgb": True,
                      "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                      "image_std": [0.5, 0.5, 0.5], "image_processor_type": "BitImageProcessor", "resample": 3,
                      "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 448}},
    "facebook/dinov2-small": {"crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
                              "do_normalize": True, "do_rescale": True, "do_resize": True,
                              "image_processor_type": "BitImageProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
                              "size": {"shortest_edge": 256}, **IMAGENET_DEFAULT},
}

# Representative settings of each class: every size form, resample filter and switch.
SETTINGS = [
    ("ViT", {}),
    *[("ViT", {"size": {"height": 48, "width": 64}, "resample": r}) for r in range(6)],
    ("ViT", {"do_resize": False}),
    ("ViT", {"do_normalize": False}),
    ("ViT", {"do_rescale": False}),
    ("ViT", {"do_rescale": False, "do_normalize": False}),
    ("ViT", {"rescale_factor": 1 / 127.5, "image_mean": 0.3, "image_std": 0.7}),
    ("ViT", {"size": {"shortest_edge": 40}}),
    ("ViT", {"size": {"shortest_edge": 30, "longest_edge": 50}}),
    ("ViT", {"size": {"height": 40, "width": 40}, "do_center_crop": True, "crop_size": {"height": 300, "width": 20}}),
    ("ViT", {"do_resize": False, "do_center_crop": True, "crop_size": {"height": 101, "width": 64}}),
    ("DeiT", {}),
    ("Beit", {}),
    ("ConvNext", {"size": {"shortest_edge": 224}}),
    ("ConvNext", {}),
    ("ConvNext", {"size": {"shortest_edge": 100}, "crop_pct": 0.95, "resample": 1}),
    ("CLIP", {}),
    ("CLIP", {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 48}, "do_convert_rgb": False}),
    ("Bit", {}),
    ("MobileViT", {}),
    ("MobileViT", {"do_flip_channel_order": False, "do_normalize": True}),
]


def reference_class(name: str):
    import transformers

    return getattr(transformers, f"{name}ImageProcessorPil")


def json_config(processor) -> dict:
    """A transformers processor's config as embedded: through JSON, as preprocessor_config.json holds it."""
    return json.loads(json.dumps(processor.to_dict()))


def reference(processor, image, **kwargs) -> np.ndarray:
    return processor(image, return_tensors="np", **kwargs)["pixel_values"][0]


def assert_pixels(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == expected.shape, (ours.shape, expected.shape)
    assert np.abs(ours - expected).max(initial=0) <= TOL


def test_class_defaults_match_transformers():
    for name, entry in rt._IMAGE_PROCESSORS.items():
        if name == "ImageProcessor":  # transformers.js's base class: test_transformers_js_base_class
            continue
        cls = reference_class(name.removesuffix("ImageProcessor"))
        for key, value in {**rt._IMAGE_DEFAULTS, **entry}.items():
            expected = getattr(cls, key, None)
            expected = list(expected) if isinstance(expected, tuple) else expected
            assert value == expected, (name, key, value, expected)


def test_transformers_js_base_class():
    """transformers.js's ImageProcessor (ImageFeatureExtractor, which RMBG's configs name) reads resample ?? 2,
    do_rescale ?? true, rescale_factor ?? 1/255 and the rest as given (src/base/image_processors_utils.js); it
    processes as transformers' PIL processors do with the same settings (ViT's here, bit-equal)."""
    from transformers import ViTImageProcessorPil

    config = {"feature_extractor_type": "ImageFeatureExtractor", "size": {"width": 24, "height": 16}, "do_normalize": True,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [1, 1, 1]}
    ours = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: config})
    assert ours.name == "ImageProcessor" and ours.output_size == (16, 24)
    assert (ours.resample, ours.do_rescale, ours.rescale_factor, ours.do_center_crop) == (2, True, 1 / 255, False)
    reference_processor = ViTImageProcessorPil(size={"height": 16, "width": 24}, image_mean=[0.5] * 3, image_std=[1] * 3)
    for i, (w, h, mode) in enumerate([(64, 48, "RGB"), (7, 90, "L"), (30, 20, "RGBA")]):
        image = rt.load_image(synthetic(w, h, mode, seed=i))
        assert np.array_equal(ours.process(image), reference(reference_processor, image))
    with pytest.raises(rt.ProcessorReconstructionError, match="size is None"):
        rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {"feature_extractor_type": "ImageFeatureExtractor"}})
    for extra, asked in (({"size_divisibility": 32}, "size_divisibility"), ({"do_thumbnail": True}, "do_thumbnail"),
                         ({"size": {"shortest_edge": 512}}, "size {'shortest_edge': 512}")):
        with pytest.raises(rt.ProcessorReconstructionError) as info:
            rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {**config, **extra}})
        assert str(info.value) == (f"hf_image_processor_config (transformers.js's ImageFeatureExtractor) asks for {asked}; "
                                   "this runtime rebuilds its resize to one {height, width}, rescale and normalize only")


def test_model_types_match_transformers():
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    for model_type, name in rt._IMAGE_PROCESSOR_MODEL_TYPES.items():
        assert IMAGE_PROCESSOR_MAPPING_NAMES[model_type]["pil"] == name + "Pil", model_type


# --- steps, each against transformers' own function ------------------------------------------------------


@pytest.mark.parametrize("height, width", [(1, 1), (3, 500), (500, 3), (17, 33), (224, 224), (225, 223), (480, 640), (1, 999)])
def test_resize_size(height, width):
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio

    chw = np.zeros((3, height, width), dtype=np.uint8)
    for edge in (1, 32, 224, 384):
        expected = get_resize_output_image_size(chw, size=edge, default_to_square=False, input_data_format="channels_first")
        assert rt._resize_size(height, width, {"shortest_edge": edge}) == tuple(expected)
        for longest in (edge + 1, edge * 2, edge * 5):
            expected = get_size_with_aspect_ratio((height, width), edge, longest)
            assert rt._resize_size(height, width, {"shortest_edge": edge, "longest_edge": longest}) == tuple(expected)
    assert rt._resize_size(height, width, {"height": 7, "width": 9}) == (7, 9)


@pytest.mark.parametrize("resample", range(6))
def test_resize(resample):
    from transformers.image_transforms import resize

    for width, height in SIZES[:6]:
        image = synthetic(width, height)
        for size in ((32, 32), (7, 45), (height * 2, width)):
            expected = resize(np.asarray(image), size, resample=resample, input_data_format="channels_last")
            assert np.array_equal(np.asarray(rt._resize(image, *size, resample)), expected)


def test_center_crop_pads_like_transformers():
    from transformers.image_transforms import center_crop

    rng = np.random.default_rng(0)
    for height, width in ((1, 1), (10, 10), (11, 7), (224, 300), (3, 500)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for crop in ((1, 1), (4, 6), (5, 5), (10, 10), (12, 9), (224, 224), (300, 2)):
            expected = center_crop(image.transpose(2, 0, 1), crop, input_data_format="channels_first")
            ours = rt._center_crop(image, *crop)
            assert ours.shape == (*crop, 3)
            assert np.array_equal(ours.transpose(2, 0, 1), expected), (height, width, crop)


def test_rescale_normalize_flip_like_transformers():
    from transformers.image_transforms import flip_channel_order, normalize, rescale

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    for factor in (1 / 255, 1 / 127.5, 0.5):
        assert np.array_equal(rt._rescale(image, factor), rescale(image, factor, input_data_format="channels_last"))
    scaled = rt._rescale(image, 1 / 255)
    for mean, std in (([0.5] * 3, [0.5] * 3), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])):
        for source in (image, scaled, scaled.astype(np.float64)):
            expected = normalize(source, mean, std, input_data_format="channels_last")
            ours = rt._normalize(source, mean, std)
            assert ours.dtype == expected.dtype and np.array_equal(ours, expected)
    assert np.array_equal(rt._flip_channel_order(image), flip_channel_order(image, input_data_format="channels_last"))


def test_rgb_conversion_like_transformers():
    from transformers.image_transforms import convert_to_rgb

    rng = np.random.default_rng(2)
    for channels in (1, 3, 4):
        for array in (rng.integers(0, 256, (5, 6, channels), dtype=np.uint8), rng.random((5, 6, channels)).astype(np.float32)):
            expected = convert_to_rgb(array, return_numpy=True, input_data_format="channels_last")
            assert np.array_equal(rt._array_to_rgb(array), expected)
    for mode in MODES:
        image = synthetic(13, 9, mode)
        assert np.array_equal(np.asarray(rt._pil_to_rgb(image)), convert_to_rgb(image, return_numpy=True)), mode
    transparent = synthetic(13, 9, "P")
    transparent.info["transparency"] = 3
    assert np.array_equal(np.asarray(rt._pil_to_rgb(transparent)), convert_to_rgb(transparent, return_numpy=True))


def test_array_to_pil_like_transformers():
    from transformers.image_transforms import _rescale_for_pil_conversion, to_pil_image

    rng = np.random.default_rng(3)
    for array in (rng.integers(0, 256, (5, 6, 3), dtype=np.uint8), rng.random((5, 6, 3)),
                  rng.integers(0, 256, (5, 6, 3)).astype(np.float32), np.array([[[0.0, 1.0, 1.0]]])):
        image, scaled = rt._array_to_pil(array)
        assert scaled == _rescale_for_pil_conversion(array)
        assert np.array_equal(np.asarray(image), np.asarray(to_pil_image(array, input_data_format="channels_last")))


def test_load_image_like_transformers(tmp_path):
    from transformers.image_utils import load_image

    for mode in MODES:
        if mode == "PA":  # no file format stores it
            assert np.array_equal(np.asarray(rt.load_image(synthetic(21, 13, mode))), np.asarray(load_image(synthetic(21, 13, mode))))
            continue
        path = tmp_path / f"{mode.replace(';', '')}.{'tiff' if mode in ('F', 'CMYK') else 'png'}"
        synthetic(21, 13, mode).save(path)
        ours = rt.load_image(str(path))
        assert ours.mode == "RGB"
        assert np.array_equal(np.asarray(ours), np.asarray(load_image(str(path)))), mode
        assert np.array_equal(np.asarray(rt.load_image(path)), np.asarray(ours))  # a pathlib.Path
        assert np.array_equal(np.asarray(rt.load_image(path.read_bytes())), np.asarray(ours))  # raw bytes
    for orientation in range(1, 9):
        path = exif_rotated_jpeg(tmp_path / f"exif{orientation}.jpg", orientation)
        ours = rt.load_image(str(path))
        expected = load_image(str(path))
        assert ours.size == expected.size and np.array_equal(np.asarray(ours), np.asarray(expected)), orientation
        assert ours.size == ((40, 60) if orientation >= 5 else (60, 40))
    for path in photo_paths():
        assert np.array_equal(np.asarray(rt.load_image(str(path))), np.asarray(load_image(str(path))))


def test_load_image_leaves_the_callers_image_alone(tmp_path):
    path = exif_rotated_jpeg(tmp_path / "exif6.jpg", 6)
    image = Image.open(path)
    before = (image.size, image.mode, image.getexif().get(0x0112))
    rotated = rt.load_image(image)
    assert rotated is not image and rotated.size == (40, 60)
    assert (image.size, image.mode, image.getexif().get(0x0112)) == before
    upright = synthetic(5, 4)
    assert rt.load_image(upright) is upright  # nothing to do, nothing copied


# --- whole processors ------------------------------------------------------------------------------------


def images_for_processors():
    """(name, image) pairs: the real photos (paths), synthetic RGB images of every size."""
    items = [(path.name, str(path)) for path in photo_paths()]
    return items + [(f"{w}x{h}", synthetic(w, h)) for w, h in SIZES]


@pytest.mark.parametrize("family, settings", SETTINGS, ids=[f"{f}-{json.dumps(s, sort_keys=True)}" for f, s in SETTINGS])
def test_processor_matches_transformers(family, settings):
    from transformers.image_utils import load_image

    reference_processor = reference_class(family)(**settings)
    ours = rt.ImageProcessor(json_config(reference_processor))
    for name, image in images_for_processors():
        try:
            expected = reference(reference_processor, load_image(image))
        except ValueError:  # transformers too resizes a thin image to nothing
            with pytest.raises(rt.InvalidInputError, match="nothing is left"):
                ours.process(rt.load_image(image))
            continue
        assert_pixels(ours.process(rt.load_image(image)), expected)
    if ours.output_size is not None:
        assert expected.shape[1:] == ours.output_size


@pytest.mark.parametrize("hub_id", list(HUB_CONFIGS))
def test_hub_configs_match_auto_image_processor(hub_id, tmp_path):
    """Old-style hub files (feature_extractor_type, int sizes) read as transformers reads them."""
    from transformers import AutoImageProcessor
    from transformers.image_utils import load_image

    config = HUB_CONFIGS[hub_id]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    reference_processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    ours = rt.ImageProcessor(config)
    assert ours.name == type(reference_processor).__name__.removesuffix("Pil")
    for name, image in images_for_processors()[:4]:
        assert_pixels(ours.process(rt.load_image(image)), reference(reference_processor, load_image(image)))


def test_config_without_type_takes_the_model_types_class(tmp_path):
    from transformers import AutoImageProcessor

    config = {"do_resize": True, "size": 40, "resample": 3, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    reference_processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    ours = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: config, rt.KEY_MODEL_CONFIG: {"model_type": "vit"}})
    image = synthetic(50, 30)
    assert_pixels(ours.process(image), reference(reference_processor, image))
    assert ours.name == "ViTImageProcessor" and ours.output_size == (40, 40)


@pytest.mark.parametrize("family", ["ViT", "CLIP", "MobileViT"])
def test_modes_through_load_image(family, tmp_path):
    """Every mode opened as the pipelines open it (load_image) then processed."""
    from transformers.image_utils import load_image

    reference_processor = reference_class(family)(size={"shortest_edge": 24} if family != "ViT" else {"height": 24, "width": 24},
                                                  crop_size={"height": 20, "width": 20})
    ours = rt.ImageProcessor(json_config(reference_processor))
    for mode in MODES:
        image = synthetic(31, 19, mode)
        assert_pixels(ours.process(rt.load_image(image)), reference(reference_processor, load_image(image)))
        data = png_bytes(image) if mode not in ("CMYK", "F", "PA") else None
        if data is not None:
            expected = reference(reference_processor, load_image(Image.open(io.BytesIO(data))))
            assert_pixels(ours.process(rt.load_image(data)), expected)
    for orientation in (3, 6, 8):
        path = str(exif_rotated_jpeg(tmp_path / f"r{orientation}.jpg", orientation))
        assert_pixels(ours.process(rt.load_image(path)), reference(reference_processor, load_image(path)))


def test_modes_given_to_a_converting_processor():
    """A processor with do_convert_rgb (CLIP) composites transparency onto white, as transformers' does."""
    reference_processor = reference_class("CLIP")(size={"shortest_edge": 24}, crop_size={"height": 20, "width": 20})
    ours = rt.ImageProcessor(json_config(reference_processor))
    for mode in MODES:
        image = synthetic(31, 19, mode)
        assert_pixels(ours.process(image), reference(reference_processor, image))
        assert_pixels(ours([image, image])["pixel_values"][1], reference(reference_processor, image))


@pytest.mark.parametrize("family", ["ViT", "CLIP", "ConvNext", "MobileViT"])
def test_arrays(family):
    """HWC arrays: uint8 with 1, 3 or 4 channels, floats in [0, 1] (transformers scales them to 0-255 for Pillow
    and back), whole-number floats; and with do_resize off, floats as they are."""
    kwargs = {"size": {"shortest_edge": 40}} if family == "ConvNext" else {}
    for do_resize in (True, False):
        reference_processor = reference_class(family)(do_resize=do_resize, **kwargs)
        ours = rt.ImageProcessor(json_config(reference_processor))
        rng = np.random.default_rng(4)
        arrays = [rng.integers(0, 256, (45, 67, 3), dtype=np.uint8), rng.random((45, 67, 3)),
                  rng.random((45, 67, 3)).astype(np.float32), rng.integers(0, 256, (45, 67, 3)).astype(np.float64),
                  rng.integers(0, 256, (33, 20, 3), dtype=np.int64)]
        if reference_processor.do_convert_rgb:
            arrays += [rng.integers(0, 256, (45, 67, 4), dtype=np.uint8), rng.integers(0, 256, (45, 67, 1), dtype=np.uint8),
                       rng.random((45, 67, 4)).astype(np.float32)]
        for array in arrays:
            expected = reference(reference_processor, array.copy(), input_data_format="channels_last")
            assert_pixels(ours.process(array), expected)
            assert_pixels(ours.process(rt.load_image(array)), expected)
    # transformers cannot read a 2-D array: it is the grey image repeated to RGB
    grey = np.random.default_rng(5).integers(0, 256, (30, 20), dtype=np.uint8)
    assert_pixels(ours.process(grey), ours.process(np.repeat(grey[..., None], 3, axis=-1)))


def test_real_photos_every_family():
    paths = photo_paths()
    if not paths:
        pytest.skip("the real photos of ../shared/data/_assets are absent")
    from transformers.image_utils import load_image

    for family in ("ViT", "DeiT", "Beit", "ConvNext", "CLIP", "Bit", "MobileViT"):
        reference_processor = reference_class(family)()
        ours = rt.ImageProcessor(json_config(reference_processor))
        for path in paths:
            assert_pixels(ours([str(path)])["pixel_values"][0], reference(reference_processor, load_image(str(path))))


def test_call_forms():
    processor = rt.ImageProcessor(json_config(reference_class("ViT")(size={"height": 16, "width": 16})))
    one = processor(synthetic(20, 10))["pixel_values"]
    assert one.shape == (1, 3, 16, 16) and one.dtype == np.float32
    assert processor([synthetic(20, 10), synthetic(5, 50)])["pixel_values"].shape == (2, 3, 16, 16)
    varying = rt.ImageProcessor(json_config(reference_class("ViT")(size={"shortest_edge": 16})))
    assert varying.output_size is None
    with pytest.raises(rt.InvalidInputError, match="process to different shapes"):
        varying([synthetic(20, 10), synthetic(10, 20)])
    with pytest.raises(rt.InvalidInputError, match="no images given"):
        processor([])
    assert "ViTImageProcessor" in repr(processor)


# --- bad input, bad configs --------------------------------------------------------------------------------


def test_bad_images(tmp_path, monkeypatch):
    photo = tmp_path / "photo.jpg"
    synthetic(64, 48).save(photo, quality=90)
    data = photo.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = [
        (str(truncated), f"cannot read {truncated} as an image: image file is truncated"),
        (str(text), f"cannot read {text} as an image: cannot identify image file"),
        (str(tmp_path / "empty.png"), "cannot read .* as an image"),
        (b"\x89PNG\r\n\x1a\nbroken", "cannot read the image bytes as an image"),
        (str(tmp_path / "missing.jpg"), f"no such image file: {tmp_path / 'missing.jpg'}"),
        (str(tmp_path), "no such image file"),
        ("https://example.com/cat.jpg", "https://example.com/cat.jpg is a URL; the runtime never downloads"),
        (Image.new("RGB", (0, 3)), r"the PIL image has no pixels \(0x3\)"),
        (Image.new("La", (3, 3)), "cannot convert the PIL image to RGB: conversion from La to L not supported"),
        (np.zeros((0, 4, 3), np.uint8), r"the image array has no pixels \(shape \(0, 4, 3\)\)"),
        (np.zeros((3, 224, 224), np.uint8), r"got shape \(3, 224, 224\); it looks channels-first"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"got shape \(2, 8, 8, 3\); pass a list of images for several"),
        (np.zeros((8, 8, 2), np.uint8), "with 1, 3 or 4 channels"),
        (np.zeros((8, 8, 3), bool), "an image array is uint8 .0-255. or float .0-1.; got dtype bool"),
        (np.full((8, 8, 3), 300, np.int32), "an integer image array holds values 0-255; got 300-300"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((8, 8, 3), 1.5), r"a float image array holds values in \[0, 1\] \(or whole numbers 0-255\); got 1.5-1.5"),
        (np.full((8, 8, 4), 2.0), r"a float image array holds values in \[0, 1\]; got 2.0-2.0"),
        (12, "an image is a path, raw bytes, a PIL.Image or a numpy array; got int"),
        (None, "got NoneType"),
    ]
    processor = rt.ImageProcessor(json_config(reference_class("ViT")(size={"height": 16, "width": 16})))
    for image, message in cases:
        with pytest.raises(rt.InvalidInputError, match=message):
            processor.process(image)
    with pytest.raises(rt.InvalidInputError, match="cannot read the PIL image"):
        processor.process(Image.open(truncated))  # a lazily opened caller's image fails on decoding
    # decompression bombs: past Pillow's limit refused (its warning range too), as an error of the hierarchy
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    big = png_bytes(synthetic(40, 30))  # 1200 pixels: Pillow only warns
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(rt.InvalidInputError) as info:
        rt.load_image(big)
    assert str(info.value) == ("the image bytes of 40x30 pixels exceeds Pillow's limit of 1000 pixels, a guard against "
                               "decompression bombs; if the image is trusted, raise PIL.Image.MAX_IMAGE_PIXELS")
    with pytest.raises(rt.InvalidInputError, match="exceeds limit of 2000 pixels.*MAX_IMAGE_PIXELS"):
        rt.load_image(png_bytes(synthetic(60, 50)))
    # a thin image that its shortest edge would blow up past the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    thin = rt.ImageProcessor(json_config(reference_class("CLIP")()))
    with pytest.raises(rt.InvalidInputError, match="the resized image of 224x74666 pixels exceeds Pillow's limit"):
        thin.process(synthetic(3, 1000))


def test_a_resize_to_nothing_is_refused():
    processor = rt.ImageProcessor({"image_processor_type": "ViTImageProcessor", "size": {"shortest_edge": 4, "longest_edge": 5}})
    with pytest.raises(rt.InvalidInputError, match="an image of 1000x1 pixels resizes to 5x0: nothing is left"):
        processor.process(synthetic(1000, 1))


@pytest.mark.parametrize("config, message", [
    ({}, "names no image processor class"),
    ({"image_processor_type": "LayoutLMv3ImageProcessor"}, "image processor 'LayoutLMv3ImageProcessor' is not supported by "
                                                           "this runtime; supported: BeitImageProcessor, BitImageProcessor, "
                                                           "CLIPImageProcessor"),
    ({"image_processor_type": "ViTImageProcessor", "size": "224"}, "hf_image_processor_config.size must be an integer or an "
                                                                   "array or an object, got a string"),
    ({"image_processor_type": "ViTImageProcessor", "do_resize": "yes"}, "do_resize must be a boolean, got a string"),
    ({"image_processor_type": "ViTImageProcessor", "resample": True}, "resample must be an integer, got a boolean"),
    ({"image_processor_type": "ViTImageProcessor", "resample": 9}, "resample is 9; expected one of Pillow's filters 0 .nearest."),
    ({"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5]}, "image_mean is .0.5, 0.5.; expected a number or 3"),
    ({"image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0, 0.5]}, "image_std is .0.5, 0.0, 0.5.: it divides by zero"),
    ({"image_processor_type": "ViTImageProcessor", "size": {"longest_edge": 9}}, r"size is \{'longest_edge': 9\}; this runtime reads"),
    ({"image_processor_type": "ViTImageProcessor", "size": [224]}, r"size is \[224\]"),
    ({"image_processor_type": "CLIPImageProcessor", "crop_size": {"shortest_edge": 9}}, "crop_size is .*'height', 'width'"),
    ({"image_processor_type": "ViTImageProcessor", "do_pad": True}, "do_pad is true; padding images to one size is not supported"),
    ({"image_processor_type": "ConvNextImageProcessor", "size": {"height": 9, "width": 9}}, "ConvNextImageProcessor needs size"),
    ({"image_processor_type": "ConvNextImageProcessor", "crop_pct": 0}, "crop_pct > 0"),
])
def test_bad_configs(config, message):
    with pytest.raises(rt.ProcessorReconstructionError, match=message):
        rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: config})


def test_load_image_processor_needs_the_key():
    # the PROCESSORS loaders' contract: None when none is embedded (an image task says what to do, see
    # test_parity_images.test_an_image_model_without_its_processor)
    assert rt.load_image_processor({rt.KEY_MODEL_CONFIG: {"model_type": "vit"}}) is None


def test_nulls_and_old_names_read_as_transformers_reads_them():
    ours = rt.ImageProcessor({"image_processor_type": "CLIPImageProcessorFast", "size": None, "crop_size": None, "resample": None})
    assert (ours.name, ours.size, ours.crop_size, ours.resample) == ("CLIPImageProcessor", {"shortest_edge": 224},
                                                                     {"height": 224, "width": 224}, 3)
    # a key another class reads is ignored, as transformers ignores it
    assert rt.ImageProcessor({"image_processor_type": "ViTImageProcessor", "crop_pct": 0.5}).crop_pct is None
    assert not rt.ImageProcessor({"feature_extractor_type": "MobileViTFeatureExtractor", "do_normalize": True}).do_normalize


# --- imports -----------------------------------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)


def test_pillow_is_imported_only_when_an_image_is_used():
    result = _python("import sys, onnxmeta_runtime; print('PIL' in sys.modules, 'numpy' in sys.modules)")
    assert result.stdout.split() == ["False", "False"], result.stderr
    result = _python(
        "import sys; sys.modules['PIL'] = None\n"
        "import numpy as np, onnxmeta_runtime as rt\n"
        "try:\n    rt.load_image(np.zeros((4, 4, 3), np.uint8))\n"
        "except rt.ProcessorReconstructionError as exc:\n    print(exc)\n"
    )
    assert result.stdout.strip() == "image models need Pillow; pip install Pillow (or the onnxmeta[vision] extra)", result.stderr


# --- authoring: old and new preprocessor files are image processors ----------------------------------------


@pytest.mark.parametrize("hub_id", ["google/vit-base-patch16-224", "microsoft/resnet-50", "apple/mobilevit-small"])
def test_discovery_classifies_old_configs_as_image_processors(hub_id, tmp_path):
    from authoring.discovery import MetadataDiscovery

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"]}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(HUB_CONFIGS[hub_id]))
    metadata = MetadataDiscovery().discover(tmp_path, level="full")
    assert metadata[rt.KEY_IMAGE_PROCESSOR_CONFIG] == HUB_CONFIGS[hub_id]
    assert rt.KEY_FEATURE_EXTRACTOR_CONFIG not in metadata
    assert metadata[rt.KEY_FEATURE_ENGINEERING]["type"] == "image_processor"
    assert metadata[rt.KEY_PIPELINE_TASK] == "image-classification"


def test_discovery_reads_untyped_and_processor_config_files(tmp_path):
    from authoring.discovery import MetadataDiscovery

    untyped = {"crop_size": 224, "do_center_crop": True, "resample": 3, "size": 256}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deit", "architectures": ["DeiTModel"], "image_size": 224}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(untyped))
    metadata = MetadataDiscovery().discover(tmp_path)
    assert metadata[rt.KEY_IMAGE_PROCESSOR_CONFIG] == untyped
    assert metadata[rt.KEY_PIPELINE_TASK] == "image-feature-extraction"
    assert rt.load_image_processor(metadata).name == "DeiTImageProcessor"
    (tmp_path / "preprocessor_config.json").unlink()
    nested = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224}}
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": nested, "processor_class": "CLIPProcessor"}))
    assert MetadataDiscovery().discover(tmp_path)[rt.KEY_IMAGE_PROCESSOR_CONFIG] == nested
    # a feature extractor beside it: transformers 5 loads the nested image processor and the separate extractor
    audio = {"feature_extractor_type": "WhisperFeatureExtractor", "sampling_rate": 16000, "feature_size": 80}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(audio))
    metadata = MetadataDiscovery().discover(tmp_path)
    assert metadata[rt.KEY_FEATURE_EXTRACTOR_CONFIG] == audio and metadata[rt.KEY_IMAGE_PROCESSOR_CONFIG] == nested


def test_task_detection():
    from authoring.tasks import detect_task

    assert detect_task({"architectures": ["ViTForImageClassification"]}) == "image-classification"
    assert detect_task({"architectures": ["ConvNextForImageClassification"]}) == "image-classification"
    assert detect_task({"architectures": ["CLIPModel"], "model_type": "clip"}) == "zero-shot-image-classification"
    assert detect_task({"architectures": ["ViTModel"], "image_size": 224, "num_channels": 3}) == "image-feature-extraction"
    assert detect_task({"architectures": ["ResNetModel"], "num_channels": 3}) == "image-feature-extraction"
    assert detect_task({"architectures": ["BertModel"], "vocab_size": 30522}) == "feature-extraction"
