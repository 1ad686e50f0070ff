"""Prove that ``runtime/onnxmeta_runtime.py`` works when vendored alone, for text, image, detection and audio models.

Builds the demo text model (or takes ``--model``), tiny image and audio classifiers and tiny object and zero-shot
object detectors, prepares one clean virtual environment a set of packages with only what the README says that kind
needs (same versions as this interpreter; cached and reused): numpy, onnxruntime and tokenizers for text; numpy,
onnxruntime and Pillow for images and object detection; numpy and onnxruntime alone for audio; numpy, onnxruntime,
Pillow and tokenizers for zero-shot object detection. It copies the runtime file and a model into an empty temporary
folder and runs them there in isolated mode, checking that transformers, torch, onnx, the authoring package and the
packages the kind does not need cannot be imported.

Usage: ``python vendor_check/check.py [--model PATH] [--venv DIR] [--fresh]``. Exits 0 on success.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "runtime" / "onnxmeta_runtime.py"
DEFAULT_VENV = Path.home() / ".cache" / "onnxmeta" / "vendor-venv"
# What each kind of model needs beside the runtime file; the venvs of images and audio sit beside --venv's.
PACKAGES = {"text": ("numpy", "onnxruntime", "tokenizers"), "image": ("numpy", "onnxruntime", "Pillow"),
            "detection": ("numpy", "onnxruntime", "Pillow"), "audio": ("numpy", "onnxruntime"),
            "zero-shot-detection": ("numpy", "onnxruntime", "Pillow", "tokenizers")}
# The venv of each kind, beside --venv's (text's): kinds that need the same packages share one.
VENVS = {"text": "", "image": "-image", "detection": "-image", "audio": "-audio", "zero-shot-detection": "-image-text"}
ABSENT = ("transformers", "torch", "onnx", "authoring")

# Run inside a clean venv with cwd = the vendor folder; argv: vendor folder, model file name, modules that must be absent.
PRELUDE = """
import importlib.util, json, subprocess, sys
from pathlib import Path
folder, model, absent = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3].split(",")
for name in absent:
    assert importlib.util.find_spec(name) is None, f"{name} is importable from the clean venv"
import numpy
assert Path(numpy.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), numpy.__file__
sys.path.insert(0, str(folder))
import onnxmeta_runtime
assert Path(onnxmeta_runtime.__file__).resolve().parent == folder, onnxmeta_runtime.__file__

def cli(*inputs):
    done = subprocess.run([sys.executable, "-I", "onnxmeta_runtime.py", model, *inputs], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
"""

# What the image kinds share: a red PNG file and a blue array, and the task the metadata must name.
IMAGES = PRELUDE + """
from PIL import Image
Image.new("RGB", (50, 40), (255, 0, 0)).save("red.png")
blue = numpy.zeros((40, 50, 3), numpy.uint8)
blue[..., 2] = 255

def expect_task(name):
    task = onnxmeta_runtime.read_metadata(model).get("hf_pipeline_task")
    assert task == name, f"hf_pipeline_task is {task!r}"
"""

VENDORED_CHECKS = {
    "text": PRELUDE + """
task = onnxmeta_runtime.read_metadata(model).get("hf_pipeline_task")
assert task == "text-classification", f"hf_pipeline_task is {task!r}"
out = onnxmeta_runtime.Runtime(model)(["I love this movie!", "This was a terrible waste of time."])
assert [r["label"] for r in out] == ["POSITIVE", "NEGATIVE"], out
line = cli("I love this movie!")
assert line[0]["label"] == "POSITIVE", line
print(f"  text api: {[r['label'] for r in out]}; cli: {line[0]['label']}")
import re, signal, urllib.request
server = subprocess.Popen([sys.executable, "-I", "onnxmeta_runtime.py", "serve", model, "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
url = re.search(r" on (http://\\S+)", server.stdout.readline()).group(1)
request = urllib.request.Request(url + "/v1/pipeline", json.dumps({"inputs": ["I love this movie!"]}).encode(),
                                 {"Content-Type": "application/json"})
served = json.loads(urllib.request.urlopen(request, timeout=60).read())
server.send_signal(signal.SIGTERM)
assert server.wait(30) == 0, server.stderr.read()
assert served == [out[0]], served
print(f"  text server: {served[0]['label']} from {url}/v1/pipeline, stopped by SIGTERM")
""",
    "image": IMAGES + """
expect_task("image-classification")
out = onnxmeta_runtime.Runtime(model)(["red.png", blue], top_k=1)
assert [r[0]["label"] for r in out] == ["RED", "BLUE"], out
line = cli("red.png")
assert line[0]["label"] == "RED", line
print(f"  image api: {[r[0]['label'] for r in out]}; cli: {line[0]['label']}")
""",
    "detection": IMAGES + """
expect_task("object-detection")
box = {"xmin": 12, "ymin": 10, "xmax": 37, "ymax": 30}  # the centre half of a 50 x 40 image
out = onnxmeta_runtime.Runtime(model)(["red.png", blue], threshold=0.5)
assert [[(d["label"], d["box"]) for d in r] for r in out] == [[("RED", box)], [("BLUE", box)]], out
line = cli("red.png")
assert [(d["label"], d["box"]) for d in line] == [("RED", box)], line
print(f"  detection api: {[[d['label'] for d in r] for r in out]} at {box}; cli: {line[0]['label']}")
""",
    "zero-shot-detection": IMAGES + """
expect_task("zero-shot-object-detection")
box = {"xmin": 12, "ymin": 10, "xmax": 37, "ymax": 30}
runtime = onnxmeta_runtime.Runtime(model)
out = runtime(["red.png", blue], candidate_labels=["red", "blue"])
assert [[(d["label"], d["box"]) for d in r] for r in out] == [[("red", box)], [("blue", box)]], out
own = runtime([{"image": "red.png", "candidate_labels": ["blue"]}, {"image": blue, "candidate_labels": "red,blue"}])
assert [[d["label"] for d in r] for r in own] == [[], ["blue"]], own
line = cli("red.png", "--options", json.dumps({"candidate_labels": ["blue", "red"]}))
assert [(d["label"], d["box"]) for d in line] == [("red", box)], line
print(f"  zero-shot detection api: {[[d['label'] for d in r] for r in out]} at {box}; cli: {line[0]['label']}")
""",
    "audio": PRELUDE + """
import wave
task = onnxmeta_runtime.read_metadata(model).get("hf_pipeline_task")
assert task == "audio-classification", f"hf_pipeline_task is {task!r}"
tone = (0.5 * numpy.sin(2 * numpy.pi * 440 * numpy.arange(16000) / 16000) * 32767).astype("<i2")
with wave.open("tone.wav", "wb") as file:
    file.setnchannels(1)
    file.setsampwidth(2)
    file.setframerate(16000)
    file.writeframes(tone.tobytes())
out = onnxmeta_runtime.Runtime(model)(["tone.wav", numpy.zeros(16000, numpy.float32)], top_k=1)
assert [r[0]["label"] for r in out] == ["LOUD", "QUIET"], out
line = cli("tone.wav")
assert line[0]["label"] == "LOUD", line
print(f"  audio api: {[r[0]['label'] for r in out]}; cli: {line[0]['label']}")
""",
}


class CheckError(Exception):
    """A step of the check failed; the message says which and why."""


def run(cmd: list[str], step: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` and return its stdout, or raise CheckError with its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckError(f"{step} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def build_demo(out_dir: Path) -> Path:
    """Build the demo model with the current interpreter and return its path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "runtime"), str(REPO)])}  # this checkout's
    run([sys.executable, "-m", "authoring", "demo", "--output-dir", str(out_dir)], "building the demo model", cwd=REPO,
        env=env)
    return out_dir / "sentiment.onnx"


def _classifier(path: Path, input_name: str, shape: list[object], nodes: list[Any], weights: dict[str, Any]) -> None:
    """A graph from `input_name` to (batch, 2) logits, written to path."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, path.stem, inputs=[helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(np.array(value, dtype=np.float32), name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _embedded(out_dir: Path, name: str, config: dict[str, Any], processor: dict[str, Any]) -> tuple[Path, Path, Path]:
    """A Hugging Face folder (config.json, preprocessor_config.json) and the paths of its plain and embedded graphs."""
    folder = out_dir / f"{name}-hf"
    folder.mkdir(parents=True)
    labels = config["id2label"]
    config = {**config, "label2id": {label: int(i) for i, label in labels.items()}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return folder, out_dir / f"{name}-plain.onnx", out_dir / f"{name}.onnx"


def build_image_and_audio(out_dir: Path) -> dict[str, Path]:
    """Tiny image and audio classifiers built with onnx.helper, embedded by authoring: RED/BLUE from the mean colour
    of a ViT-processed image, LOUD/QUIET from the mean magnitude of a 16 kHz waveform."""
    from onnx import helper

    sys.path[:0] = [str(REPO / "runtime"), str(REPO)]
    from authoring import embed_metadata

    image, image_plain, image_model = _embedded(
        out_dir, "image",
        {"architectures": ["ViTForImageClassification"], "model_type": "vit", "image_size": 32, "num_channels": 3,
         "id2label": {"0": "RED", "1": "BLUE"}},
        {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
         "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    _classifier(image_plain, "pixel_values", ["batch", 3, 32, 32],
                [helper.make_node("ReduceMean", ["pixel_values"], ["means"], axes=[2, 3], keepdims=0),
                 helper.make_node("MatMul", ["means", "weights"], ["logits"])],
                {"weights": [[4, 0], [0, 0], [0, 4]]})
    audio, audio_plain, audio_model = _embedded(
        out_dir, "audio",
        {"architectures": ["Wav2Vec2ForSequenceClassification"], "model_type": "wav2vec2",
         "id2label": {"0": "QUIET", "1": "LOUD"}},
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
         "padding_value": 0.0, "do_normalize": False, "return_attention_mask": False})
    _classifier(audio_plain, "input_values", ["batch", "samples"],
                [helper.make_node("Abs", ["input_values"], ["magnitude"]),
                 helper.make_node("ReduceMean", ["magnitude"], ["level"], axes=[1], keepdims=1),
                 helper.make_node("MatMul", ["level", "weights"], ["scaled"]),
                 helper.make_node("Add", ["scaled", "bias"], ["logits"])],
                {"weights": [[-20, 20]], "bias": [1, -1]})
    for folder, plain, model in ((image, image_plain, image_model), (audio, audio_plain, audio_model)):
        embed_metadata(plain, folder, model, include_vocab=True)
    return {"image": image_model, "audio": audio_model}


def _detector(path: Path, inputs: list[tuple[str, int, list[str | int]]], outputs: dict[str, list[str | int]],
              nodes: list[Any], weights: dict[str, Any]) -> None:
    """A graph from `inputs` (name, ONNX element type, shape) to float `outputs` (name: shape), written to path."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, path.stem, inputs=[helper.make_tensor_value_info(name, kind, shape) for name, kind, shape in inputs],
        outputs=[helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        initializer=[numpy_helper.from_array(np.array(value), name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def build_detectors(out_dir: Path) -> dict[str, Path]:
    """Tiny detectors built with onnx.helper, embedded by authoring, each finding one box (the centre half of the image)
    from the mean colour: a DETR-style object detector (RED / BLUE and the no-object class; a second query always
    no-object) and an OWL-ViT-style zero-shot one (a word-level tokenizer; each label's score the dot product of the
    image's mean colour with its words' vectors: "red" and "blue")."""
    import numpy as np
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sys.path[:0] = [str(REPO / "runtime"), str(REPO)]
    from authoring import embed_metadata

    mean = [helper.make_node("ReduceMean", ["pixel_values"], ["means"], axes=[2, 3], keepdims=0)]
    centre = [0.5, 0.5, 0.5, 0.5]  # centre x, centre y, width, height
    detr, detr_plain, detr_model = _embedded(
        out_dir, "detection", {"architectures": ["DetrForObjectDetection"], "model_type": "detr",
                               "id2label": {"0": "RED", "1": "BLUE"}},
        {"image_processor_type": "DetrImageProcessor", "do_resize": True, "size": {"shortest_edge": 32, "longest_edge": 64},
         "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": True})
    # logits of 2 queries x (RED, BLUE, no object): the first query's RED and BLUE from the red and blue means
    weights = np.zeros((3, 6), np.float32)
    weights[0, 0], weights[2, 1] = 4, 4
    _detector(detr_plain, [("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
              {"logits": ["batch", 2, 3], "pred_boxes": ["batch", 2, 4]},
              [*mean, helper.make_node("MatMul", ["means", "weights"], ["flat"]),
               helper.make_node("Add", ["flat", "bias"], ["shifted"]),
               helper.make_node("Reshape", ["shifted", "query_shape"], ["logits"]),
               helper.make_node("MatMul", ["means", "no_boxes"], ["zeros"]),
               helper.make_node("Add", ["zeros", "boxes"], ["flat_boxes"]),
               helper.make_node("Reshape", ["flat_boxes", "box_shape"], ["pred_boxes"])],
              {"weights": weights, "bias": np.array([0, 0, 0, 0, 0, 4], np.float32),
               "query_shape": np.array([-1, 2, 3], np.int64), "no_boxes": np.zeros((3, 8), np.float32),
               "boxes": np.array(centre * 2, np.float32), "box_shape": np.array([-1, 2, 4], np.int64)})

    owl, owl_plain, owl_model = _embedded(
        out_dir, "zero-shot-detection", {"architectures": ["OwlViTForObjectDetection"], "model_type": "owlvit",
                                         "text_config": {"max_position_embeddings": 16}, "id2label": {}},
        {"image_processor_type": "OwlViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
         "resample": 3, "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    vocab = {"[PAD]": 0, "[UNK]": 1, "red": 2, "blue": 3}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]",
                            model_max_length=16).save_pretrained(owl)
    vectors = np.zeros((len(vocab), 3), np.float32)
    vectors[vocab["red"]], vectors[vocab["blue"]] = [2, 0, -2], [-2, 0, 2]  # dot products of +-4 with red and blue
    _detector(owl_plain, [("input_ids", TensorProto.INT64, ["texts", "sequence"]),
                          ("pixel_values", TensorProto.FLOAT, ["batch", 3, 32, 32])],
              {"logits": ["batch", 1, "queries"], "pred_boxes": ["batch", 1, 4]},
              [*mean, helper.make_node("Gather", ["vectors", "input_ids"], ["word_vectors"]),
               helper.make_node("ReduceSum", ["word_vectors", "sequence_axis"], ["label_vectors"], keepdims=0),
               helper.make_node("Shape", ["pixel_values"], ["pixel_shape"], end=1),
               helper.make_node("Concat", ["pixel_shape", "queries_by_colour"], ["label_shape"], axis=0),
               helper.make_node("Reshape", ["label_vectors", "label_shape"], ["labels"]),
               helper.make_node("Transpose", ["labels"], ["columns"], perm=[0, 2, 1]),
               helper.make_node("Unsqueeze", ["means", "box_axis"], ["box_means"]),
               helper.make_node("MatMul", ["box_means", "columns"], ["logits"]),
               helper.make_node("MatMul", ["box_means", "no_boxes"], ["zeros"]),
               helper.make_node("Add", ["zeros", "boxes"], ["pred_boxes"])],
              {"vectors": vectors, "sequence_axis": np.array([1], np.int64),
               "queries_by_colour": np.array([-1, 3], np.int64), "box_axis": np.array([1], np.int64),
               "no_boxes": np.zeros((3, 4), np.float32), "boxes": np.array(centre, np.float32)})
    for folder, plain, model in ((detr, detr_plain, detr_model), (owl, owl_plain, owl_model)):
        embed_metadata(plain, folder, model, include_vocab=True)
    return {"detection": detr_model, "zero-shot-detection": owl_model}


def wanted_versions(kind: str) -> dict[str, str]:
    """The versions, in the current interpreter, of what a kind of model needs."""
    return {name: importlib.metadata.version(name) for name in PACKAGES[kind]}


def venv_python(venv_dir: Path) -> Path:
    """The interpreter of the venv at ``venv_dir``."""
    return venv_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def installed_versions(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The versions of `names` in the venv (missing ones left out)."""
    code = (
        "import importlib.metadata as m, json\n"
        "v = {}\n"
        f"for n in {names!r}:\n"
        "    try: v[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(v))"
    )
    return json.loads(run([str(python), "-I", "-c", code], "reading the venv's packages"))


def prepare_venv(venv_dir: Path, kind: str, fresh: bool) -> tuple[Path, str]:
    """Create (or reuse) a clean venv holding exactly the wanted versions; return its python and what was done."""
    python, wanted = venv_python(venv_dir), wanted_versions(kind)
    if fresh or not python.exists():
        venv.create(venv_dir, clear=True, with_pip=True, system_site_packages=False)
    elif installed_versions(python, PACKAGES[kind]) == wanted:
        return python, "reused"
    pins = [f"{name}=={version}" for name, version in wanted.items()]
    run([str(python), "-I", "-m", "pip", "install", "--disable-pip-version-check", "-q", *pins], "pip install")
    if installed_versions(python, PACKAGES[kind]) != wanted:
        raise CheckError(f"venv packages {installed_versions(python, PACKAGES[kind])} != wanted {wanted}")
    return python, "installed " + " ".join(pins)


def absent(kind: str) -> list[str]:
    """What must not be importable beside a kind's packages: the heavy ones and the other kinds' optional ones."""
    optional = {"tokenizers": "tokenizers", "Pillow": "PIL"}
    return [*ABSENT, "soundfile", *(module for name, module in optional.items() if name not in PACKAGES[kind])]


def check_vendored(python: Path, kind: str, model: Path) -> str:
    """Copy the runtime file and the model into an empty folder and run the kind's checks there."""
    with tempfile.TemporaryDirectory(prefix="onnxmeta-vendored-") as tmp:
        folder = Path(tmp)
        shutil.copy2(RUNTIME, folder)
        shutil.copy2(model, folder)
        cmd = [str(python), "-I", "-c", VENDORED_CHECKS[kind], str(folder), model.name, ",".join(absent(kind))]
        return run(cmd, f"the vendored runtime check ({kind})", cwd=folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="self-contained text model to use (default: build the demo)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help=f"clean venv folder for text (default: {DEFAULT_VENV}); image and object detection use "
                             "<venv>-image, audio <venv>-audio, zero-shot detection <venv>-image-text")
    parser.add_argument("--fresh", action="store_true", help="recreate the venvs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="onnxmeta-demo-") as build_dir:
            models = {**build_image_and_audio(Path(build_dir)), **build_detectors(Path(build_dir))}
            models["text"] = args.model.resolve() if args.model else build_demo(Path(build_dir) / "demo")
            if not models["text"].is_file():
                raise CheckError(f"no model at {models['text']}")
            base = args.venv.expanduser()
            prepared: set[Path] = set()  # a venv two kinds share is recreated (--fresh) once
            for kind in ("text", "image", "detection", "audio", "zero-shot-detection"):
                venv_dir = base.with_name(base.name + VENVS[kind])
                python, action = prepare_venv(venv_dir, kind, args.fresh and venv_dir not in prepared)
                prepared.add(venv_dir)
                print(f"{kind}: {models[kind].name}; venv {venv_dir} with {' '.join(PACKAGES[kind])} ({action})")
                print(f"  vendored {RUNTIME.name} alone; not importable: {', '.join(absent(kind))}")
                print(check_vendored(python, kind, models[kind]), end="")
    except CheckError as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        return 1
    print(f"OK: the vendored runtime works alone for text, image, object detection, audio and zero-shot detection "
          f"({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
