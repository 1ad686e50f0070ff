"""depth-estimation end to end: the runtime on ONNX vs transformers.pipeline("depth-estimation") on the same weights.

Tiny random-weight DPTForDepthEstimation (ViT backbone, DPT's processor at a fixed size), DepthAnythingForDepthEstimation
(a tiny Dinov2 backbone; DPT's processor with keep_aspect_ratio and ensure_multiple_of 14, so images of different
shapes run at different sizes) and GLPNForDepthEstimation (size_divisor 32), exported with torch.onnx (height and width
dynamic) and embedded with authoring.embed_metadata. The oracle pipelines get the PIL backend of the image processor.

Tolerances: predicted_depth within 1e-4 of the pipeline's relative to the map's largest value (the ONNX graph and the
numpy bicubic interpolation each differ from torch by ~1e-6 of it); the depth image's pixels within 1 level (the
pipeline truncates to uint8, so a value a hair away from a whole level may land on the next); the numpy bicubic
interpolation within 1e-5 of torch.nn.functional.interpolate relative to the largest value.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from depth_models import export_dense_onnx, optimum_export_file, tiny_depth_anything, tiny_dpt, tiny_glpn
from image_helpers import exif_rotated_jpeg, json_lines_answer, photo_paths, synthetic
from runtime_under_test import rt

pytest.importorskip("PIL")
torch = pytest.importorskip("torch")

TOL = 1e-4
BICUBIC_TOL = 1e-5


class Built:
    """A model folder, its torch model, the embedded ONNX file and the oracle pipeline."""

    def __init__(self, folder, model, onnx, metadata, oracle) -> None:
        self.folder, self.model, self.onnx, self.metadata, self.oracle = folder, model, onnx, metadata, oracle
        self.runtime = rt.Runtime(onnx)


def _build(root, family):
    from transformers import DPTImageProcessorPil, GLPNImageProcessorPil, pipeline

    from authoring import embed_metadata

    builder, height, width, processor = {
        "dpt": (tiny_dpt, 32, 32, DPTImageProcessorPil),
        "depth-anything": (tiny_depth_anything, 42, 56, DPTImageProcessorPil),
        "glpn": (tiny_glpn, 64, 96, GLPNImageProcessorPil),
    }[family]
    model = builder(root / "hf", seed=1)
    plain = export_dense_onnx(model, root / "plain.onnx", "predicted_depth", height, width)
    metadata = embed_metadata(plain, root / "hf", root / "model.onnx")
    oracle = pipeline("depth-estimation", model=model, image_processor=processor.from_pretrained(root / "hf"))
    return Built(root / "hf", model, root / "model.onnx", metadata, oracle)


@pytest.fixture(scope="module", params=["dpt", "depth-anything", "glpn"])
def depth(request, tmp_path_factory):
    return _build(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real photos (paths) when present, synthetic images of several sizes and modes (all at least 32 pixels a side:
    GLPN rounds each side down to a multiple of 32), an EXIF-rotated JPEG."""
    root = tmp_path_factory.mktemp("images")
    items: list = [str(p) for p in photo_paths()]
    items += [synthetic(w, h, mode, seed=i) for i, (w, h, mode) in enumerate(
        [(64, 48, "RGB"), (33, 97, "RGB"), (40, 40, "L"), (120, 40, "RGBA"), (35, 33, "P"), (48, 64, "CMYK"),
         (301, 199, "RGB")])]
    items.append(str(exif_rotated_jpeg(root / "rotated.jpg", 6, size=(70, 45))))
    return items


def assert_depth(actual, expected) -> None:
    """predicted_depth within TOL of the largest value, the depth image within 1 level, same sizes."""
    reference = expected["predicted_depth"].numpy()
    assert isinstance(actual["predicted_depth"], np.ndarray) and actual["predicted_depth"].dtype == np.float32
    assert actual["predicted_depth"].shape == reference.shape
    assert np.abs(actual["predicted_depth"] - reference).max() <= TOL * np.abs(reference).max()
    assert actual["depth"].mode == expected["depth"].mode == "L" and actual["depth"].size == expected["depth"].size
    levels = np.abs(np.asarray(actual["depth"], dtype=np.int16) - np.asarray(expected["depth"], dtype=np.int16))
    assert levels.max() <= 1


def test_embedded_metadata(depth):
    assert depth.metadata[rt.KEY_PIPELINE_TASK] == "depth-estimation"
    assert depth.metadata[rt.KEY_FEATURE_ENGINEERING]["type"] == "image_processor"
    assert depth.metadata[rt.KEY_IMAGE_PROCESSOR_CONFIG]["image_processor_type"] in ("DPTImageProcessor", "GLPNImageProcessor")


def test_depth_parity(depth, images):
    for image in images:
        assert_depth(depth.runtime(image), depth.oracle(image))


def test_outputs_vary_with_the_input(depth, images):
    maps = [r["predicted_depth"] for r in depth.runtime(images[-4:])]
    assert all(np.ptp(m) > 0 for m in maps)
    small = [np.asarray(r["depth"].resize((16, 16))) for r in depth.runtime(images[-4:])]
    assert len({m.tobytes() for m in small}) == len(small)


def test_images_of_different_sizes_batch(depth, images):
    """A list runs grouped by processed shape (Depth Anything's and GLPN's differ per image), in the caller's order
    (the built images: GLPN runs the photos at their full size, slowly)."""
    images = images[len(photo_paths()):]
    expected = depth.oracle(images)
    for batch_size in (1, 3, 16):
        results = rt.Runtime(depth.onnx, batch_size=batch_size)(images)
        assert len(results) == len(expected)
        for actual, reference in zip(results, expected):
            assert_depth(actual, reference)


def test_input_forms(depth):
    photo = synthetic(80, 60, seed=4)
    array = np.asarray(photo)
    expected = depth.oracle(photo)
    assert_depth(depth.runtime(array), expected)
    assert_depth(depth.runtime([photo, array])[1], expected)
    assert depth.runtime([]) == []


def test_bad_inputs(depth):
    with pytest.raises(rt.InvalidInputError, match="depth-estimation does not take 'threshold'"):
        depth.runtime(synthetic(40, 40), threshold=0.5)
    with pytest.raises(rt.InvalidInputError, match=r"an image is a path, raw bytes, a PIL\.Image or a numpy array; got int"):
        depth.runtime(3)
    with pytest.raises(rt.InvalidInputError, match=r"no such image file: nowhere\.jpg"):
        depth.runtime("nowhere.jpg")
    with pytest.raises(rt.InvalidInputError, match="an image array is"):
        depth.runtime(np.zeros((3, 40, 40), dtype=np.uint8))


def test_glpn_refuses_an_image_smaller_than_its_divisor(tmp_path):
    """GLPN rounds each side down to a multiple of 32: a thinner image has nothing left (transformers fails too)."""
    glpn = _build(tmp_path, "glpn")
    with pytest.raises(rt.InvalidInputError) as info:
        glpn.runtime(synthetic(20, 90))
    assert str(info.value) == "an image of 20x90 pixels resizes to 0x64: nothing is left"
    with pytest.raises(Exception):  # noqa: B017 - the pipeline's own error
        glpn.oracle(synthetic(20, 90))


def test_cli_writes_the_depth_image(depth, tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "photo.png"
    synthetic(64, 48, seed=9).save(path)
    assert rt._main([str(depth.onnx), str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = depth.oracle(str(path))
    assert summary["input"] == str(path) and summary["depth"] == str(tmp_path / "photo-depth.png")
    assert summary["predicted_depth"]["shape"] == [48, 64]
    assert summary["predicted_depth"]["max"] == pytest.approx(float(expected["predicted_depth"].max()), rel=TOL)
    written = np.asarray(Image.open(tmp_path / "photo-depth.png"), dtype=np.int16)
    assert np.abs(written - np.asarray(expected["depth"], dtype=np.int16)).max() <= 1


def test_cli_output_folder(depth, tmp_path, capsys):
    """--output DIR: the image lands in that folder (made if missing), nothing beside the input; a folder that cannot
    be made is the project's error, and no partial file is left."""
    path = tmp_path / "photo.png"
    synthetic(64, 48, seed=9).save(path)
    out = tmp_path / "out" / "depths"
    assert rt._main([str(depth.onnx), str(path), "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["depth"] == str(out / "photo-depth.png") and (out / "photo-depth.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photo.png"]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert rt._main([str(depth.onnx), str(path), "--output", str(blocker / "sub")]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out", "photo.png"]


def test_json_lines_and_the_server_encode_the_outputs(depth, tmp_path):
    """JSON lines (and the server, through the same default) give the map as nested lists, the image as a PNG data URL."""
    import base64
    import io

    from PIL import Image

    line, path = json_lines_answer(depth.runtime, rt._json_lines, tmp_path)
    expected = depth.runtime(path)
    assert np.array_equal(np.asarray(line["predicted_depth"], dtype=np.float32), expected["predicted_depth"])
    prefix = "data:image/png;base64,"
    assert line["depth"].startswith(prefix)
    decoded = Image.open(io.BytesIO(base64.b64decode(line["depth"][len(prefix):])))
    assert np.array_equal(np.asarray(decoded), np.asarray(expected["depth"]))


# --- the steps, against transformers' own --------------------------------------------------------------------


@pytest.mark.parametrize("source, target", [((5, 7), (13, 3)), ((1, 1), (4, 5)), ((64, 64), (480, 640)), ((37, 51), (37, 51)),
                                            ((100, 80), (33, 17)), ((3, 2), (1, 1)), ((42, 56), (1001, 333)), ((2, 9), (2, 31))])
def test_bicubic_matches_torch(source, target):
    values = np.random.default_rng(sum(source) + sum(target)).standard_normal(source).astype(np.float32) * 100
    expected = torch.nn.functional.interpolate(torch.from_numpy(values)[None, None], size=target, mode="bicubic",
                                               align_corners=False)[0, 0].numpy()
    actual = rt._bicubic(values, *target)
    assert actual.shape == target and actual.dtype == np.float32
    assert np.abs(actual - expected).max() <= BICUBIC_TOL * np.abs(expected).max()


def test_bicubic_keeps_a_map_of_the_same_size():
    values = np.random.default_rng(0).standard_normal((9, 14)).astype(np.float32)
    assert np.array_equal(rt._bicubic(values, 9, 14), values)


def test_depth_image_formula():
    depth = np.array([[0.5, 1.0], [2.0, 3.2]], dtype=np.float32)
    scaled = (depth - depth.min()) / (depth.max() - depth.min())
    assert np.array_equal(np.asarray(rt._depth_image(depth)), (scaled * 255).astype(np.uint8))
    assert np.asarray(rt._depth_image(np.full((2, 3), 7.0, dtype=np.float32))).max() == 0


DPT_PROCESSORS = [
    {"size": {"height": 42, "width": 42}, "keep_aspect_ratio": True, "ensure_multiple_of": 14},
    {"size": {"height": 518, "width": 518}, "keep_aspect_ratio": True, "ensure_multiple_of": 14},
    {"size": {"height": 37, "width": 50}, "do_pad": True, "size_divisor": 16},
    {"size": {"height": 30, "width": 30}, "keep_aspect_ratio": True, "ensure_multiple_of": 4, "do_pad": True,
     "size_divisor": 7},
    {},
]


@pytest.mark.parametrize("kwargs", DPT_PROCESSORS, ids=["depth-anything", "518", "pad", "both", "default"])
@pytest.mark.parametrize("size", [(64, 48), (33, 97), (640, 480), (8, 16), (5, 300)])
def test_dpt_processor_is_bit_equal(kwargs, size):
    from transformers import DPTImageProcessorPil

    reference = DPTImageProcessorPil(**kwargs)
    ours = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: json.loads(reference.to_json_string())})
    image = synthetic(*size, seed=size[0])
    try:
        expected = reference(image, return_tensors="np")["pixel_values"][0]
    except ValueError:  # a side resized to 0 pixels
        with pytest.raises(rt.InvalidInputError, match="nothing is left"):
            ours.process(image)
        return
    assert np.array_equal(ours.process(image), expected)
    fixed = not reference.keep_aspect_ratio
    assert ours.output_size == (ours.process(image).shape[1:] if fixed else None)


@pytest.mark.parametrize("divisor", [None, 16, 7])
@pytest.mark.parametrize("size", [(64, 48), (33, 97), (640, 480), (35, 300)])
def test_glpn_processor_is_bit_equal(divisor, size):
    from transformers import GLPNImageProcessorPil

    reference = GLPNImageProcessorPil(**({} if divisor is None else {"size_divisor": divisor}))
    ours = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: json.loads(reference.to_json_string())})
    image = synthetic(*size, seed=size[1])
    assert np.array_equal(ours.process(image), reference(image, return_tensors="np")["pixel_values"][0])


def test_processor_class_from_the_model_type():
    for model_type, name in (("dpt", "DPTImageProcessor"), ("depth_anything", "DPTImageProcessor"),
                             ("glpn", "GLPNImageProcessor"), ("swin2sr", "Swin2SRImageProcessor")):
        processor = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {}, rt.KEY_MODEL_CONFIG: {"model_type": model_type}})
        assert processor.name == name


def test_dpt_processor_config_errors():
    with pytest.raises(rt.ProcessorReconstructionError) as info:
        rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {"image_processor_type": "DPTImageProcessor",
                                                                 "size": {"shortest_edge": 384}}})
    assert str(info.value) == "hf_image_processor_config.size is {'shortest_edge': 384}; DPT's processor reads {height, width}"
    with pytest.raises(rt.ProcessorReconstructionError, match="ensure_multiple_of must be an integer of at least 1, got 0"):
        rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {"image_processor_type": "DPTImageProcessor",
                                                                 "ensure_multiple_of": 0}})


@pytest.mark.parametrize("family", ["dpt", "depth-anything", "glpn"])
def test_onnxmeta_export(family, images, tmp_path):
    """authoring's export (torch.onnx: Depth Anything's head traced with its size dynamic) runs as the pipeline does,
    on images of different shapes."""
    from authoring.export import export

    built = _build(tmp_path / "built", family)
    report = export(built.folder, tmp_path / "exported.onnx", exporter="torch")
    assert report.exporter == "torch.onnx" and report.task == "depth-estimation"
    assert all(c.ok for c in report.checks), report.checks
    runtime = rt.Runtime(tmp_path / "exported.onnx")
    for image in images[len(photo_paths()):][:5]:
        assert_depth(runtime(image), built.oracle(image))


@pytest.mark.optimum
@pytest.mark.parametrize("family", ["dpt", "glpn"])
def test_optimum_export(family, images, tmp_path):
    """Optimum's exporter has DPT and GLPN (not Depth Anything): its graph runs as the pipeline does."""
    built = _build(tmp_path / "built", family)
    report = optimum_export_file(built.folder, tmp_path / "optimum.onnx")
    assert report == {"exporter": "optimum", "task": "depth-estimation", "failed": []}
    runtime = rt.Runtime(tmp_path / "optimum.onnx")
    for image in images[len(photo_paths()):][:4]:
        assert_depth(runtime(image), built.oracle(image))


@pytest.mark.parametrize("architecture", ["DPTForDepthEstimation", "DepthAnythingForDepthEstimation", "GLPNForDepthEstimation"])
def test_task_detection(architecture):
    from authoring.tasks import detect_task

    assert detect_task({"architectures": [architecture]}) == "depth-estimation"
