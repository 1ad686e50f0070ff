"""image-segmentation with MaskFormer, Mask2Former and DETR's panoptic head (panoptic, instance, semantic) end to end:
the runtime on ONNX vs transformers.pipeline("image-segmentation") on the same weights.

Tiny random-weight MaskFormerForInstanceSegmentation and Mask2FormerForUniversalSegmentation (a tiny Swin backbone, 12
queries) and DetrForSegmentation (a tiny ResNet backbone, 12 queries) whose label heads (and mask embedders) are
calibrated so that segments pass the pipeline's thresholds and change with the image, saved with their PIL image
processors, exported by authoring's export with torch.onnx (height and width dynamic; Mask2Former at the 64 x 96 its
processor gives).

Tolerances: labels identical and in order, scores within 1e-4, masks "L" images of the input's size. Masks are
identical except at pixels where torch's own values are within TIE (1e-5) of a tie: two queries' weighted mask
probabilities (panoptic), two labels' summed scores (semantic); there the ONNX graph's outputs (within ~2e-5 of torch's
logits) and the numpy bilinear interpolation (within 1e-5 of torch's, relative) may fall on the other side. Instance
masks are identical: nearest interpolation of logits > 0 leaves no such ties.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from image_helpers import synthetic, image_set
from runtime_under_test import rt
from segmentation_models import LABELS, QUERY_SIZES, tiny_detr_segmenter, tiny_query_segmenter

pytest.importorskip("PIL")
torch = pytest.importorskip("torch")

TIE = 1e-5
SCORE_TOL = 1e-4
# Each image runs with the defaults (panoptic); every few images with the other subtasks and options (the oracle is slow).
SUBTASKS = ({"subtask": "instance", "threshold": 0.5}, {"subtask": "semantic"},
            {"subtask": "panoptic", "threshold": 0.5, "mask_threshold": 0.3, "overlap_mask_area_threshold": 0.2})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread: several times faster for these tiny models on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Built:
    def __init__(self, family, folder, model, onnx, metadata, oracle) -> None:
        self.family, self.folder, self.model, self.onnx = family, folder, model, onnx
        self.metadata, self.oracle = metadata, oracle
        self.runtime = rt.Runtime(onnx, intra_op_num_threads=1)


# Per family, the seed, label head gain and mask logit spread with which most images get several segments.
CALIBRATION = {"maskformer": {"seed": 2, "gain": 4.0, "spread": 4.0}, "mask2former": {"seed": 3, "gain": 4.0, "spread": 8.0},
               "detr": {"seed": 0, "gain": 8.0}}
FAMILIES = ["maskformer", "mask2former", "detr"]
OUTPUTS = {"maskformer": ("class_queries_logits", "masks_queries_logits"),
           "mask2former": ("class_queries_logits", "masks_queries_logits"), "detr": ("logits", "pred_masks")}


def _build(root, family):
    """The tiny model, exported by authoring's export (torch.onnx) with its metadata embedded, and the oracle."""
    from transformers import AutoImageProcessor, pipeline

    from authoring.export import export

    if family == "detr":
        model = tiny_detr_segmenter(root / "hf", **CALIBRATION[family])
    else:
        model = tiny_query_segmenter(root / "hf", family, **CALIBRATION[family])
    report = export(root / "hf", root / "model.onnx", exporter="torch")
    oracle = pipeline("image-segmentation", model=model, image_processor=AutoImageProcessor.from_pretrained(root / "hf"))
    built = Built(family, root / "hf", model, root / "model.onnx", rt.read_metadata(root / "model.onnx"), oracle)
    built.report = report
    return built


@pytest.fixture(scope="module", params=FAMILIES)
def seg(request, tmp_path_factory):
    from transformers.utils import logging

    logging.set_verbosity_error()  # "label_ids_to_fuse unset" on every panoptic call
    return _build(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real photos (paths) when present, synthetic images of several sizes and modes, an EXIF-rotated JPEG."""
    return image_set(tmp_path_factory.mktemp("images"), [
        (64, 48, "RGB"), (33, 97, "RGB"), (40, 40, "L"), (120, 40, "RGBA"), (35, 33, "P"), (301, 199, "RGB"),
        (3, 120, "LA")])


def _torch_gaps(built, image, options):
    """At each pixel of the image, the gap between the two largest of torch's values that pick its segment: the
    weighted mask probabilities of the kept queries (panoptic), the labels' summed scores (semantic)."""
    from transformers.image_utils import load_image

    opened = load_image(image)
    size = (opened.height, opened.width)
    with torch.no_grad():
        outputs = built.model(**built.oracle.image_processor(images=[opened], return_tensors="pt"))
    classes, masks = (getattr(outputs, name)[0] for name in OUTPUTS[built.family])
    if built.family == "mask2former":
        masks = torch.nn.functional.interpolate(masks[None], size=(384, 384), mode="bilinear", align_corners=False)[0]
    if options.get("subtask") == "semantic":
        values = torch.einsum("qc,qhw->chw", classes.softmax(-1)[:, :-1], masks.sigmoid())
    else:
        scores, labels = classes.softmax(-1).max(-1)
        kept = (labels != classes.shape[-1] - 1) & (scores > options.get("threshold", 0.9))
        values = masks[kept].sigmoid() * 1.0
    values = torch.nn.functional.interpolate(values[None], size=size, mode="bilinear", align_corners=False)[0]
    if options.get("subtask") != "semantic":
        values = values * scores[kept][:, None, None]
    if values.shape[0] < 2:
        return np.full(size, np.inf)
    top = torch.topk(values, 2, dim=0).values.numpy()
    return top[0] - top[1]


def assert_segments(actual, expected, built=None, image=None, options=None) -> int:
    """Labels identical and in order, scores within SCORE_TOL (None for semantic), masks "L" 0/255 of the image's size
    and identical but at pixels where torch's own values are within TIE of a tie (built, image and options tell
    them); the number of differing pixels."""
    assert [s["label"] for s in actual] == [s["label"] for s in expected]
    for ours, theirs in zip(actual, expected):
        if theirs["score"] is None:
            assert ours["score"] is None
        else:
            assert isinstance(ours["score"], float) and abs(ours["score"] - theirs["score"]) <= SCORE_TOL
    differing = None
    for ours, theirs in zip(actual, expected):
        assert ours["mask"].mode == theirs["mask"].mode == "L" and ours["mask"].size == theirs["mask"].size
        a, b = np.asarray(ours["mask"]), np.asarray(theirs["mask"])
        assert set(np.unique(a)) <= {0, 255}
        differing = (a != b) if differing is None else differing | (a != b)
    if differing is None or not differing.any():
        return 0
    # MaskFormer's and Mask2Former's instance masks have no ties to fall on; DETR's are its panoptic ones
    assert built is not None and (options.get("subtask") != "instance" or built.family == "detr"), "instance masks differ"
    gaps = _torch_gaps(built, image, options)[differing]
    assert (gaps <= TIE).all(), f"masks differ where torch's values are no tie: gaps up to {gaps.max()}"
    return int(differing.sum())


def test_embedded_metadata(seg):
    assert seg.metadata[rt.KEY_PIPELINE_TASK] == "image-segmentation"
    name = {"maskformer": "MaskFormerImageProcessor", "mask2former": "Mask2FormerImageProcessor",
            "detr": "DetrImageProcessor"}[seg.family]
    assert rt.load_image_processor(seg.metadata).name == name
    task = {"maskformer": "_QuerySegmentation", "mask2former": "_Mask2FormerSegmentation", "detr": "_DetrSegmentation"}
    assert type(seg.runtime._task).__name__ == task[seg.family]


def test_parity(seg, images):
    """Masks equal but at near-ties of torch's values. Measured with every option set on every image: MaskFormer's
    panoptic masks differ at 856 pixels of the 10 images with the defaults (584 with the low thresholds; semantic 7,
    instance 0), where near-duplicate queries' weighted probabilities are within 2.7e-6 in torch; Mask2Former's at 1-2
    pixels per option set; DETR's at 5."""
    for index, image in enumerate(images):
        assert_segments(seg.runtime(image), seg.oracle(image), seg, image, {})
        options = SUBTASKS[index % len(SUBTASKS)]
        assert_segments(seg.runtime(image, **options), seg.oracle(image, **options), seg, image, options)


def test_outputs_vary_with_the_input(seg, images):
    """Segments pass the thresholds, and their labels and masks differ between images."""
    panoptic = [seg.runtime(image, threshold=0.5) for image in images]
    assert sum(len(r) > 0 for r in panoptic) >= len(images) // 2
    assert len({tuple(s["label"] for s in r) for r in panoptic}) > 1
    masks = [np.asarray(r[0]["mask"].resize((16, 16))).tobytes() for r in panoptic if r]
    assert len(set(masks)) >= 3
    instance = [seg.runtime(image, subtask="instance", threshold=0.5) for image in images]
    assert max(len(r) for r in instance) >= 2
    assert all(s["label"] in LABELS for r in panoptic + instance for s in r)


def test_thresholds_change_the_result(seg, images):
    photo = images[-2]  # 301 x 199
    counts = {threshold: len(seg.runtime(photo, subtask="instance", threshold=threshold)) for threshold in (0.0, 0.5, 0.99)}
    assert 12 >= counts[0.0] > counts[0.99] and counts[0.0] >= counts[0.5] >= counts[0.99]  # 12 queries
    for options in ({"threshold": 0.0}, {"mask_threshold": 0.9, "threshold": 0.3},
                    {"overlap_mask_area_threshold": 0.95, "threshold": 0.3}):
        assert_segments(seg.runtime(photo, **options), seg.oracle(photo, **options), seg, photo, options)
    assert seg.runtime(photo, threshold=1.0) == seg.oracle(photo, threshold=1.0) == []


def test_a_batch_gives_what_each_alone_gives(seg, images):
    alone = [seg.runtime(image, subtask="instance", threshold=0.3) for image in images]
    together = rt.Runtime(seg.onnx, batch_size=4)(images, subtask="instance", threshold=0.3)
    for a, b in zip(together, alone):
        assert [(s["label"], s["score"]) for s in a] == [(s["label"], s["score"]) for s in b]
        assert all(np.array_equal(np.asarray(x["mask"]), np.asarray(y["mask"])) for x, y in zip(a, b))


def test_bad_options(seg):
    image = synthetic(40, 40)
    for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
        for value in (1.5, -0.1, "high", True):
            with pytest.raises(rt.InvalidInputError, match=f"^{name} must be a number in"):
                seg.runtime(image, **{name: value})
    with pytest.raises(rt.InvalidInputError) as info:
        seg.runtime(image, subtask="everything")
    assert str(info.value) == "subtask must be one of 'panoptic', 'instance', 'semantic' (or None: 'panoptic'); got 'everything'"
    with pytest.raises(ValueError, match="not supported"):  # the pipeline refuses it too
        seg.oracle(image, subtask="everything")


def test_cli_writes_the_masks(seg, tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "photo.png"
    synthetic(96, 64, seed=9).save(path)
    assert rt._main([str(seg.onnx), str(path), "--options", '{"subtask": "instance", "threshold": 0.3}']) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = seg.oracle(str(path), subtask="instance", threshold=0.3)
    assert expected and [s["label"] for s in summary["segments"]] == [s["label"] for s in expected]
    for index, (segment, reference) in enumerate(zip(summary["segments"], expected)):
        assert segment["mask"] == str(tmp_path / f"photo-mask-{index}-{reference['label']}.png")
        assert np.array_equal(np.asarray(Image.open(segment["mask"])), np.asarray(reference["mask"]))


# --- the steps, against torch's and transformers' own ----------------------------------------------------------------


def test_topk_order_matches_torch():
    """torch.topk(sorted=False)'s order (libstdc++'s partial_sort or nth_element), ties included."""
    rng = np.random.default_rng(0)
    for trial in range(400):
        queries, labels = int(rng.integers(1, 40)), int(rng.integers(1, 140))
        values = rng.random(queries * labels).astype(np.float32)
        if trial % 3 == 0:
            values = np.round(values * 4).astype(np.float32) / 4  # many ties
        expected = torch.from_numpy(values).topk(queries, sorted=False).indices.numpy()
        assert np.array_equal(rt._torch_topk(values, queries), expected), (queries, labels)


@pytest.mark.parametrize("source, target", [(16, 24), (24, 16), (5, 13), (13, 5), (7, 14), (96, 850), (384, 1300), (1, 9),
                                            (9, 1)])
def test_nearest_taps_match_torch(source, target):
    grid = torch.arange(source, dtype=torch.float32)[None, None, :, None].expand(1, 1, source, 2)
    expected = torch.nn.functional.interpolate(grid, size=(target, 2), mode="nearest")[0, 0, :, 0].numpy().astype(np.int64)
    assert np.array_equal(rt._nearest_taps(source, target), expected)


@pytest.mark.parametrize("family", ["MaskFormer", "Mask2Former"])
def test_processor_is_bit_equal(family):
    """Resize (shortest / longest edge or height / width, then up to multiples of size_divisor), rescale, normalize,
    padding to the batch's largest and pixel_mask: bit-equal to the PIL processors."""
    import transformers

    reference_class = getattr(transformers, f"{family}ImageProcessorPil")
    items = [synthetic(w, h, mode, seed=w).convert("RGB") for w, h, mode in ((70, 50, "RGB"), (97, 33, "RGBA"), (480, 640, "L"),
                                                                            (1, 1, "RGB"), (120, 3, "RGB"))]
    for kwargs in ({}, {"size": {"shortest_edge": 64, "longest_edge": 96}}, {"size_divisor": 0},
                   {"size": {"height": 45, "width": 70}, "size_divisor": 16}, {"pad_size": {"height": 1400, "width": 1400}},
                   {"do_normalize": False}):
        reference = reference_class(**kwargs)
        ours = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: json.loads(reference.to_json_string())})
        assert ours.name == f"{family}ImageProcessor"
        expected, actual = reference(items, return_tensors="np"), ours(items)
        assert np.array_equal(actual["pixel_values"], expected["pixel_values"])
        assert np.array_equal(actual["pixel_mask"], expected["pixel_mask"]) and actual["pixel_mask"].dtype == np.int64
        for item in items[:2] if "pad_size" not in kwargs else ():  # one image: resized, not padded
            assert np.array_equal(ours.process(item), reference(item, return_tensors="np")["pixel_values"][0])
    fixed = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {"image_processor_type": f"{family}ImageProcessor",
                                                                     "size": {"height": 45, "width": 70}, "size_divisor": 16}})
    assert fixed.output_size == (48, 80)


def test_processor_class_from_the_model_type():
    for model_type, name in (("maskformer", "MaskFormerImageProcessor"), ("mask2former", "Mask2FormerImageProcessor")):
        processor = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {}, rt.KEY_MODEL_CONFIG: {"model_type": model_type}})
        assert processor.name == name and processor.size_divisor == 32 and processor.output_size is None


def test_onnxmeta_export(seg):
    """The models under test are authoring's exports (torch.onnx): the task detected, the graph's outputs."""
    assert seg.report.exporter == "torch.onnx" and seg.report.task == "image-segmentation"
    assert all(c.ok for c in seg.report.checks), seg.report.checks
    assert tuple(seg.runtime._task.session.outputs) == OUTPUTS[seg.family]


def test_export_refuses_mask2former_at_varying_sizes(tmp_path):
    from authoring.export import export

    tiny_query_segmenter(tmp_path / "hf", "mask2former")
    config = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    config["size"] = {"shortest_edge": 64, "longest_edge": 96}
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(rt.MetadataExtractionError, match="traces Mask2Former's deformable attention at one image size"):
        export(tmp_path / "hf", tmp_path / "exported.onnx", exporter="torch")
    assert QUERY_SIZES["mask2former"] == {"height": 64, "width": 96}


@pytest.mark.parametrize("architecture", ["MaskFormerForInstanceSegmentation", "Mask2FormerForUniversalSegmentation",
                                          "DetrForSegmentation"])
def test_task_detection(architecture):
    from authoring.tasks import detect_task

    assert detect_task({"architectures": [architecture]}) == "image-segmentation"


def test_oneformer_is_refused():
    with pytest.raises(rt.TaskDetectionError, match="image-segmentation with OneFormer"):
        rt.TASKS["image-segmentation"].variant({rt.KEY_MODEL_CONFIG: {"model_type": "oneformer"}})


def test_runs_vendored_alone(seg, tmp_path):
    """The runtime file copied alone runs the segmenter with numpy, onnxruntime and Pillow: no tokenizers, no
    transformers, torch or onnx imported."""
    import os
    import shutil
    import subprocess
    import sys

    from helpers import ROOT

    shutil.copy(ROOT / "runtime" / "onnxmeta_runtime.py", tmp_path / "onnxmeta_runtime.py")
    image = tmp_path / "photo.png"
    synthetic(96, 64, seed=9).save(image)
    code = (
        "import json, sys\n"
        "sys.modules['tokenizers'] = None\n"
        "import numpy as np, onnxmeta_runtime as rt\n"
        "for subtask in ('panoptic', 'instance'):\n"
        f"    result = rt.Runtime({str(seg.onnx)!r})({str(image)!r}, subtask=subtask, threshold=0.3)\n"
        "    print(json.dumps([[s['label'], s['score'], np.asarray(s['mask']).tobytes().hex()] for s in result]))\n"
        "print(sorted(m for m in ('tokenizers', 'transformers', 'torch', 'onnx') if sys.modules.get(m) is not None))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    *answers, imported = result.stdout.strip().splitlines()
    for subtask, answer in zip(("panoptic", "instance"), answers):
        expected = seg.runtime(str(image), subtask=subtask, threshold=0.3)
        assert json.loads(answer) == [[s["label"], s["score"], np.asarray(s["mask"]).tobytes().hex()] for s in expected]
    assert imported == "[]"


def test_pad_size_pads_each_image(seg, images, tmp_path):
    """A processor with pad_size: each image zero-padded to it (a pixel_mask of its own where the graph takes one), as
    the pipeline pads the one image it runs."""
    import shutil
    import types

    from transformers import AutoImageProcessor, pipeline

    from authoring import embed_metadata

    if seg.family == "mask2former":
        pytest.skip("the Mask2Former graph runs at 64 x 96 only")
    folder = tmp_path / "hf"
    shutil.copytree(seg.folder, folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["pad_size"] = {"height": 128, "width": 128}  # multiples of 32, as MaskFormer's traced Swin needs
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    embed_metadata(seg.onnx, folder, tmp_path / "padded.onnx")
    runtime = rt.Runtime(tmp_path / "padded.onnx", intra_op_num_threads=1)
    oracle = pipeline("image-segmentation", model=seg.model, image_processor=AutoImageProcessor.from_pretrained(folder))
    for image in images[2:6]:
        options = {"threshold": 0.5}
        padded = types.SimpleNamespace(family=seg.family, model=seg.model, oracle=oracle)  # torch's values, padded
        assert_segments(runtime(image, **options), oracle(image, **options), padded, image, options)


def test_export_refuses_a_trace_that_keeps_one_size(seg, tmp_path):
    """A graph whose trace kept a branch on the image's size as a constant is caught at export, not at run time."""
    from authoring.export import _check_other_sizes

    if seg.family == "mask2former":
        pytest.skip("its processor makes one size: the export does not trace sizes")

    class SizeBound(torch.nn.Module):  # MaskFormer-like outputs that branch on the width, as Swin's padding does
        def forward(self, pixel_values):
            scale = 2.0 if pixel_values.shape[-1] == 96 else 3.0
            return pixel_values.mean(1, keepdim=True) * scale, pixel_values[:, :2] * scale

    path = tmp_path / "bound.onnx"
    torch.onnx.export(SizeBound(), (torch.randn(1, 3, 64, 96),), path, input_names=["pixel_values"],
                      output_names=["class_queries_logits", "masks_queries_logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}})
    metadata = rt.read_metadata(seg.onnx)
    with pytest.raises(rt.MetadataExtractionError, match="traced at one image size does not run as the model at"):
        _check_other_sizes(SizeBound(), path, metadata, ["pixel_values"], ["class_queries_logits", "masks_queries_logits"])
