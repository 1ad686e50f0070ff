"""zero-shot-object-detection end to end: the runtime on ONNX vs transformers.pipeline("zero-shot-object-detection") on
the same weights.

Tiny random-weight OwlViTForObjectDetection and Owlv2ForObjectDetection (tests/models/owlvit_models.py: 32-pixel
images, 16 boxes; the CLIP tokenizer; class heads calibrated so that detections pass the threshold of 0.1 and differ
between images and labels), both towers exported in one graph with torch.onnx and embedded with
authoring.embed_metadata. The oracle pipeline gets the tokenizer and the PIL backend of each image processor (OWLv2's:
padded to a square, scikit-image's resize through scipy). Labels and boxes identical, scores within 1e-4. Every input
form transformers 5's pipeline takes is compared: an image with candidate_labels (positional, by name, text_queries),
{"image", "candidate_labels"} dicts alone or in a list, and a list of images with a label list per image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detection_models import assert_detections, detection_images
from helpers import ROOT
from image_helpers import photo_paths, synthetic
from owlvit_models import IMAGE_SIZE, export_owlvit_onnx, tiny_owlv2, tiny_owlvit
from runtime_under_test import rt

pytest.importorskip("PIL")
pytest.importorskip("tokenizers")

TOL = 1e-4
# name -> (builder, the PIL image processor class, the runtime's processor class name)
MODELS = {
    "owlvit": (tiny_owlvit, "OwlViTImageProcessorPil", "OwlViTImageProcessor"),
    "owlv2": (tiny_owlv2, "Owlv2ImageProcessorPil", "Owlv2ImageProcessor"),
}
LABEL_SETS = (["a cat", "a dog", "a photo of the sea"], ["a pineapple"], "cat,dog, bird", ["a map", "a map", "the sea"])


class Built:
    """The OwlViT folder, torch model, embedded ONNX file, Runtime and oracle pipeline."""

    def __init__(self, name, folder, model, onnx, runtime, oracle) -> None:
        self.name, self.folder, self.model, self.onnx, self.runtime, self.oracle = name, folder, model, onnx, runtime, oracle


@pytest.fixture(scope="module", params=list(MODELS))
def owl(request, tmp_path_factory):
    import transformers
    from transformers import AutoTokenizer, pipeline

    from authoring import embed_metadata

    build, processor_class, _ = MODELS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = build(root / "hf")
    plain = export_owlvit_onnx(model, root / "plain.onnx")
    embed_metadata(plain, root / "hf", root / "model.onnx", include_vocab=True)
    processor = getattr(transformers, processor_class).from_pretrained(root / "hf")
    oracle = pipeline("zero-shot-object-detection", model=model, tokenizer=AutoTokenizer.from_pretrained(root / "hf"),
                      image_processor=processor)
    return Built(request.param, root / "hf", model, root / "model.onnx", rt.Runtime(root / "model.onnx"), oracle)


@pytest.fixture(scope="module")
def built_images(tmp_path_factory):
    return detection_images(tmp_path_factory.mktemp("owl-images"))


def test_embedded_task_and_processors(owl):
    metadata = rt.read_metadata(owl.onnx)
    assert metadata[rt.KEY_PIPELINE_TASK] == "zero-shot-object-detection"
    assert owl.runtime.task == "zero-shot-object-detection"
    processor = rt.load_image_processor(metadata)
    assert processor.name == MODELS[owl.name][2] and processor.output_size == (IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("labels", LABEL_SETS, ids=["three", "one", "comma-string", "repeated"])
def test_photos(owl, labels):
    photos = [str(p) for p in photo_paths()]
    if not photos:
        pytest.skip("the photos of ../shared/data/_assets are absent")
    actual = owl.runtime(photos, candidate_labels=labels)
    assert_detections(actual, [owl.oracle(p, candidate_labels=labels) for p in photos])


@pytest.mark.parametrize("labels", LABEL_SETS, ids=["three", "one", "comma-string", "repeated"])
def test_built_images(owl, built_images, labels):
    actual = owl.runtime(built_images, candidate_labels=labels)
    assert_detections(actual, [owl.oracle(i, candidate_labels=labels) for i in built_images])
    assert sum(len(a) for a in actual) >= len(built_images)  # detections pass the threshold
    assert len({json.dumps(a, sort_keys=True) for a in actual}) > len(actual) // 2  # and differ between images


def test_labels_change_the_detections(owl, built_images):
    image = built_images[0]
    cat, dog = owl.runtime(image, candidate_labels=["a cat"]), owl.runtime(image, candidate_labels=["a dog"])
    assert cat and dog and [d["score"] for d in cat] != [d["score"] for d in dog]


@pytest.mark.parametrize("top_k", [1, 3, 0, None, 1000])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9, 1.0])
def test_threshold_and_top_k(owl, built_images, threshold, top_k):
    images, labels = built_images[:4], ["a cat", "a dog"]
    actual = owl.runtime(images, candidate_labels=labels, threshold=threshold, top_k=top_k)
    assert_detections(actual, [owl.oracle(i, candidate_labels=labels, threshold=threshold, top_k=top_k) for i in images])


def test_positional_labels_text_queries_and_inputs(owl):
    image = synthetic(90, 60, seed=4)
    expected = owl.oracle(image, candidate_labels=["a cat", "a dog"])
    assert expected
    assert_detections([owl.runtime(image, ["a cat", "a dog"])], [expected])
    assert_detections([owl.runtime(np.asarray(image), text_queries=["a cat", "a dog"])], [expected])
    assert_detections([owl.runtime(image.copy(), candidate_labels="a cat,a dog")], [expected])


PER_IMAGE = (["a cat", "a dog"], ["the sea"], ["a map", "a cat", "a pineapple"], ["a dog"])


def test_input_dicts(owl, built_images):
    """transformers 5's other forms: {"image", "candidate_labels"} alone (one result) or in a list (one each), each
    image with its own labels (a list, or a string split at its commas), threshold and top_k applied to all."""
    images = built_images[:4]
    dicts = [{"image": image, "candidate_labels": labels} for image, labels in zip(images, PER_IMAGE)]
    dicts[1] = {**dicts[1], "candidate_labels": "the sea,a cat"}
    assert_detections(owl.runtime(dicts), owl.oracle(dicts))
    assert_detections([owl.runtime(dicts[2])], [owl.oracle(dicts[2])])
    assert_detections(owl.runtime(dicts, threshold=0.3, top_k=2), owl.oracle(dicts, threshold=0.3, top_k=2))
    assert owl.runtime(dicts[1]) != owl.runtime({**dicts[1], "candidate_labels": ["a dog"]})


def test_a_label_list_per_image(owl, built_images):
    """A list of images with candidate_labels a list of label lists: the i-th list for the i-th image."""
    images = built_images[:4]
    expected = owl.oracle(images, candidate_labels=list(PER_IMAGE))
    assert_detections(owl.runtime(images, candidate_labels=list(PER_IMAGE)), expected)
    assert_detections(owl.runtime(images, list(PER_IMAGE)), expected)
    assert_detections(owl.runtime(images, text_queries=[tuple(labels) for labels in PER_IMAGE]), expected)
    # one flat list is every image's, as before
    assert_detections(owl.runtime(images, candidate_labels=PER_IMAGE[2]), owl.oracle(images, candidate_labels=PER_IMAGE[2]))


def test_images_with_their_own_labels_batch_as_alone(owl, built_images):
    """Images of several label sets in one call run in batches of one label set each: what each gives alone."""
    images = built_images[:8]
    labels = [list(PER_IMAGE[i % 2]) for i in range(len(images))]
    alone = [owl.runtime(image, candidate_labels=each) for image, each in zip(images, labels)]
    for batch_size in (1, 3, 32):
        runtime = rt.Runtime(owl.onnx, batch_size=batch_size)
        assert runtime(images, candidate_labels=labels) == alone
        assert runtime([{"image": i, "candidate_labels": each} for i, each in zip(images, labels)]) == alone


def test_bad_input_forms(owl, built_images):
    images, labels = built_images[:2], [["a cat"], ["a dog"]]
    with pytest.raises(rt.InvalidInputError) as info:
        owl.runtime(images, candidate_labels=[["a cat"], ["a dog"], ["the sea"]])
    assert str(info.value) == ("got 2 images but 3 candidate label lists; give one list per image, or one list for every "
                               "image")
    with pytest.raises(ValueError, match="Got 2 images but 3 candidate label lists"):
        owl.oracle(images, candidate_labels=[["a cat"], ["a dog"], ["the sea"]])
    dicts = [{"image": image, "candidate_labels": each} for image, each in zip(images, labels)]
    with pytest.raises(rt.InvalidInputError, match="candidate_labels given both in the input dicts and as an option"):
        owl.runtime(dicts, candidate_labels=["a cat"])
    with pytest.raises(rt.InvalidInputError) as info:
        owl.runtime([dicts[0], images[1]])
    assert str(info.value) == ("zero-shot-object-detection takes a list of images or a list of {'image', "
                               "'candidate_labels'} dicts, not both in one list")
    with pytest.raises(rt.InvalidInputError) as info:
        owl.runtime({"image": images[0], "labels": ["a cat"]})
    assert str(info.value) == ("zero-shot-object-detection takes an input dict as {'image': ..., 'candidate_labels': "
                               "[...]}; got the keys ['image', 'labels']")
    for bad in ([], [1], None, [["a cat"]]):
        with pytest.raises(rt.InvalidInputError, match="zero-shot-object-detection needs candidate_labels"):
            owl.runtime({"image": images[0], "candidate_labels": bad})
    with pytest.raises(rt.InvalidInputError, match="zero-shot-object-detection needs candidate_labels"):
        owl.runtime(images, candidate_labels=[["a cat"], []])


def test_a_batch_is_each_alone(owl, built_images):
    labels = ["a cat", "the sea"]
    alone = [owl.runtime(image, candidate_labels=labels) for image in built_images]
    assert owl.runtime(built_images, candidate_labels=labels) == alone
    pairs = rt.Runtime(owl.onnx, batch_size=3)
    assert pairs(built_images, candidate_labels=labels) == alone
    assert pairs(built_images[0], candidate_labels=labels) == alone[0]


# --- the processor's steps against transformers' --------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [IMAGE_SIZE, 50, 960])
def test_processor(name, size):
    """The pixels against the PIL backend's, images opened as the pipeline opens them (RGB): OwlViT's bit-equal
    (Pillow's resize), OWLv2's within 1e-5 (scipy's Gaussian blur and linear zoom, rebuilt in numpy)."""
    import transformers

    reference = getattr(transformers, MODELS[name][1])(size={"height": size, "width": size})
    ours = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: json.loads(reference.to_json_string())})
    for i, (w, h, mode) in enumerate([(64, 48, "RGB"), (20, 90, "L"), (120, 40, "RGBA"), (7, 5, "P"), (300, 200, "RGB"),
                                      (1, 1, "RGB"), (33, 33, "RGB"), (31, 257, "RGB"), (640, 480, "RGB")]):
        image = rt.load_image(synthetic(w, h, mode, seed=i))
        expected = reference(images=[image], return_tensors="np")["pixel_values"][0]
        got = ours.process(image)
        assert got.shape == expected.shape == (3, size, size)
        assert np.abs(got - expected).max() <= (0.0 if name == "owlvit" else 1e-5), (w, h, mode)


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [None, [], "", [1, 2], [["a cat"]], 5])
def test_candidate_labels_needed(owl, labels):
    kwargs = {} if labels is None else {"candidate_labels": labels}
    with pytest.raises(rt.InvalidInputError, match="zero-shot-object-detection needs candidate_labels"):
        owl.runtime(synthetic(20, 20), **kwargs)


@pytest.mark.parametrize("threshold", [1.5, -0.1, "0.5", True])
def test_threshold_outside_the_unit_interval(owl, threshold):
    with pytest.raises(rt.InvalidInputError) as info:
        owl.runtime(synthetic(20, 20), candidate_labels=["a cat"], threshold=threshold)
    assert str(info.value) == f"threshold must be a number in [0.0, 1.0], got {threshold!r}"


def test_bad_inputs(owl, tmp_path):
    with pytest.raises(rt.InvalidInputError, match="top_k must be"):
        owl.runtime(synthetic(20, 20), candidate_labels=["a cat"], top_k=-1)
    with pytest.raises(rt.InvalidInputError, match=r"an image is a path, raw bytes, a PIL\.Image or a numpy array; got int"):
        owl.runtime(5, candidate_labels=["a cat"])
    (tmp_path / "not.png").write_text("not an image")
    with pytest.raises(rt.InvalidInputError, match=r"cannot read .*not\.png as an image"):
        owl.runtime(str(tmp_path / "not.png"), candidate_labels=["a cat"])
    with pytest.raises(rt.InvalidInputError, match="the model's text encoder takes at most 16"):
        owl.runtime(synthetic(20, 20), candidate_labels=["a very long description of a scene with many words " * 2])
    with pytest.raises(rt.InvalidInputError, match="does not take 'hypothesis_template'"):
        owl.runtime(synthetic(20, 20), candidate_labels=["a cat"], hypothesis_template="{}")


# --- authoring ------------------------------------------------------------------------------------------------


def test_task_detection():
    from authoring.tasks import detect_task

    for architecture in ("OwlViTForObjectDetection", "Owlv2ForObjectDetection", "MyOwlViTForObjectDetection"):
        assert detect_task({"architectures": [architecture]}) == "zero-shot-object-detection"
    assert detect_task({"architectures": ["MyDetrLikeForObjectDetection"]}) == "object-detection"
    assert detect_task({"model_type": "owlv2"}) == detect_task({"model_type": "owlvit"}) == "zero-shot-object-detection"


def test_export_with_torch(owl, built_images, tmp_path):
    """onnxmeta export of the model folder with torch.onnx: both towers in one graph, as the pipeline runs them."""
    from authoring.export import export

    report = export(owl.folder, tmp_path / "model.onnx", exporter="torch")
    assert report.task == "zero-shot-object-detection" and all(c.ok for c in report.checks), report.checks
    labels = ["a cat", "a dog", "the sea"]
    runtime = rt.Runtime(tmp_path / "model.onnx")
    assert_detections(runtime(built_images, candidate_labels=labels),
                      [owl.oracle(i, candidate_labels=labels) for i in built_images])


def test_command_line(owl, tmp_path):
    path = tmp_path / "image.png"
    synthetic(64, 48, seed=3).save(path)
    result = subprocess.run([sys.executable, str(ROOT / "runtime" / "onnxmeta_runtime.py"), str(owl.onnx), str(path),
                             "--options", json.dumps({"candidate_labels": ["a cat", "a dog"], "top_k": 3})],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert_detections([json.loads(result.stdout)], [owl.oracle(str(path), candidate_labels=["a cat", "a dog"], top_k=3)])


# --- vendored -------------------------------------------------------------------------------------------------


def test_runs_vendored_alone(owl, tmp_path):
    """The runtime file copied alone runs OwlViT with numpy, onnxruntime, tokenizers and Pillow: no transformers,
    torch or onnx imported."""
    import shutil

    from PIL import Image

    shutil.copy(ROOT / "runtime" / "onnxmeta_runtime.py", tmp_path / "onnxmeta_runtime.py")
    code = (
        "import json, sys\n"
        "import onnxmeta_runtime as rt\n"
        "from PIL import Image\n"
        "image = Image.linear_gradient('L').resize((90, 60)).convert('RGB')\n"
        f"print(json.dumps(rt.Runtime({str(owl.onnx)!r})(image, candidate_labels=['a cat', 'a dog'])))\n"
        "print(sorted(m for m in ('transformers', 'torch', 'onnx') if sys.modules.get(m) is not None))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    detections, imported = result.stdout.strip().splitlines()
    image = Image.linear_gradient("L").resize((90, 60)).convert("RGB")
    assert_detections([json.loads(detections)], [owl.oracle(image, candidate_labels=["a cat", "a dog"])])
    assert imported == "[]"


@pytest.mark.optimum
def test_optimum_export(owl, built_images, tmp_path):
    """Optimum's exporter (--task zero-shot-object-detection) on the same weights."""
    from helpers import optimum_embedded

    runtime = rt.Runtime(optimum_embedded(owl.folder, tmp_path, "zero-shot-object-detection"))
    labels = ["a cat", "a dog", "the sea"]
    assert_detections(runtime(built_images, candidate_labels=labels),
                      [owl.oracle(i, candidate_labels=labels) for i in built_images])
