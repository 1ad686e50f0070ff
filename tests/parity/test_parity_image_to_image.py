"""image-to-image end to end: the runtime on ONNX vs transformers 4.57's ImageToImagePipeline on the same weights.

A tiny random-weight Swin2SRForImageSuperResolution (window 4, upscale 2, pixel shuffle) with Swin2SR's processor
(rescale, pad to past a multiple of 8 by mirroring), exported with torch.onnx (height and width dynamic) and embedded
with authoring.embed_metadata. transformers 5 removed the image-to-image pipeline: the oracle is transformers 4.57's,
run in the Optimum environment through tests/oracles/image_to_image.py on image files, its outputs computed on each
run, never checked in. Output images: same size (the padded input's times 2: the pipeline does not crop the padding),
pixels within 1 level (the ONNX graph's float32 arithmetic may round a value a hair from .5 the other way), and
nearly all identical. The processor's padding is checked bit-equal against transformers 5's Swin2SRImageProcessorPil.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from depth_models import export_dense_onnx, optimum_export_file, tiny_swin2sr
from helpers import ROOT, optimum_python
from image_helpers import exif_rotated_jpeg, photo_paths, synthetic
from runtime_under_test import rt

pytest.importorskip("PIL")
pytest.importorskip("torch")
from PIL import Image

# The photos go through the model at thumbnail size: at 1300x876 the oracle takes half a minute per photo.
PHOTO_SIZE = 160


@pytest.fixture(scope="module")
def swin2sr(tmp_path_factory):
    from authoring import embed_metadata

    root = tmp_path_factory.mktemp("swin2sr")
    model = tiny_swin2sr(root / "hf", seed=2)
    plain = export_dense_onnx(model, root / "plain.onnx", "reconstruction", 16, 24)
    metadata = embed_metadata(plain, root / "hf", root / "model.onnx")
    return root / "hf", root / "model.onnx", metadata


@pytest.fixture(scope="module")
def runtime(swin2sr):
    return rt.Runtime(swin2sr[1])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Image files: the real photos (thumbnails, same format) when present, built images of several sizes and modes
    (PNG; CMYK as JPEG), an EXIF-rotated JPEG. No 1x1 image: transformers 4.57 reads its (1, 1, 3) array as
    channels-first and pads the wrong axes (the runtime gives what transformers 5's processor and the model give)."""
    root = tmp_path_factory.mktemp("sr_images")
    paths = []
    for photo in photo_paths():
        with Image.open(photo) as image:
            image.thumbnail((PHOTO_SIZE, PHOTO_SIZE))
            paths.append(root / photo.name)
            image.save(paths[-1], format=image.format or "PNG")
    for i, (w, h, mode) in enumerate([(20, 13, "RGB"), (16, 24, "RGB"), (9, 30, "RGBA"), (33, 33, "L"), (7, 5, "P"),
                                      (1, 2, "RGB"), (48, 17, "CMYK"), (64, 40, "RGB")]):
        paths.append(root / f"built{i}.png" if mode != "CMYK" else root / f"built{i}.jpg")
        synthetic(w, h, mode, seed=i).save(paths[-1])
    paths.append(exif_rotated_jpeg(root / "rotated.jpg", 8, size=(30, 18)))
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def oracle(swin2sr, images, tmp_path_factory):
    """transformers 4.57's pipeline output for each image (a PIL image), or the error it raised."""
    out = tmp_path_factory.mktemp("oracle")
    result = subprocess.run([str(optimum_python()), str(ROOT / "tests" / "oracles" / "image_to_image.py"), str(swin2sr[0]),
                             str(out), *images], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = []
    for n in range(len(images)):
        error = out / f"{n}.error"
        outputs.append(error.read_text() if error.exists() else Image.open(out / f"{n}.png").copy())
    return outputs


def assert_image(actual, expected) -> None:
    assert actual.mode == expected.mode == "RGB" and actual.size == expected.size
    levels = np.abs(np.asarray(actual, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert levels.max() <= 1
    assert (levels == 0).mean() >= 0.99


def test_embedded_metadata(swin2sr):
    metadata = swin2sr[2]
    assert metadata[rt.KEY_PIPELINE_TASK] == "image-to-image"
    assert metadata[rt.KEY_IMAGE_PROCESSOR_CONFIG]["image_processor_type"] == "Swin2SRImageProcessor"


def test_image_to_image_parity(runtime, images, oracle):
    for image, expected in zip(images, oracle):
        assert not isinstance(expected, str), expected
        actual = runtime(image)
        assert_image(actual, expected)
        with Image.open(image) as source:
            width, height = source.size if "rotated" not in image else source.size[::-1]
        # the padded input's size (past the next multiple of 8) times the upscale of 2: the padding is not cropped
        assert actual.size == (2 * (width // 8 + 1) * 8, 2 * (height // 8 + 1) * 8)


def test_outputs_vary_with_the_input(runtime, images):
    outputs = [np.asarray(runtime(image).resize((8, 8))) for image in images[-4:]]
    assert len({o.tobytes() for o in outputs}) == len(outputs)
    assert all(np.ptp(o) > 0 for o in outputs)


def test_a_list_of_different_sizes(swin2sr, images, oracle):
    """A list runs grouped by padded shape, in the caller's order; as each image alone."""
    for batch_size in (1, 4):
        results = rt.Runtime(swin2sr[1], batch_size=batch_size)(images)
        assert len(results) == len(images)
        for actual, expected in zip(results, oracle):
            assert_image(actual, expected)


def test_input_forms(runtime, images, oracle):
    n = len(photo_paths())  # the first built image: built0.png, RGB
    with Image.open(images[n]) as image:
        image.load()
        array = np.asarray(image)
        assert_image(runtime(image), oracle[n])
    assert_image(runtime(array), oracle[n])
    with open(images[n], "rb") as f:
        assert_image(runtime(f.read()), oracle[n])
    assert runtime([]) == []


def test_bad_inputs(runtime):
    with pytest.raises(rt.InvalidInputError, match="image-to-image does not take 'top_k'"):
        runtime(synthetic(8, 8), top_k=1)
    with pytest.raises(rt.InvalidInputError, match=r"an image is a path, raw bytes, a PIL\.Image or a numpy array; got dict"):
        runtime({"image": "x.png"})
    with pytest.raises(rt.InvalidInputError, match=r"no such image file: nowhere\.png"):
        runtime("nowhere.png")
    with pytest.raises(rt.InvalidInputError, match="the image array has no pixels"):
        runtime(np.zeros((0, 4, 3), dtype=np.uint8))


def test_cli_writes_the_image(swin2sr, tmp_path, capsys):
    path = tmp_path / "small.png"
    synthetic(20, 13, seed=0).save(path)
    assert rt._main([str(swin2sr[1]), str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"input": str(path), "image": str(tmp_path / "small-output.png"), "size": [48, 32]}
    assert Image.open(tmp_path / "small-output.png").size == (48, 32)


# --- the processor, against transformers 5's ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"size_divisor": 3}, {"pad_size": 5}, {"do_pad": False}, {"size_divisor": 64}],
                         ids=["default", "divisor-3", "legacy-pad-size", "no-pad", "divisor-larger-than-image"])
@pytest.mark.parametrize("size", [(20, 13), (16, 24), (1, 1), (640, 480), (8, 57)])
def test_swin2sr_padding_is_bit_equal(kwargs, size):
    from transformers import Swin2SRImageProcessorPil

    reference = Swin2SRImageProcessorPil(**kwargs)
    config = json.loads(reference.to_json_string())
    if "pad_size" in kwargs:  # as an older preprocessor_config.json names it
        config["pad_size"] = config.pop("size_divisor")
    ours = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: config})
    image = synthetic(*size, seed=size[0])
    assert np.array_equal(ours.process(image), reference(image, return_tensors="np")["pixel_values"][0])
    assert ours.output_size is None


def test_pad_symmetric_mirrors_the_edge():
    pixels = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)[:1].repeat(3, axis=0)
    padded = rt._pad_symmetric(pixels, 4)
    assert padded.shape == (3, 4, 4)
    assert np.array_equal(padded[0, 3], padded[0, 2]) and np.array_equal(padded[0, :, 3], padded[0, :, 2])


def test_onnxmeta_export(swin2sr, images, oracle, tmp_path):
    """authoring's export (torch.onnx, height and width dynamic) gives what the pipeline gives."""
    from authoring.export import export

    report = export(swin2sr[0], tmp_path / "exported.onnx", exporter="torch")
    assert report.exporter == "torch.onnx" and report.task == "image-to-image"
    assert all(c.ok for c in report.checks), report.checks
    runtime = rt.Runtime(tmp_path / "exported.onnx")
    for image, expected in list(zip(images, oracle))[-5:]:
        assert_image(runtime(image), expected)


@pytest.mark.optimum
def test_optimum_export(swin2sr, images, oracle, tmp_path):
    report = optimum_export_file(swin2sr[0], tmp_path / "optimum.onnx")
    assert report == {"exporter": "optimum", "task": "image-to-image", "failed": []}
    runtime = rt.Runtime(tmp_path / "optimum.onnx")
    for image, expected in list(zip(images, oracle))[-5:]:
        assert_image(runtime(image), expected)


def test_task_detection():
    from authoring.tasks import detect_task

    assert detect_task({"architectures": ["Swin2SRForImageSuperResolution"]}) == "image-to-image"
