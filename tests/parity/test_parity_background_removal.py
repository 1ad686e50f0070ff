"""background-removal end to end: the runtime on ONNX vs transformers.js's BackgroundRemovalPipeline, rebuilt here.

There is no Python pipeline for the task (transformers has none; transformers.js's is JavaScript), so the oracle is
written here from transformers.js's source (src/pipelines/image-segmentation.js and background-removal.js,
src/utils/image.js, src/utils/tensor.js): the torch model's first output for the image processed by transformers' PIL
image processor (the same steps as transformers.js's ImageFeatureExtractor: resize to size, rescale, normalize), read
as ImageSegmentationPipeline reads a model without post-processing (sigmoid unless the map lies in [0, 1] within 1e-5;
times 255 in a Float32Array; Uint8Array.from truncates), resized by RawImage.resize's bilinear branch (position
x * in / out, the four neighbours, Math.round; not torch's interpolate, which centres pixels), and put as the alpha of
the image's RGB (putAlpha). The oracle is torch code (vectorised); a literal port of the JavaScript loops checks it and
the runtime's steps bit for bit on small maps.

Tiny random-weight matting models (tests/models/matting_models.py): an RMBG-1.4-style graph (input "input", a sigmoid
map at the processed size, a second output the pipeline ignores) and a BiRefNet-style one (pixel_values in, logits at
half the processed size), saved as their repositories' custom-code folders and embedded with authoring.embed_metadata.

Tolerances: RGB identical to the image as opened; alpha within 1 level of 255 (the ONNX graph's map is within ~1e-6 of
torch's, and a truncation to 8 bits can fall either side of a whole number).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT
from image_helpers import json_lines_answer, png_bytes, synthetic, image_set
from matting_models import FAMILIES, export_matting_onnx, tiny_matting
from runtime_under_test import rt

pytest.importorskip("PIL")
torch = pytest.importorskip("torch")

SIZE = 32
EPSILON = 1e-5  # transformers.js's ImageSegmentationPipeline


class Built:
    """A model folder, its torch model and reference processor, the embedded ONNX file and its Runtime."""

    def __init__(self, family, folder, model, reference, onnx, metadata) -> None:
        self.family, self.folder, self.model, self.reference = family, folder, model, reference
        self.onnx, self.metadata = onnx, metadata
        self.runtime = rt.Runtime(onnx)


def _reference(family):
    from transformers import ViTImageProcessorPil

    spec = FAMILIES[family]
    return ViTImageProcessorPil(size={"height": SIZE, "width": SIZE}, resample=2, do_rescale=True, rescale_factor=1 / 255,
                                do_normalize=True, image_mean=spec["mean"], image_std=spec["std"])


def _build(root, family):
    from authoring import embed_metadata

    model = tiny_matting(root / "hf", family, size=SIZE, seed=3)
    plain = export_matting_onnx(model, family, root / "plain.onnx", SIZE)
    metadata = embed_metadata(plain, root / "hf", root / "model.onnx")
    return Built(family, root / "hf", model, _reference(family), root / "model.onnx", metadata)


@pytest.fixture(scope="module", params=list(FAMILIES))
def matting(request, tmp_path_factory):
    return _build(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real photos (paths) when present, synthetic images of several sizes and modes, an EXIF-rotated JPEG."""
    return image_set(tmp_path_factory.mktemp("images"), [
        (64, 48, "RGB"), (33, 97, "RGB"), (40, 40, "L"), (120, 40, "RGBA"), (35, 33, "P"), (48, 64, "CMYK"),
        (301, 199, "RGB"), (1, 1, "RGB"), (3, 120, "LA"), (32, 32, "RGB"), (16, 16, "RGB")])


# --- the oracle: transformers.js's algorithm ---------------------------------------------------------------------


def js_mask_loops(matte, width, height):
    """transformers.js's steps written as its loops are (a map as a flat list of float32 values, row by row): the
    8-bit mask of RawImage.fromTensor(item.mul_(255).to('uint8')).resize(width, height), its browser branch."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731 - a Float32Array's store
    in_h, in_w = matte.shape
    data = [f32(v) for v in matte.reshape(-1)]
    if any(x < -EPSILON or x > 1 + EPSILON for x in data):
        data = [f32(1 / (1 + math.exp(-x))) if -x < 700 else 0.0 for x in data]  # sigmoid_()
    data = [f32(x * 255) for x in data]  # mul_(255)
    mask = [0 if x != x else int(x) % 256 for x in data]  # Uint8Array.from: ToUint8 (NaN: 0; truncation, modulo 2^8)
    if in_w == width and in_h == height:
        return np.array(mask, dtype=np.uint8).reshape(height, width)
    out = [0] * (width * height)
    x_scale, y_scale = in_w / width, in_h / height
    for y in range(height):
        for x in range(width):
            src_x, src_y = x * x_scale, y * y_scale
            x0 = math.floor(src_x)
            x1 = min(x0 + 1, in_w - 1)
            y0 = math.floor(src_y)
            y1 = min(y0 + 1, in_h - 1)
            dx, dy = src_x - x0, src_y - y0
            top_left, top_right = mask[y0 * in_w + x0], mask[y0 * in_w + x1]
            bottom_left, bottom_right = mask[y1 * in_w + x0], mask[y1 * in_w + x1]
            top = (top_left * (1 - dx)) + (top_right * dx)
            bottom = (bottom_left * (1 - dx)) + (bottom_right * dx)
            value = (top * (1 - dy)) + (bottom * dy)
            out[y * width + x] = min(255, max(0, math.floor(value + 0.5)))  # Math.round into a Uint8ClampedArray
    return np.array(out, dtype=np.uint8).reshape(height, width)


def js_mask_torch(matte, width, height):
    """The same steps vectorised in torch (for photos, where the loops are slow)."""
    data = torch.from_numpy(np.asarray(matte, dtype=np.float32)).double()
    if ((data < -EPSILON) | (data > 1 + EPSILON)).any():
        data = (1 / (1 + torch.exp(-data))).float().double()
    data = (data * 255).float().double()
    mask = torch.nan_to_num(data).trunc().clamp(0, 255)
    in_h, in_w = mask.shape
    if (in_h, in_w) == (height, width):
        return mask.to(torch.uint8).numpy()
    src_x = torch.arange(width, dtype=torch.float64) * (in_w / width)
    src_y = torch.arange(height, dtype=torch.float64) * (in_h / height)
    x0, y0 = src_x.floor().long(), src_y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=in_w - 1), (y0 + 1).clamp(max=in_h - 1)
    dx, dy = (src_x - x0)[None, :], (src_y - y0)[:, None]
    top = mask[y0][:, x0] * (1 - dx) + mask[y0][:, x1] * dx
    bottom = mask[y1][:, x0] * (1 - dx) + mask[y1][:, x1] * dx
    return torch.floor(top * (1 - dy) + bottom * dy + 0.5).clamp(0, 255).to(torch.uint8).numpy()


def expected_cutout(built, image):
    """transformers.js's RGBA result for an image, as an (height, width, 4) uint8 array."""
    from transformers.image_utils import load_image

    opened = load_image(image)
    pixels = built.reference(images=[opened], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = built.model(pixels)
    matte = (out[0] if isinstance(out, tuple) else out)[0]  # the first output; this image's (1, h, w)
    assert matte.shape[0] == 1
    small = opened.width * opened.height <= 4096
    alpha = (js_mask_loops if small else js_mask_torch)(matte[0].numpy(), opened.width, opened.height)
    return np.dstack([np.asarray(opened.convert("RGB")), alpha])


def assert_cutout(actual, expected) -> None:
    assert actual.mode == "RGBA"
    got = np.asarray(actual)
    assert got.shape == expected.shape
    assert np.array_equal(got[..., :3], expected[..., :3])
    assert np.abs(got[..., 3].astype(np.int16) - expected[..., 3]).max() <= 1


# --- parity -------------------------------------------------------------------------------------------------------


def test_embedded_task_and_processor(matting):
    assert matting.metadata[rt.KEY_PIPELINE_TASK] == "background-removal"
    assert matting.runtime.task == "background-removal"
    processor = rt.load_image_processor(matting.metadata)
    assert processor.name == "ImageProcessor" and processor.output_size == (SIZE, SIZE)


def test_parity(matting, images):
    for image in images:
        assert_cutout(matting.runtime(image), expected_cutout(matting, image))


def test_outputs_vary_with_the_input(matting, images):
    """Alpha spans most of 0-255 within an image, and differs between images."""
    results = matting.runtime(images[-8:])
    alphas = [np.asarray(r)[..., 3] for r in results]
    assert max(int(a.max()) - int(a.min()) for a in alphas) >= 128
    resized = [np.asarray(r.getchannel("A").resize((16, 16))).tobytes() for r in results]
    assert len(set(resized)) == len(resized)


def test_a_batch_gives_what_each_alone_gives(matting, images):
    alone = [np.asarray(matting.runtime(image)) for image in images]
    for batch_size in (1, 3, 16):
        together = rt.Runtime(matting.onnx, batch_size=batch_size)(images)
        assert all(np.array_equal(np.asarray(a), b) for a, b in zip(together, alone))


def test_a_graph_with_a_batch_of_one(tmp_path, images):
    """A graph exported with a fixed batch of 1 (rembg's BiRefNet is) runs the images one at a time, whatever
    batch_size says."""
    from authoring import embed_metadata

    model = tiny_matting(tmp_path / "hf", "birefnet", size=SIZE, seed=3)
    plain = export_matting_onnx(model, "birefnet", tmp_path / "plain.onnx", SIZE, batch=1)
    metadata = embed_metadata(plain, tmp_path / "hf", tmp_path / "model.onnx")
    runtime = rt.Runtime(tmp_path / "model.onnx", batch_size=8)
    assert runtime.session.get_inputs()[0].shape == [1, 3, SIZE, SIZE]
    built = Built("birefnet", tmp_path / "hf", model, _reference("birefnet"), tmp_path / "model.onnx", metadata)
    for image, result in zip(images[-6:], runtime(images[-6:])):
        assert_cutout(result, expected_cutout(built, image))


def test_input_forms(matting):
    photo = synthetic(80, 60, seed=4)
    expected = expected_cutout(matting, photo)
    assert_cutout(matting.runtime(photo), expected)
    assert_cutout(matting.runtime(np.asarray(photo)), expected)
    assert_cutout(matting.runtime(png_bytes(photo)), expected)
    assert_cutout(matting.runtime([photo, np.asarray(photo)])[1], expected)
    assert matting.runtime([]) == []


def test_processor_against_transformers(matting):
    """The embedded ImageFeatureExtractor config processes as transformers' PIL image processor with its settings:
    bit-equal."""
    ours = rt.load_image_processor(matting.metadata)
    for i, (w, h, mode) in enumerate([(64, 48, "RGB"), (20, 90, "L"), (120, 40, "RGBA"), (1, 1, "RGB"), (640, 480, "RGB")]):
        image = rt.load_image(synthetic(w, h, mode, seed=i))
        expected = matting.reference(images=[image], return_tensors="np")["pixel_values"][0]
        assert np.array_equal(ours.process(image), expected)


# --- the steps, against the literal port of transformers.js ----------------------------------------------------------


@pytest.mark.parametrize("source, target", [((5, 7), (13, 3)), ((1, 1), (4, 5)), ((32, 32), (48, 64)), ((37, 51), (37, 51)),
                                            ((40, 30), (7, 9)), ((3, 2), (1, 1)), ((16, 16), (97, 33)), ((2, 9), (2, 31))])
@pytest.mark.parametrize("kind", ["logits", "probabilities", "edges"])
def test_mask_steps_are_transformers_js(source, target, kind):
    """_matte_alpha and _resized_mask give what transformers.js's loops give, bit for bit: logits (sigmoid), a map in
    [0, 1], and one within 1e-5 outside it (no sigmoid) with values on whole levels."""
    rng = np.random.default_rng(sum(source) * 7 + sum(target))
    matte = rng.standard_normal(source).astype(np.float32) * 4
    if kind == "probabilities":
        matte = rng.random(source).astype(np.float32)
    elif kind == "edges":
        matte = rng.choice(np.array([-9e-6, 0, 1, 1 + 9e-6, 0.5, 1 / 255, 128 / 255], dtype=np.float32), source)
    expected = js_mask_loops(matte, target[1], target[0])
    assert np.array_equal(rt._resized_mask(rt._matte_alpha(matte), *target), expected)
    assert np.array_equal(js_mask_torch(matte, target[1], target[0]), expected)


def test_the_sigmoid_is_applied_only_outside_the_unit_interval():
    inside = np.array([[0.0, 0.5, 1.0, 1 + 9e-6]], dtype=np.float32)
    assert rt._matte_alpha(inside).tolist() == [[0, 127, 255, 255]]
    outside = np.array([[0.0, 0.5, 1.0, 1.01]], dtype=np.float32)  # logits: each through the sigmoid
    assert rt._matte_alpha(outside).tolist() == [[127, 158, 186, 186]]  # 255 sigmoid(x): 127.5, 158.7, 186.4, 186.9
    assert rt._matte_alpha(np.array([[np.nan, -np.inf, np.inf]], dtype=np.float32)).tolist() == [[0, 0, 255]]


# --- errors -------------------------------------------------------------------------------------------------------


def test_bad_inputs(matting, tmp_path):
    (tmp_path / "not.png").write_text("not an image")
    with pytest.raises(rt.InvalidInputError, match=r"cannot read .*not\.png as an image"):
        matting.runtime(str(tmp_path / "not.png"))
    with pytest.raises(rt.InvalidInputError, match="cannot read the image bytes as an image"):
        matting.runtime(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(rt.InvalidInputError, match=r"an image is a path, raw bytes, a PIL\.Image or a numpy array; got int"):
        matting.runtime(3)
    with pytest.raises(rt.InvalidInputError) as info:
        matting.runtime(synthetic(20, 20), threshold=0.5)
    assert str(info.value) == "background-removal does not take 'threshold'; it takes no options"


def test_a_graph_of_several_maps_is_refused(tmp_path):
    """An output of 3 maps per image (a segmentation head) is refused when the Runtime is built."""
    from authoring import embed_metadata

    model = tiny_matting(tmp_path / "hf", "birefnet", size=SIZE)
    model.head = torch.nn.Conv2d(8, 3, 3, padding=1)
    embed_metadata(export_matting_onnx(model, "birefnet", tmp_path / "plain.onnx", SIZE), tmp_path / "hf",
                   tmp_path / "model.onnx")
    with pytest.raises(rt.MetadataValidationError, match="background-removal reads one foreground map per image; "
                                                          r"the output 'alphas' has shape \['batch', 3, 16, 16\]: 3 maps"):
        rt.Runtime(tmp_path / "model.onnx")


# --- the command line and JSON lines ---------------------------------------------------------------------------------


def test_cli_writes_the_cutout(matting, tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "photo.jpg"
    synthetic(64, 48, seed=9).save(path, quality=95)
    assert rt._main([str(matting.onnx), str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    written = tmp_path / "photo-nobg.png"
    assert summary["input"] == str(path) and summary["image"] == str(written) and summary["size"] == [64, 48]
    expected = expected_cutout(matting, str(path))
    assert_cutout(Image.open(written), expected)
    assert summary["foreground"] == pytest.approx(float(np.asarray(Image.open(written))[..., 3].mean() / 255))
    out = tmp_path / "out"
    assert rt._main([str(matting.onnx), str(path), "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == str(out / "photo-nobg.png")
    assert np.array_equal(np.asarray(Image.open(out / "photo-nobg.png")), np.asarray(Image.open(written)))


def test_json_lines_give_the_image_as_a_png(matting, tmp_path):
    import base64
    import io

    from PIL import Image

    line, path = json_lines_answer(matting.runtime, rt._json_lines, tmp_path)
    prefix = "data:image/png;base64,"
    assert line.startswith(prefix)
    decoded = Image.open(io.BytesIO(base64.b64decode(line[len(prefix):])))
    assert decoded.mode == "RGBA" and np.array_equal(np.asarray(decoded), np.asarray(matting.runtime(path)))


# --- authoring ------------------------------------------------------------------------------------------------------


def test_task_detection():
    from authoring.tasks import detect_task, resolve_task

    for family in FAMILIES.values():
        assert detect_task(family["config"]) == "background-removal"
        assert detect_task({"auto_map": family["config"]["auto_map"]}) == "background-removal"  # no architectures
    assert detect_task({"auto_map": {"AutoModelForCausalLM": "modeling.MyForCausalLM"}}) == "text-generation"
    assert resolve_task({"architectures": ["MODNet"]}, "background-removal") == "background-removal"


def test_task_override_when_embedding(tmp_path):
    """A matting model whose config names no known class: --task background-removal embeds it."""
    from authoring import embed_metadata

    model = tiny_matting(tmp_path / "hf", "birefnet", size=SIZE)
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"architectures": ["MODNet"]}), encoding="utf-8")
    plain = export_matting_onnx(model, "birefnet", tmp_path / "plain.onnx", SIZE)
    metadata = embed_metadata(plain, tmp_path / "hf", tmp_path / "model.onnx", task="background-removal")
    assert metadata[rt.KEY_PIPELINE_TASK] == "background-removal"
    image = synthetic(40, 30, seed=2)
    assert_cutout(rt.Runtime(tmp_path / "model.onnx")(image),
                  expected_cutout(Built("birefnet", None, model, _reference("birefnet"), tmp_path / "model.onnx", metadata),
                                  image))


def test_export_says_to_embed(matting, tmp_path):
    from authoring.export import export

    with pytest.raises(rt.MetadataError, match=r"background-removal models .* are custom code, which export does not run"):
        export(matting.folder, tmp_path / "model.onnx", exporter="torch")


def test_runs_vendored_alone(matting, tmp_path):
    """The runtime file copied alone removes a background with numpy, onnxruntime and Pillow: no transformers, torch,
    onnx or tokenizers imported."""
    import shutil

    from PIL import Image

    shutil.copy(ROOT / "runtime" / "onnxmeta_runtime.py", tmp_path / "onnxmeta_runtime.py")
    Image.linear_gradient("L").resize((90, 60)).convert("RGB").save(tmp_path / "photo.png")
    code = (
        "import sys\n"
        "import onnxmeta_runtime as rt\n"
        f"rt.Runtime({str(matting.onnx)!r})('photo.png').save('out.png')\n"
        "print(sorted(m for m in ('transformers', 'torch', 'onnx', 'tokenizers') if sys.modules.get(m) is not None))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert_cutout(Image.open(tmp_path / "out.png"), expected_cutout(matting, str(tmp_path / "photo.png")))
