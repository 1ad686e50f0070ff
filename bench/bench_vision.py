"""Benchmark the vision tasks of issue 23 per image, against a named peer on the same weights, with the share of
the runtime's time that goes to its numpy pre- and post-processing.

    python bench/bench_vision.py [--repeats 3] [--photos 8] [--json bench/results-vision.json]

Models (random weights of real models' shapes, built offline once with `onnxmeta export`'s torch exporter and cached
under ~/.cache/onnxmeta/bench/vision/):

* semantic segmentation: SegFormer-b0 (hidden sizes 32/64/160/256, 150 ADE20k-sized labels, 512x512);
  peer: Optimum's ORTModelForSemanticSegmentation running the same file in transformers 4.57's pipeline;
* image-to-image: Swin2SR lightweight x2 (embed 60, 4x6 blocks, pixelshuffledirect) on 128x96 thumbnails;
  peer: Optimum's ORTModelForImageToImage, same file, transformers 4.57's image-to-image pipeline;
* object detection: DETR with a ResNet-50 backbone (shortest edge 800, longest 1333); Optimum has no object
  detection model class, so the peer is transformers 5's pipeline on the PyTorch weights;
* depth estimation: Depth Anything small (DINOv2-small backbone, 518, keep_aspect_ratio); peer: transformers 5's
  pipeline on the PyTorch weights (Optimum has no depth class either).

Photos: the 2-megapixel-and-below JPEGs of bench_images' set (crops of the two real photos in ../shared/data/_assets;
larger ones would make the peers' full-size mask upsampling allocate gigabytes). Per task:

1. whole process (start, imports, load, the photos at batch 1): a new process per contender, rounds interleaved,
   median wall time;
2. in process (imports done, sessions warm): interleaved passes in one process, best pass, photos per second;
3. where the runtime's own time goes in process: decode + numpy preprocessing, onnxruntime, numpy post-processing.

Ratios are speed-ups (the peer's time over ours). Outputs are compared (labels, or the largest pixel difference).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli
import bench_images

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "vision"
TASKS = ("image-segmentation", "image-to-image", "object-detection", "depth-estimation")
FOLDERS = {"image-segmentation": "segformer-b0", "image-to-image": "swin2sr-light-x2", "object-detection": "detr-r50",
           "depth-estimation": "depth-anything-small"}
PEERS = {"image-segmentation": "optimum", "image-to-image": "optimum", "object-detection": "pytorch",
         "depth-estimation": "pytorch"}


def _labels(n: int) -> dict[str, Any]:
    return {"id2label": {i: f"label {i}" for i in range(n)}, "label2id": {f"label {i}": i for i in range(n)}}


def _model(task: str) -> tuple[Any, Any]:
    """The random-weight PyTorch model of the task and its image processor."""
    import transformers as tf

    if task == "image-segmentation":
        config = tf.SegformerConfig(**_labels(150), architectures=["SegformerForSemanticSegmentation"])
        return tf.SegformerForSemanticSegmentation(config), tf.SegformerImageProcessorPil(size={"height": 512, "width": 512})
    if task == "image-to-image":
        config = tf.Swin2SRConfig(embed_dim=60, depths=[6, 6, 6, 6], num_heads=[6, 6, 6, 6], window_size=8, upscale=2,
                                  upsampler="pixelshuffledirect", img_range=1.0, architectures=["Swin2SRForImageSuperResolution"])
        return tf.Swin2SRForImageSuperResolution(config), tf.Swin2SRImageProcessorPil()
    if task == "object-detection":
        backbone = tf.ResNetConfig(out_features=["stage4"])
        config = tf.DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                               **_labels(91), architectures=["DetrForObjectDetection"])
        return tf.DetrForObjectDetection(config), tf.DetrImageProcessorPil()
    backbone = tf.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518, patch_size=14,
                               out_indices=[9, 10, 11, 12], apply_layernorm=True, reshape_hidden_states=False)
    config = tf.DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
                                    reassemble_hidden_size=384, architectures=["DepthAnythingForDepthEstimation"])
    processor = tf.DPTImageProcessorPil(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                        resample=3)
    return tf.DepthAnythingForDepthEstimation(config), processor


def build() -> None:
    """Each task's folder: the PyTorch weights and processor (the PyTorch peer's) and model.onnx (ours and Optimum's)."""
    import torch

    sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]
    from authoring.export import export

    for task in TASKS:
        folder = CACHE / FOLDERS[task]
        if (folder / "model.onnx").is_file():
            continue
        torch.manual_seed(0)
        model, processor = _model(task)
        model.eval()
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        export(folder, folder / "model.onnx.partial", task=task, exporter="torch")
        (folder / "model.onnx.partial").replace(folder / "model.onnx")
        print(f"built {folder}", flush=True)


def photos(count: int) -> list[Path]:
    """count photos of bench_images' set at 2 megapixels or less; the super-resolution thumbnails for image-to-image."""
    from PIL import Image

    paths, _ = bench_images.photos()
    small = [p for p in paths if _pixels(p) <= 2.1e6][:count]
    thumbs = CACHE / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(small):
        target = thumbs / f"thumb{i:02d}.png"
        if not target.is_file():
            Image.open(path).convert("RGB").resize((128, 96), Image.Resampling.LANCZOS).save(target)
    return small


def _pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return image.width * image.height


def inputs(task: str, paths: list[Path]) -> list[Path]:
    return [CACHE / "thumbs" / f"thumb{i:02d}.png" for i in range(len(paths))] if task == "image-to-image" else paths


# What every contender prints for an output: labels and rounded boxes, or a digest of the image / depth map.
SUMMARY = """
import numpy as np
# random weights spread DETR's scores over 92 classes: a low threshold keeps every query's box, so that the
# post-processing does the work of a crowded photo
OPTIONS = {"object-detection": {"threshold": 0.005}}
def summary(task, result):
    if task == "object-detection":
        return [[d["label"], round(d["score"], 3)] for d in result]
    if task == "image-segmentation":
        return [[s["label"], int(np.asarray(s["mask"]).astype(np.int64).sum() // 255)] for s in result]
    if task == "depth-estimation":
        return [float(np.asarray(result["predicted_depth"], dtype=np.float64).mean())]
    return [float(np.asarray(result, dtype=np.float64).mean())]
"""

PEER_SETUP = {
    "optimum": """
from optimum.onnxruntime import ORTModelForImageToImage, ORTModelForSemanticSegmentation
from transformers import AutoImageProcessor, pipeline
model_class = ORTModelForSemanticSegmentation if task == "image-segmentation" else ORTModelForImageToImage
peer = pipeline(task, model=model_class.from_pretrained(folder, file_name="model.onnx"),
                image_processor=AutoImageProcessor.from_pretrained(folder))
""",
    "pytorch": """
import torch
from transformers import pipeline
torch.set_num_threads(__import__("os").cpu_count())
peer = pipeline(task, model=folder, device="cpu")
""",
}

PROCESS = {
    "onnxmeta": "import sys, json\n" + SUMMARY + """
import onnxmeta_runtime as rt
task, folder, files = sys.argv[1], sys.argv[2], sys.argv[3:]
runtime = rt.Runtime(folder + "/model.onnx", batch_size=1)
print(json.dumps([summary(task, runtime(f, **OPTIONS.get(task, {}))) for f in files]))
""",
}


def _peer_process(peer: str) -> str:
    return "import sys, json\n" + SUMMARY + "task, folder, files = sys.argv[1], sys.argv[2], sys.argv[3:]\n" + \
        PEER_SETUP[peer] + "print(json.dumps([summary(task, peer(f, **OPTIONS.get(task, {}))) for f in files]))\n"


# In process: the peer's environment builds both, warms each up, then times interleaved passes; the runtime's
# preprocess / forward / postprocess are wrapped to split its time.
IN_PROCESS = """
import json, sys, time
sys.path.insert(0, @RUNTIME@)
task, folder, passes, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
import onnxmeta_runtime as rt
""" + SUMMARY + "@PEER_SETUP@" + """
ours = rt.Runtime(folder + "/model.onnx", batch_size=1)
contenders = {"onnxmeta": lambda: [summary(task, ours(f, **OPTIONS.get(task, {}))) for f in files],
               "peer": lambda: [summary(task, peer(f, **OPTIONS.get(task, {}))) for f in files]}
""" + bench_cli.IN_PROCESS_TIMING


def _command(peer_env: str, code: str) -> tuple[list[str], dict[str, str]]:
    """Optimum's environment for the Optimum peer; this interpreter (transformers 5, torch) for the PyTorch peer."""
    return bench_cli.contender_command("optimum" if peer_env == "optimum" else "onnxmeta", code)


def whole_process(task: str, files: list[Path], repeats: int) -> dict[str, Any]:
    folder, peer = CACHE / FOLDERS[task], PEERS[task]
    runs: dict[str, list[float]] = {"onnxmeta": [], peer: []}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, (cmd, env) in (("onnxmeta", bench_cli.contender_command("onnxmeta", PROCESS["onnxmeta"])),
                                 (peer, _command(peer, _peer_process(peer)))):
            start = time.perf_counter()
            proc = subprocess.run([*cmd, task, str(folder), *map(str, files)], env=env, capture_output=True, text=True,
                                  check=False)
            runs[name].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"{task} {name} failed:\n{proc.stderr[-3000:]}")
            outputs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": {n: statistics.median(r) for n, r in runs.items()}, "runs": runs, "outputs": outputs}


def in_process(task: str, files: list[Path], passes: int) -> dict[str, Any]:
    folder, peer = CACHE / FOLDERS[task], PEERS[task]
    code = IN_PROCESS.replace("@RUNTIME@", repr(str(ROOT / "runtime"))).replace("@PEER_SETUP@", PEER_SETUP[peer])
    cmd, env = _command(peer, code)
    proc = subprocess.run([*cmd, task, str(folder), str(passes), *map(str, files)], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{task} in process failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _agree(task: str, ours: list[Any], theirs: list[Any]) -> str:
    if task in ("object-detection", "image-segmentation"):
        same = [[x[0] for x in a] == [x[0] for x in b] for a, b in zip(ours, theirs)]
        return f"labels identical on {sum(same)}/{len(same)} photos"
    worst = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
    return f"largest difference of the mean output {worst:.2e}"


def run(repeats: int, count: int = 8) -> dict[str, Any]:
    if not all((CACHE / FOLDERS[t] / "model.onnx").is_file() for t in TASKS):
        subprocess.run([sys.executable, __file__, "--build"], check=True)
    paths = photos(count)
    figures: dict[str, Any] = {"photos": [str(p) for p in paths], "tasks": {}}
    print(f"{len(paths)} photos of 2 megapixels or less (image-to-image: 128x96 thumbnails of them), batch 1\n")
    header = f"{'task (peer)':<36}{'whole s':>9}{'peer s':>9}{'x':>6}{'in ms/img':>11}{'peer ms':>9}{'x':>6}  our split"
    print(header)
    for task in TASKS:
        files = inputs(task, paths)
        whole = whole_process(task, files, repeats)
        inner = in_process(task, files, repeats)
        best = {n: min(s) / len(files) for n, s in inner["seconds"].items()}
        split = min(inner["split"], key=lambda s: sum(s.values()))
        total = sum(split.values())
        shares = {k: v / total for k, v in split.items()}
        peer = PEERS[task]
        ratios = {"whole_process": whole["seconds"][peer] / whole["seconds"]["onnxmeta"],
                  "in_process": best["peer"] / best["onnxmeta"]}
        agreement = _agree(task, inner["outputs"]["onnxmeta"], inner["outputs"]["peer"])
        figures["tasks"][task] = {"peer": peer, "model": FOLDERS[task], "whole_process": whole, "in_process": inner,
                                  "per_image_s": best, "split_s": split, "shares": shares, "ratios": ratios,
                                  "agreement": agreement}
        print(f"{task + ' (' + peer + ')':<36}{whole['seconds']['onnxmeta']:>9.2f}{whole['seconds'][peer]:>9.2f}"
              f"{ratios['whole_process']:>6.2f}{best['onnxmeta'] * 1e3:>11.1f}{best['peer'] * 1e3:>9.1f}"
              f"{ratios['in_process']:>6.2f}  pre {shares['preprocess']:.0%} / onnxruntime {shares['forward']:.0%} / "
              f"post {shares['postprocess']:.0%}; {agreement}", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--photos", type=int, default=8)
    known, rest = parser.parse_known_args(argv)
    return bench_cli.main(__doc__, lambda repeats: run(repeats, known.photos), "results-vision.json", repeats=3,
                          build=build, argv=rest)


if __name__ == "__main__":
    sys.exit(main())
