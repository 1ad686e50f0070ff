"""image-segmentation (semantic) end to end: the runtime on ONNX vs transformers.pipeline("image-segmentation") on the
same weights.

Tiny random-weight SegformerForSemanticSegmentation (logits at a quarter of the processed size) and
UperNetForSemanticSegmentation (a tiny ConvNext backbone; logits at the processed size), their classifiers calibrated so
that several labels win in each image, saved with SegFormer's PIL image processor, exported with torch.onnx (height and
width dynamic for SegFormer; UperNet's pyramid pooling traces at a fixed size only, which the processor gives) and
embedded with authoring.embed_metadata.

Tolerances: the numpy bilinear interpolation is within 1e-5 of torch.nn.functional.interpolate relative to the largest
value (not bit-equal: ~1e-7 relative, from torch's order of float operations); labels are identical and in order; masks
are identical except at pixels where torch's upsampled logits have their two largest within TIE (1e-5 relative to the
largest logit) -- there the argmax may flip; such pixels are counted and must stay under 1e-4 of the image (or 1 pixel);
none flipped on these models, though ~100 pixels of the photos are such near-ties. The upsampled logits of the ONNX
graph are within 1.3e-6 of torch's, relative to the largest.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from image_helpers import json_lines_answer, synthetic, image_set
from runtime_under_test import rt
from segmentation_models import LABELS, export_segmentation_onnx, tiny_segformer, tiny_upernet

pytest.importorskip("PIL")
torch = pytest.importorskip("torch")

BILINEAR_TOL = 1e-5
TIE = 1e-5
MAX_TIE_SHARE = 1e-4
SIZE = 64


class Built:
    """A model folder, its torch model and processor, the embedded ONNX file and the oracle pipeline."""

    def __init__(self, folder, model, processor, onnx, metadata, oracle) -> None:
        self.folder, self.model, self.processor, self.onnx = folder, model, processor, onnx
        self.metadata, self.oracle = metadata, oracle
        self.runtime = rt.Runtime(onnx)


def _build(root, family):
    from transformers import SegformerImageProcessorPil, pipeline

    from authoring import embed_metadata

    builder = {"segformer": tiny_segformer, "upernet": tiny_upernet}[family]
    model = builder(root / "hf", seed=1, size=SIZE)
    plain = export_segmentation_onnx(model, root / "plain.onnx", SIZE, dynamic_size=family == "segformer")
    metadata = embed_metadata(plain, root / "hf", root / "model.onnx")
    processor = SegformerImageProcessorPil.from_pretrained(root / "hf")
    oracle = pipeline("image-segmentation", model=model, image_processor=processor)
    return Built(root / "hf", model, processor, root / "model.onnx", metadata, oracle)


@pytest.fixture(scope="module", params=["segformer", "upernet"])
def seg(request, tmp_path_factory):
    return _build(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real photos (paths) when present, synthetic images of several sizes and modes, an EXIF-rotated JPEG."""
    return image_set(tmp_path_factory.mktemp("images"), [
        (64, 48, "RGB"), (33, 97, "RGB"), (40, 40, "L"), (120, 40, "RGBA"), (35, 33, "P"), (48, 64, "CMYK"),
        (301, 199, "RGB"), (1, 1, "RGB"), (3, 120, "LA")])


def _torch_scores(built, image):
    """torch's upsampled logits for an image, (labels, height, width), as post_process_semantic_segmentation makes them."""
    from transformers.image_utils import load_image

    opened = load_image(image)
    inputs = built.processor(images=[opened], return_tensors="pt")
    with torch.no_grad():
        outputs = built.model(**inputs)
    processed = built.processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(opened.height, opened.width)], return_segmentation_scores=True)
    return processed[0]["segmentation_scores"].numpy()


def assert_segments(built, image, actual, expected) -> int:
    """Labels identical and in order, scores None, masks "L" 0/255 of the image's size, identical but at near-ties of
    torch's logits; the number of such differing pixels."""
    assert [s["label"] for s in actual] == [s["label"] for s in expected]
    assert all(s["score"] is None for s in actual)
    differing = np.zeros(np.asarray(expected[0]["mask"]).shape, dtype=bool) if expected else None
    for ours, theirs in zip(actual, expected):
        assert ours["mask"].mode == theirs["mask"].mode == "L" and ours["mask"].size == theirs["mask"].size
        a, b = np.asarray(ours["mask"]), np.asarray(theirs["mask"])
        assert set(np.unique(a)) <= {0, 255}
        differing |= a != b
    if differing is None or not differing.any():
        return 0
    scores = _torch_scores(built, image)
    top = np.sort(scores, axis=0)[-2:]
    gap = (top[1] - top[0])[differing]
    assert (gap <= TIE * np.abs(scores).max()).all(), f"masks differ where the logits are no tie: gaps {gap.max()}"
    assert differing.sum() <= max(1.0, MAX_TIE_SHARE * differing.size)
    return int(differing.sum())


def test_embedded_metadata(seg):
    assert seg.metadata[rt.KEY_PIPELINE_TASK] == "image-segmentation"
    assert seg.metadata[rt.KEY_IMAGE_PROCESSOR_CONFIG]["image_processor_type"].startswith("SegformerImageProcessor")
    assert rt.load_image_processor(seg.metadata).name == "SegformerImageProcessor"


def test_segmentation_parity(seg, images):
    """Masks equal but at near-ties (on these images: 114 (SegFormer) and 75 (UperNet) pixels have their two best
    logits within 1e-5 of the largest, and none of them flipped)."""
    for image in images:
        assert_segments(seg, image, seg.runtime(image), seg.oracle(image))


def test_outputs_vary_with_the_input(seg, images):
    """Several labels in the images, their masks differ between images."""
    results = seg.runtime(images[-6:])
    assert max(len(r) for r in results) >= 3
    masks = [np.asarray(r[0]["mask"].resize((16, 16))).tobytes() for r in results]
    assert len(set(masks)) == len(masks)
    assert all(s["label"] in LABELS for r in results for s in r)


def test_labels_differ_between_images(tmp_path, images):
    upernet = _build(tmp_path, "upernet")
    assert len({tuple(s["label"] for s in upernet.runtime(image)) for image in images}) > 1


def test_a_batch_gives_what_each_alone_gives(seg, images):
    alone = [seg.runtime(image) for image in images]
    for batch_size in (1, 3, 16):
        together = rt.Runtime(seg.onnx, batch_size=batch_size)(images)
        assert len(together) == len(alone)
        for a, b in zip(together, alone):
            assert [s["label"] for s in a] == [s["label"] for s in b]
            assert all(np.array_equal(np.asarray(x["mask"]), np.asarray(y["mask"])) for x, y in zip(a, b))


def test_options_accepted(seg):
    image = synthetic(50, 40, seed=5)
    expected = seg.oracle(image, subtask="semantic", threshold=0.1, mask_threshold=0.2, overlap_mask_area_threshold=0.3)
    for options in ({}, {"subtask": "semantic"}, {"subtask": None}, {"threshold": 0.1, "mask_threshold": 0.2,
                                                                     "overlap_mask_area_threshold": 0.3}):
        assert_segments(seg, image, seg.runtime(image, **options), expected)


def test_bad_options(seg):
    image = synthetic(40, 40)
    for subtask in ("instance", "panoptic"):
        with pytest.raises(rt.InvalidInputError) as info:
            seg.runtime(image, subtask=subtask)
        assert str(info.value) == (f"subtask {subtask!r} is not one this model can do: a semantic segmentation model (one "
                                   "logit map per label) segments subtask='semantic' (or None); MaskFormer, Mask2Former "
                                   "and DETR panoptic models do 'panoptic' and 'instance' too")
        with pytest.raises(ValueError, match="not supported"):  # the pipeline refuses them for SegFormer too
            seg.oracle(image, subtask=subtask)
    with pytest.raises(rt.InvalidInputError, match="subtask must be 'semantic'"):
        seg.runtime(image, subtask="everything")
    for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
        for value in (1.5, -0.1, "high", True):
            with pytest.raises(rt.InvalidInputError, match=f"^{name} must be a number in"):
                seg.runtime(image, **{name: value})
    with pytest.raises(rt.InvalidInputError, match="image-segmentation does not take 'top_k'"):
        seg.runtime(image, top_k=3)
    with pytest.raises(rt.InvalidInputError, match=r"an image is a path, raw bytes, a PIL\.Image or a numpy array; got int"):
        seg.runtime(3)


def test_input_forms(seg):
    photo = synthetic(80, 60, seed=4)
    expected = seg.oracle(photo)
    assert_segments(seg, photo, seg.runtime(np.asarray(photo)), expected)
    assert_segments(seg, photo, seg.runtime([photo, np.asarray(photo)])[1], expected)
    assert seg.runtime([]) == []


def test_cli_writes_the_masks(seg, tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "photo.png"
    synthetic(64, 48, seed=9).save(path)
    assert rt._main([str(seg.onnx), str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = seg.oracle(str(path))
    assert summary["input"] == str(path)
    assert [s["label"] for s in summary["segments"]] == [s["label"] for s in expected]
    for index, (segment, reference) in enumerate(zip(summary["segments"], expected)):
        assert segment["mask"] == str(tmp_path / f"photo-mask-{index}-{reference['label']}.png")
        assert segment["size"] == [64, 48]
        assert np.array_equal(np.asarray(Image.open(segment["mask"])), np.asarray(reference["mask"]))
    assert sum(s["area"] for s in summary["segments"]) == pytest.approx(1.0)


def test_json_lines_encode_the_masks(seg, tmp_path):
    line, path = json_lines_answer(seg.runtime, rt._json_lines, tmp_path)
    assert [s["label"] for s in line] == [s["label"] for s in seg.runtime(path)]
    assert all(s["score"] is None and s["mask"].startswith("data:image/png;base64,") for s in line)


# --- the steps, against torch's own --------------------------------------------------------------------------


@pytest.mark.parametrize("source, target", [((5, 7), (13, 3)), ((1, 1), (4, 5)), ((16, 16), (480, 640)), ((37, 51), (37, 51)),
                                            ((100, 80), (33, 17)), ((3, 2), (1, 1)), ((16, 16), (1001, 333)), ((2, 9), (2, 31))])
def test_bilinear_matches_torch(source, target):
    values = np.random.default_rng(sum(source) + sum(target)).standard_normal((4, *source)).astype(np.float32) * 100
    expected = torch.nn.functional.interpolate(torch.from_numpy(values)[None], size=target, mode="bilinear",
                                               align_corners=False)[0].numpy()
    actual = rt._bilinear(values, *target)
    assert actual.shape == (4, *target) and actual.dtype == np.float32
    assert np.abs(actual - expected).max() <= BILINEAR_TOL * np.abs(expected).max()
    labels = rt._semantic_map(values, *target)
    top = np.sort(expected, axis=0)[-2:]
    flipped = labels != expected.argmax(0)
    assert (top[1] - top[0])[flipped].max(initial=0) <= TIE * np.abs(expected).max()


def test_semantic_map_in_bands_equals_whole(monkeypatch):
    values = np.random.default_rng(3).standard_normal((5, 16, 16)).astype(np.float32)
    assert np.array_equal(rt._semantic_map(values, 2000, 3000)[::7, ::11], rt._bilinear(values, 2000, 3000).argmax(0)[::7, ::11])


def test_segformer_processor_is_bit_equal():
    from transformers import SegformerImageProcessorPil

    for kwargs in ({}, {"size": {"height": 64, "width": 48}}, {"do_normalize": False}):
        reference = SegformerImageProcessorPil(**kwargs)
        ours = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: json.loads(reference.to_json_string())})
        for size in ((64, 48), (33, 97), (640, 480)):
            image = synthetic(*size, seed=size[0])
            assert np.array_equal(ours.process(image), reference(image, return_tensors="np")["pixel_values"][0])


def test_processor_class_from_the_model_type():
    for model_type in ("segformer", "upernet"):
        processor = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {}, rt.KEY_MODEL_CONFIG: {"model_type": model_type}})
        assert processor.name == "SegformerImageProcessor" and processor.output_size == (512, 512)


@pytest.mark.parametrize("family", ["segformer", "upernet"])
def test_onnxmeta_export(family, images, tmp_path):
    """authoring's export (torch.onnx) runs as the pipeline does."""
    from authoring.export import export

    built = _build(tmp_path / "built", family)
    report = export(built.folder, tmp_path / "exported.onnx", exporter="torch")
    assert report.exporter == "torch.onnx" and report.task == "image-segmentation"
    assert all(c.ok for c in report.checks), report.checks
    runtime = rt.Runtime(tmp_path / "exported.onnx")
    for image in images[:6]:
        assert_segments(built, image, runtime(image), built.oracle(image))


@pytest.mark.parametrize("architecture", ["SegformerForSemanticSegmentation", "UperNetForSemanticSegmentation"])
def test_task_detection(architecture):
    from authoring.tasks import detect_task

    assert detect_task({"architectures": [architecture]}) == "image-segmentation"
