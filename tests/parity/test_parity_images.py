"""Image tasks end to end: the runtime on ONNX vs transformers.pipeline on the same PyTorch weights.

Tiny random-weight models (initializer_range 0.5) exported with torch.onnx and embedded with
authoring.embed_metadata: ViTForImageClassification (image-classification), ViTModel with its pooler
(image-feature-extraction, encode), CLIPModel with the real CLIP tokenizer, or a CLIP-style byte-level
BPE trained here without ../shared (zero-shot-image-classification). The oracle pipelines get the PIL
backend of the image processor (the reference). Labels identical, scores within 1e-4, features within 1e-4.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, assert_parity
from image_helpers import copy_folder_with, exif_rotated_jpeg, export_vision_onnx, photo_paths, synthetic, tiny_clip, tiny_vit
from runtime_under_test import rt

pytest.importorskip("PIL")
from PIL import Image

TOL = 1e-4


class Built:
    """A model folder, its torch model, the embedded ONNX file and the metadata embedded."""

    def __init__(self, folder, model, onnx, metadata) -> None:
        self.folder, self.model, self.onnx, self.metadata = folder, model, onnx, metadata


def _embedded(folder, plain, out, **options):
    from authoring import embed_metadata

    return embed_metadata(plain, folder, out, include_vocab=True, **options)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real photos (paths) when present, synthetic images of several sizes and modes, an EXIF-rotated JPEG."""
    root = tmp_path_factory.mktemp("images")
    items: list = [str(p) for p in photo_paths()]
    items += [synthetic(w, h, mode, seed=i) for i, (w, h, mode) in enumerate(
        [(64, 48, "RGB"), (20, 90, "RGB"), (33, 33, "L"), (120, 40, "RGBA"), (7, 5, "P"), (48, 64, "CMYK"), (300, 200, "RGB")])]
    items.append(str(exif_rotated_jpeg(root / "rotated.jpg", 6)))
    return items


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit_classifier")
    model = tiny_vit(root / "hf", "classification", seed=3)
    plain = export_vision_onnx(model, root / "plain.onnx", ["pixel_values"], ["logits"], 32)
    return Built(root / "hf", model, root / "model.onnx", _embedded(root / "hf", plain, root / "model.onnx"))


@pytest.fixture(scope="module")
def classify(classifier):
    from transformers import ViTImageProcessorPil, pipeline

    oracle = pipeline("image-classification", model=classifier.model,
                      image_processor=ViTImageProcessorPil.from_pretrained(classifier.folder))
    return rt.Runtime(classifier.onnx), oracle


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit_base")
    model = tiny_vit(root / "hf", "base", seed=5)
    plain = export_vision_onnx(model, root / "plain.onnx", ["pixel_values"], ["last_hidden_state", "pooler_output"], 32)
    built = Built(root / "hf", model, root / "model.onnx", _embedded(root / "hf", plain, root / "model.onnx"))
    tokens_only = export_vision_onnx(model, root / "tokens.onnx", ["pixel_values"], ["last_hidden_state"], 32)
    built.tokens_only = root / "tokens-embedded.onnx"
    _embedded(root / "hf", tokens_only, built.tokens_only)
    return built


@pytest.fixture(scope="module")
def extract(backbone):
    from transformers import ViTImageProcessorPil, pipeline

    oracle = pipeline("image-feature-extraction", model=backbone.model,
                      image_processor=ViTImageProcessorPil.from_pretrained(backbone.folder))
    return rt.Runtime(backbone.onnx), oracle


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    model = tiny_clip(root / "hf", seed=0)
    plain = export_vision_onnx(model, root / "plain.onnx", ["input_ids", "pixel_values", "attention_mask"],
                               ["logits_per_image"], 32)
    return Built(root / "hf", model, root / "model.onnx", _embedded(root / "hf", plain, root / "model.onnx"))


@pytest.fixture(scope="module")
def zero_shot(clip):
    from transformers import AutoTokenizer, CLIPImageProcessorPil, pipeline

    oracle = pipeline("zero-shot-image-classification", model=clip.model, tokenizer=AutoTokenizer.from_pretrained(clip.folder),
                      image_processor=CLIPImageProcessorPil.from_pretrained(clip.folder))
    return rt.Runtime(clip.onnx), oracle


def assert_features(actual, expected) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= TOL


# --- what authoring embeds ---------------------------------------------------------------------------------


def test_embedded_metadata(classifier, backbone, clip):
    assert classifier.metadata[rt.KEY_PIPELINE_TASK] == "image-classification"
    assert classifier.metadata[rt.KEY_FEATURE_ENGINEERING]["type"] == "image_processor"
    assert classifier.metadata[rt.KEY_IMAGE_PROCESSOR_CONFIG]["image_processor_type"] == "ViTImageProcessor"
    assert rt.KEY_TOKENIZER_CONFIG not in classifier.metadata
    assert backbone.metadata[rt.KEY_PIPELINE_TASK] == "image-feature-extraction"
    assert clip.metadata[rt.KEY_PIPELINE_TASK] == "zero-shot-image-classification"
    assert clip.metadata[rt.KEY_FEATURE_ENGINEERING]["type"] == "processor"
    assert clip.metadata[rt.KEY_FEATURE_ENGINEERING]["config"]["components"] == ["tokenizer", "image_processor"]
    assert clip.metadata[rt.KEY_IMAGE_PROCESSOR_CONFIG]["image_processor_type"] == "CLIPImageProcessor"


def test_essential_level_is_enough_for_images(classifier, classify, images, tmp_path):
    """An image-only model has no vocabulary to embed: the essential level runs it as the full one does."""
    from authoring import embed_metadata

    metadata = embed_metadata(classifier.onnx, classifier.folder, tmp_path / "essential.onnx")
    assert metadata[rt.KEY_EMBEDDING_LEVEL] == "essential" and rt.KEY_IMAGE_PROCESSOR_CONFIG in metadata
    runtime, _ = classify
    assert rt.Runtime(tmp_path / "essential.onnx")(images[:3]) == runtime(images[:3])


def test_an_image_model_without_its_processor(classifier, tmp_path):
    from authoring import embed_metadata

    embed_metadata(classifier.onnx, classifier.folder, tmp_path / "minimal.onnx", level="minimal")
    with pytest.raises(rt.ProcessorReconstructionError) as info:
        rt.Runtime(tmp_path / "minimal.onnx")
    assert str(info.value) == ("no image processor embedded (hf_image_processor_config); re-embed from a model folder with "
                               "its processor files (preprocessor_config.json or processor_config.json)")


def test_validate_passes(classifier, backbone, clip):
    from authoring import validate

    for path in (classifier.onnx, backbone.onnx, clip.onnx):
        checks = validate(path)
        assert all(c.ok for c in checks), [(c.name, c.message) for c in checks]


# --- image-classification ----------------------------------------------------------------------------------


def test_outputs_are_not_degenerate(classify, images):
    runtime, _ = classify
    tops = [r[0]["label"] for r in runtime(images)]
    assert len(set(tops)) >= 3, tops


def test_classification_parity(classify, images):
    runtime, oracle = classify
    for image in images:
        assert_parity(runtime(image), oracle(image))
    assert_parity(runtime(images), oracle(images))


@pytest.mark.parametrize("top_k", [None, 1, 3, 6, 50])
def test_top_k(classify, images, top_k):
    runtime, oracle = classify
    assert_parity(runtime(images[:3], top_k=top_k), oracle(images[:3], top_k=top_k))


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none", "SIGMOID"])
def test_function_to_apply(classify, images, function):
    runtime, oracle = classify
    assert_parity(runtime(images[:3], function_to_apply=function, top_k=6), oracle(images[:3], function_to_apply=function, top_k=6))


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_default_function_from_config(classifier, images, tmp_path, problem_type):
    from transformers import ViTForImageClassification, ViTImageProcessorPil, pipeline

    folder = copy_folder_with(classifier.folder, tmp_path / "hf", problem_type=problem_type)
    _embedded(folder, classifier.onnx, tmp_path / "model.onnx")
    model = ViTForImageClassification.from_pretrained(folder).eval()
    oracle = pipeline("image-classification", model=model, image_processor=ViTImageProcessorPil.from_pretrained(folder))
    runtime = rt.Runtime(tmp_path / "model.onnx")
    assert_parity(runtime(images[:4], top_k=6), oracle(images[:4], top_k=6))
    if problem_type == "regression":
        assert any(d["score"] < 0 or d["score"] > 1 for r in runtime(images[:4]) for d in r)


def test_batches_keep_the_callers_order(classifier, classify, images):
    _, oracle = classify
    for batch_size in (1, 3):
        assert_parity(rt.Runtime(classifier.onnx, batch_size=batch_size)(images), oracle(images))


def test_input_forms(classify, images):
    """Paths, PIL images, raw bytes, numpy arrays (uint8, float in [0, 1]) and lists of them."""
    runtime, oracle = classify
    photo = synthetic(80, 60)
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    assert_parity(runtime(buf.getvalue()), oracle(Image.open(io.BytesIO(buf.getvalue()))))
    array = np.asarray(photo)
    assert_parity(runtime(array), oracle(array))
    floats = array / 255.0  # transformers reads these as it does (Pillow round trip), and so does the runtime
    assert_parity(runtime(floats), oracle(floats))
    assert_parity(runtime([photo, array]), oracle([photo, array]))
    assert runtime([]) == []
    with pytest.raises(rt.InvalidInputError, match="an image is a path, raw bytes, a PIL.Image or a numpy array; got tuple"):
        runtime((photo, array))  # as the pipeline: a list is a batch, a tuple is not


def test_classification_errors(classify):
    runtime, _ = classify
    with pytest.raises(rt.InvalidInputError, match="top_k must be a positive integer, got 0"):
        runtime(synthetic(8, 8), top_k=0)
    with pytest.raises(rt.InvalidInputError, match="function_to_apply must be one of softmax, sigmoid, none; got 'relu'"):
        runtime(synthetic(8, 8), function_to_apply="relu")
    with pytest.raises(rt.InvalidInputError, match="image-classification does not take 'candidate_labels'"):
        runtime(synthetic(8, 8), candidate_labels=["a"])
    with pytest.raises(rt.InvalidInputError, match="no such image file: nowhere.jpg"):
        runtime(["nowhere.jpg"])
    with pytest.raises(rt.InvalidInputError, match="is a URL; the runtime never downloads"):
        runtime("http://images.example/cat.png")


# --- image-feature-extraction -------------------------------------------------------------------------------


def test_feature_extraction_parity(extract, images):
    runtime, oracle = extract
    for image in images[:3]:
        assert_features(runtime(image), oracle(image))
        assert_features(runtime(image, pool=True), oracle(image, pool=True))
        assert_features(runtime(image, return_tensors=True), oracle(image, return_tensors=True).numpy())
    ours, expected = runtime(images, pool=True), oracle(images, pool=True)
    assert len(ours) == len(expected)
    for a, e in zip(ours, expected):
        assert_features(a, e)
    assert np.asarray(ours[0]).shape == (1, 32)


def test_encode(backbone, extract, images):
    import torch
    from transformers import ViTImageProcessorPil
    from transformers.image_utils import load_image

    runtime, _ = extract
    processor = ViTImageProcessorPil.from_pretrained(backbone.folder)
    with torch.no_grad():
        outputs = [backbone.model(**processor(load_image(i), return_tensors="pt")) for i in images]
    pooled = np.stack([o.pooler_output[0].numpy() for o in outputs])
    embeddings = runtime.encode(images)
    assert embeddings.shape == (len(images), 32) and embeddings.dtype == np.float32
    assert_features(embeddings, pooled)
    assert_features(runtime.encode(images[0]), pooled[0])
    normalized = runtime.encode(images, normalize_embeddings=True)
    assert_features(normalized, pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    # a graph without the pooler: the first token's state, and pool=True refused
    tokens_only = rt.Runtime(backbone.tokens_only)
    assert_features(tokens_only.encode(images), np.stack([o.last_hidden_state[0, 0].numpy() for o in outputs]))
    with pytest.raises(rt.InvalidInputError, match=r"pool=True needs the pooled output \(pooler_output\) but the graph has"):
        tokens_only(images[0], pool=True)
    with pytest.raises(rt.InvalidInputError, match="prompts are for text"):
        runtime.encode(images[0], prompt="a photo of")


# --- zero-shot-image-classification --------------------------------------------------------------------------

LABEL_SETS = [
    ["a cat", "a dog", "a pineapple", "the map of australia"],
    ["sea", "a very long description of a scene with many words and more words", "x"],
    ["one photo", "another photo"],
]


@pytest.mark.parametrize("labels, template", [
    (LABEL_SETS[0], None),
    (LABEL_SETS[0], "A picture showing {}, taken yesterday."),
    (LABEL_SETS[1], "{}"),
    (LABEL_SETS[2], None),
])
def test_zero_shot_parity(zero_shot, images, labels, template):
    runtime, oracle = zero_shot
    kwargs = {} if template is None else {"hypothesis_template": template}
    assert_parity(runtime(images[:6], candidate_labels=labels, **kwargs), oracle(images[:6], candidate_labels=labels, **kwargs))
    assert_parity(runtime(images[-1], candidate_labels=labels, **kwargs), oracle(images[-1], candidate_labels=labels, **kwargs))


def test_zero_shot_is_not_degenerate(zero_shot, images):
    runtime, _ = zero_shot
    results = runtime(images, candidate_labels=LABEL_SETS[0])
    assert len({r[0]["label"] for r in results}) >= 3, results
    assert sum(d["score"] for d in results[0]) == pytest.approx(1.0, abs=1e-5)


def test_zero_shot_call_forms(clip, zero_shot, images):
    runtime, oracle = zero_shot
    assert_parity(runtime(images[1], ["a cat", "a dog"]), oracle(images[1], ["a cat", "a dog"]))
    assert runtime(images[1], ["only label"]) == [{"score": 1.0, "label": "only label"}]
    assert_parity(rt.Runtime(clip.onnx, batch_size=2)(images[:5], LABEL_SETS[0]), oracle(images[:5], candidate_labels=LABEL_SETS[0]))
    with pytest.raises(rt.InvalidInputError) as info:
        runtime(images[0])
    assert str(info.value) == ("zero-shot-image-classification needs candidate_labels: a list of strings, e.g. "
                               "candidate_labels=['a cat', 'a dog']")
    with pytest.raises(rt.InvalidInputError, match="needs candidate_labels"):
        runtime(images[0], candidate_labels="a cat, a dog")
    with pytest.raises(rt.InvalidInputError, match="hypothesis_template 'A photo.' has no {} where the label should go"):
        runtime(images[0], ["a"], hypothesis_template="A photo.")
    with pytest.raises(rt.InvalidInputError, match="hypothesis_template '{} and {}'"):
        runtime(images[0], ["a"], hypothesis_template="{} and {}")


# --- the Runtime around the tasks --------------------------------------------------------------------------


def test_processors_and_cli(classifier, clip, capsys):
    processor = rt.ONNXAutoProcessor.from_model(classifier.onnx)
    assert isinstance(processor, rt.ImageProcessor) and processor.output_size == (32, 32)
    both = rt.ONNXAutoProcessor.from_model(clip.onnx)  # a CLIPProcessor's parts: tokenizer and image processor
    assert isinstance(both["tokenizer"], rt.TextTokenizer) and isinstance(both["image_processor"], rt.ImageProcessor)
    assert rt.ONNXAutoProcessor.from_model(clip.onnx, "image_processor").name == "CLIPImageProcessor"
    image = synthetic(40, 30)
    path = classifier.onnx.parent / "cli.png"
    image.save(path)
    assert rt._main([str(classifier.onnx), str(path), "--options", '{"top_k": 2}']) == 0
    assert json.loads(capsys.readouterr().out) == rt.Runtime(classifier.onnx)(str(path), top_k=2)
    assert rt._main([str(clip.onnx), str(path), "--options", '{"candidate_labels": ["a", "b"]}']) == 0
    assert [d["label"] for d in json.loads(capsys.readouterr().out)] in (["a", "b"], ["b", "a"])


def test_graph_and_task_must_agree(classifier, clip, tmp_path):
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(clip.onnx, task="image-classification")
    assert str(info.value) == ("image-classification feeds pixel_values; the graph takes ['input_ids', 'pixel_values', "
                               "'attention_mask']; was it exported for another task?")
    with pytest.raises(rt.MetadataValidationError, match=r"zero-shot-image-classification needs the output logits_per_image but "
                                                         r"the graph has \['logits'\]; export the whole CLIP model"):
        rt.Runtime(classifier.onnx, task="zero-shot-image-classification")
    # an image processor making 48x48 images for a graph of 32x32
    folder = copy_folder_with(classifier.folder, tmp_path / "hf")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**config, "size": {"height": 48, "width": 48}}))
    _embedded(folder, classifier.onnx, tmp_path / "model.onnx")
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(tmp_path / "model.onnx")
    assert str(info.value) == ("graph input 'pixel_values' has shape ['batch', 3, 32, 32] but the embedded image processor "
                               "makes images of (3, 48, 48); re-embed the model with its own processor files")


def test_runs_without_tokenizers(classifier):
    """An image model needs neither tokenizers nor anything beyond numpy, onnxruntime and Pillow."""
    code = (
        "import sys\n"
        "sys.modules['tokenizers'] = None\n"
        "import onnxmeta_runtime as rt\n"
        "from PIL import Image\n"
        f"print(rt.Runtime({str(classifier.onnx)!r})(Image.new('RGB', (40, 30), 'red'))[0]['label'])\n"
        "print(sorted(m for m in ('tokenizers', 'transformers', 'torch', 'onnx') if sys.modules.get(m) is not None))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    label, imported = result.stdout.strip().splitlines()
    assert label in json.loads((classifier.folder / "config.json").read_text())["id2label"].values()
    assert imported == "[]"


@pytest.mark.optimum
def test_optimum_export(classifier, classify, images, tmp_path):
    """Optimum's exporter (--task image-classification) on the same weights, embedded and run."""
    from helpers import optimum_embedded

    runtime = rt.Runtime(optimum_embedded(classifier.folder, tmp_path, "image-classification"))
    _, oracle = classify
    assert_parity(runtime(images, top_k=3), oracle(images, top_k=3))
