"""Benchmark the runtime's image path against transformers' image processor and against Optimum + the pipeline.

    python bench/bench_images.py [--repeats 3] [--json bench/results-images.json]

Builds once, cached under ~/.cache/onnxmeta/bench/images/:

* 64 JPEG photos at phone and camera resolutions (0.5 to 24 megapixels, some with an EXIF rotation), made
  from the two real photos of ../shared/data/_assets (australia.jpg, pineapple.jpg) by random crops and
  Lanczos resizes: only two real photos exist, so the pixels are theirs, upscaled, and the sizes are real
  devices' (without the photos it falls back to synthetic images and says so);
* a ViT-base-sized random-weight ViTForImageClassification (hidden 768, 12 layers, 224x224, patch 16,
  1000 labels; 330 MB), exported with torch.onnx.export and embedded with its ViT image processor
  (google/vit-base-patch16-224's: 224 bilinear, mean and std 0.5). Every contender runs this one file.

Measured:

1. preprocessing, in process: the runtime's ImageProcessor against transformers' ViTImageProcessorPil
   (the PIL backend), both on decoded images (processor only) and from the JPEG files (load_image +
   processor, what a pipeline call does first);
2. whole calls, 64 photos at batch 1 and 16, against Optimum's ORTModelForImageClassification in a
   transformers 4.57 image-classification pipeline (its environment: ~/.cache/onnxmeta/venv-optimum):
   a whole process (start, imports, load, 64 images; wall time) and in process (one process, both
   warmed up, timed in interleaved passes; images/s from the best pass).

Each pass classifies 64 photos with a ViT-base: about 1 TFLOP, so a run takes minutes (--repeats 1 for a
quick one). Ratios are speed-ups: the peer's time over ours.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "images"
SHARED = Path(os.environ.get("ONNXMETA_SHARED_DATA", "/work/shared/data"))
PHOTOS = 64
# (width, height) of common phone and camera photos, landscape and portrait.
RESOLUTIONS = ((4032, 3024), (3024, 4032), (4000, 3000), (1920, 1080), (1080, 1920), (2048, 1536), (3264, 2448),
               (6000, 4000), (1280, 960), (2560, 1920), (4624, 3472), (1600, 1200), (3000, 4000), (800, 600),
               (5472, 3648), (2592, 1944))
VIT_PROCESSOR = {"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224}


def photos() -> tuple[list[Path], str]:
    """The 64 cached JPEGs (made on first use) and where their pixels come from."""
    folder = CACHE / "photos"
    paths = [folder / f"photo{i:02d}.jpg" for i in range(PHOTOS)]
    source_file = folder / "SOURCE"
    if all(p.is_file() for p in paths) and source_file.is_file():
        return paths, source_file.read_text()
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = [SHARED / "_assets" / n for n in ("australia.jpg", "pineapple.jpg")]
    if all(p.is_file() for p in sources):
        originals = [Image.open(p).convert("RGB") for p in sources]
        source = "crops and Lanczos resizes of the two real photos in ../shared/data/_assets (australia.jpg, pineapple.jpg)"
    else:
        y, x = np.mgrid[0:900, 0:1200]
        originals = [Image.fromarray(np.stack([(x * 7 + y) % 256, (y * 3) % 256, (x ^ y) % 256], -1).astype(np.uint8))]
        source = "SYNTHETIC patterns (../shared/data/_assets is absent): decode costs differ from real photos"
    for i, path in enumerate(paths):
        image = originals[i % len(originals)]
        width, height = RESOLUTIONS[i % len(RESOLUTIONS)]
        # a random crop of the source with the target's aspect ratio, 60-100% of the largest such window
        scale = min(image.width / width, image.height / height) * rng.uniform(0.6, 1.0)
        w, h = int(width * scale), int(height * scale)
        left, top = rng.integers(0, image.width - w + 1), rng.integers(0, image.height - h + 1)
        photo = image.crop((left, top, left + w, top + h)).resize((width, height), Image.Resampling.LANCZOS)
        exif = photo.getexif()
        if i % 8 == 3:  # a phone photo stored sideways, upright through its EXIF orientation
            photo = photo.transpose(Image.Transpose.ROTATE_90)
            exif[0x0112] = 6
        photo.save(path, format="JPEG", quality=90, exif=exif.tobytes())
    source_file.write_text(source)
    return paths, source


def build() -> Path:
    """The cached model folder (config, preprocessor config, model.onnx with metadata); built in this process."""
    model_path = CACHE / "vit-base" / "model.onnx"
    if model_path.is_file():
        return model_path.parent
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]
    from authoring import embed_metadata

    folder = model_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    real = SHARED / "google__vit-base-patch16-224" / "config.json"
    labels = ({int(k): v for k, v in json.loads(real.read_text())["id2label"].items()} if real.is_file()
              else {i: f"class {i}" for i in range(1000)})
    config = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224,
                       patch_size=16, id2label=labels, label2id={v: k for k, v in labels.items()},
                       architectures=["ViTForImageClassification"])
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(VIT_PROCESSOR))

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values=pixel_values).logits

    bare = folder / "bare.onnx"
    torch.onnx.export(Wrapped().eval(), (torch.randn(1, 3, 224, 224),), bare, input_names=["pixel_values"],
                      output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    embed_metadata(bare, folder, model_path, include_vocab=True)
    bare.unlink()
    (folder / "model.safetensors").unlink()  # Optimum loads the ONNX file; the weights live there
    return folder


def preprocessing(paths: list[Path], repeats: int) -> dict[str, Any]:
    """Seconds for the 64 photos: ours vs transformers' ViTImageProcessorPil, decoded and from files; best of repeats."""
    import numpy as np
    from transformers import ViTImageProcessorPil
    from transformers.image_utils import load_image

    sys.path.insert(0, str(ROOT / "runtime"))
    import onnxmeta_runtime as rt

    reference = ViTImageProcessorPil.from_dict(VIT_PROCESSOR)
    ours = rt.ImageProcessor(VIT_PROCESSOR)
    files = [str(p) for p in paths]
    decoded = [load_image(p) for p in files]
    contenders = {
        "onnxmeta_decoded": lambda: [ours.process(image) for image in decoded],
        "transformers_decoded": lambda: [reference(image, return_tensors="np")["pixel_values"][0] for image in decoded],
        "onnxmeta_files": lambda: [ours.process(rt.load_image(p)) for p in files],
        "transformers_files": lambda: [reference(load_image(p), return_tensors="np")["pixel_values"][0] for p in files],
    }
    outputs = {name: fn() for name, fn in contenders.items()}  # warm-up, and the outputs compared
    worst = max(float(np.abs(a - b).max()) for a, b in zip(outputs["onnxmeta_files"], outputs["transformers_files"]))
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    megapixels = sum(image.width * image.height for image in decoded) / 1e6
    return {"seconds": {n: {"best_s": min(s), "median_s": statistics.median(s), "runs": s} for n, s in seconds.items()},
            "max_abs_difference": worst, "megapixels": megapixels}


# A whole process: start, imports, load, classify the 64 photos; prints the labels. argv: folder, batch, photos...
PROCESS = {
    "onnxmeta": """
import json, sys, onnxmeta_runtime as rt
runtime = rt.Runtime(sys.argv[1] + "/model.onnx", batch_size=int(sys.argv[2]))
print(json.dumps([r[0]["label"] for r in runtime(sys.argv[3:], top_k=1)]))
""",
    "optimum": """
import json, sys
from optimum.onnxruntime import ORTModelForImageClassification
from transformers import ViTImageProcessor, pipeline
model = ORTModelForImageClassification.from_pretrained(sys.argv[1], file_name="model.onnx")
classify = pipeline("image-classification", model=model, image_processor=ViTImageProcessor.from_pretrained(sys.argv[1]))
print(json.dumps([r[0]["label"] for r in classify(sys.argv[3:], top_k=1, batch_size=int(sys.argv[2]))]))
""",
}

# In process: the Optimum environment (so that both use the same onnxruntime, numpy and Pillow) builds both, warms
# each up, then times them in interleaved passes.
IN_PROCESS = """
import json, sys, time
sys.path.insert(0, {runtime!r})
folder, passes, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
import onnxmeta_runtime as rt
from optimum.onnxruntime import ORTModelForImageClassification
from transformers import ViTImageProcessor, pipeline
ours = {{batch: rt.Runtime(folder + "/model.onnx", batch_size=batch) for batch in (16, 1)}}
classify = pipeline("image-classification", model=ORTModelForImageClassification.from_pretrained(folder, file_name="model.onnx"),
                    image_processor=ViTImageProcessor.from_pretrained(folder))
contenders = {{}}
for batch in (16, 1):
    contenders[f"onnxmeta_bs{{batch}}"] = lambda b=batch: [r[0]["label"] for r in ours[b](files, top_k=1)]
    contenders[f"optimum_bs{{batch}}"] = lambda b=batch: [r[0]["label"] for r in classify(files, top_k=1, batch_size=b)]
for batch in (16, 1):  # warm-up: sessions, threads and caches on a few photos
    ours[batch](files[:2])
    classify(files[:2], batch_size=batch)
labels, seconds = {{}}, {{name: [] for name in contenders}}
for _ in range(passes):
    for name, fn in contenders.items():
        start = time.perf_counter()
        labels[name] = fn()
        seconds[name].append(time.perf_counter() - start)
print(json.dumps({{"seconds": seconds, "labels": labels}}))
"""



def whole_process(folder: Path, paths: list[Path], repeats: int) -> dict[str, dict[str, Any]]:
    """Median wall time of a new process that imports, loads and classifies the photos, rounds interleaved."""
    runs: dict[str, list[float]] = {}
    labels: dict[str, list[str]] = {}
    for _ in range(repeats):
        for batch in (1, 16):
            for contender, code in PROCESS.items():
                name = f"{contender}_bs{batch}"
                cmd, env = bench_cli.contender_command(contender, code)
                start = time.perf_counter()
                proc = subprocess.run([*cmd, str(folder), str(batch), *map(str, paths)], env=env, capture_output=True,
                                      text=True, check=False)
                runs.setdefault(name, []).append(time.perf_counter() - start)
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
                labels[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {n: {"seconds": statistics.median(r), "runs": r, "labels": labels[n]} for n, r in runs.items()}


def in_process(folder: Path, paths: list[Path], passes: int) -> dict[str, dict[str, Any]]:
    """Per contender: best and median seconds for the photos over interleaved passes, and images per second."""
    cmd, env = bench_cli.contender_command("optimum", IN_PROCESS.format(runtime=str(ROOT / "runtime")))
    proc = subprocess.run([*cmd, str(folder), str(passes), *map(str, paths)], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"in-process run failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: {"best_s": min(runs), "median_s": statistics.median(runs), "images_per_s": len(paths) / min(runs),
                   "runs": runs, "labels": out["labels"][name]} for name, runs in out["seconds"].items()}


def run(repeats: int) -> dict[str, Any]:
    """Build if needed, measure, print; the figures and target verdicts as a dict."""
    start = time.perf_counter()
    paths, source = photos()
    if not (CACHE / "vit-base" / "model.onnx").is_file():
        subprocess.run([sys.executable, __file__, "--build"], check=True)
    folder = CACHE / "vit-base"
    size = (folder / "model.onnx").stat().st_size
    print(f"photos: {len(paths)} JPEGs, {source}\nmodel: {folder / 'model.onnx'} ({size / 2**20:.0f} MB), ready in "
          f"{time.perf_counter() - start:.0f} s")

    pre = preprocessing(paths, max(repeats, 3))
    s = pre["seconds"]
    print(f"\n{'preprocessing, 64 photos':<30}{'best s':>9}{'median s':>10}   ({pre['megapixels']:.0f} megapixels; largest "
          f"difference from transformers {pre['max_abs_difference']:.1e})")
    for name, r in s.items():
        print(f"{name:<30}{r['best_s']:>9.3f}{r['median_s']:>10.3f}")

    whole = whole_process(folder, paths, repeats)
    print(f"\n{'whole process, 64 photos':<30}{'median s':>9}")
    for name, r in whole.items():
        print(f"{name:<30}{r['seconds']:>9.2f}")
    speed = in_process(folder, paths, repeats)
    print(f"\n{'in process, 64 photos':<30}{'best s':>9}{'median s':>10}{'images/s':>10}")
    for name, r in speed.items():
        print(f"{name:<30}{r['best_s']:>9.2f}{r['median_s']:>10.2f}{r['images_per_s']:>10.1f}")

    reference = speed["optimum_bs1"]["labels"]
    agree = {name: r.pop("labels") == reference for name, r in speed.items()}
    agree.update({f"process_{name}": r.pop("labels") == reference for name, r in whole.items()})
    ratios = {
        "preprocessing_decoded": s["transformers_decoded"]["best_s"] / s["onnxmeta_decoded"]["best_s"],
        "preprocessing_files": s["transformers_files"]["best_s"] / s["onnxmeta_files"]["best_s"],
        **{f"process_bs{b}": whole[f"optimum_bs{b}"]["seconds"] / whole[f"onnxmeta_bs{b}"]["seconds"] for b in (1, 16)},
        **{f"in_process_bs{b}": speed[f"onnxmeta_bs{b}"]["images_per_s"] / speed[f"optimum_bs{b}"]["images_per_s"]
           for b in (1, 16)},
    }
    targets = {
        "preprocessing (processor on decoded photos) >= 1.5x transformers": ratios["preprocessing_decoded"] >= 1.5,
        "whole process >= 1.1x Optimum at batch 1": ratios["process_bs1"] >= 1.1,
        "whole process >= 1.1x Optimum at batch 16": ratios["process_bs16"] >= 1.1,
        "in process >= 1.1x Optimum at batch 1": ratios["in_process_bs1"] >= 1.1,
        "in process >= 1.1x Optimum at batch 16": ratios["in_process_bs16"] >= 1.1,
        "same labels as Optimum everywhere": all(agree.values()),
    }
    print("\nspeed-ups (x faster than the peer): " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return {"model": str(folder / "model.onnx"), "model_bytes": size, "photos": source, "preprocessing": pre,
            "whole_process": whole, "in_process": speed, "labels_agree": agree, "ratios": ratios, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(__doc__, run, "results-images.json", repeats=3, build=build, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
