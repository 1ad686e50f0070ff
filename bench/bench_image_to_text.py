"""Benchmark image captioning (image-to-text) per photo: the runtime on ONE file against Optimum's
ORTModelForVision2Seq in transformers 4.57's image-to-text pipeline, on the same PyTorch weights.

    python bench/bench_image_to_text.py [--repeats 3] [--photos 4] [--json bench/results-image-to-text.json]

Model (built offline once, cached under ~/.cache/onnxmeta/bench/image-to-text/): random weights of
nlpconnect/vit-gpt2-image-captioning's shape, a VisionEncoderDecoderModel of a ViT-base encoder (224x224, patch 16,
hidden 768, 12 layers, 12 heads) and a GPT-2 small decoder (768, 12 layers, 12 heads, 1024 positions, with
cross-attention), GPT-2's tokenizer (the real one from ../shared/data/gpt2 when present: vocab 50257; else a
500-token byte-level BPE trained here, and the script says so) and that model's ViT image processor (224,
bilinear, mean and std 0.5). Two exports of the same weights, both in the Optimum environment
(~/.cache/onnxmeta/venv-optimum, transformers 4.57), since Optimum's exporter is the one that handles this model:

* onnxmeta: ``authoring.export.export(folder, "model.onnx", task="image-to-text")`` (Optimum's exporter, its parts
  merged into one file, the metadata embedded); run by ``onnxmeta_runtime.Runtime(model.onnx)``;
* optimum: Optimum's own export folder, ``main_export(folder, out, task="image-to-text-with-past")`` (the encoder
  and decoder files as Optimum writes them by default; its validation left out, the captions compare the two), run
  by ORTModelForVision2Seq (its defaults: the files it finds, I/O binding off on CPU) inside
  ``pipeline("image-to-text", model=..., tokenizer=..., image_processor=...)``.

Greedy, max_new_tokens=20 with min_new_tokens=20 (random weights: eos cannot end a caption early, so both make 20
tokens per photo), batch 1, the first --photos JPEGs of bench_images' set (phone and camera photos of 2 to 12
megapixels, the fourth stored sideways with an EXIF rotation). Measured:

1. whole process (start, imports, load, caption the photos one by one): a new process per contender (the runtime
   in this interpreter, the peer in the Optimum environment), rounds interleaved, median wall time;
2. in process: one process of the Optimum environment (the runtime file imported from runtime/) builds both,
   warms each up on the photos, then times interleaved passes; the best pass, in ms per photo; and where the
   runtime's time goes (decode + numpy preprocessing, generation, decoding the tokens).

Ratios are speed-ups (the peer's time over ours). The captions are compared photo by photo.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli
import bench_images

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "image-to-text"
PYTORCH, ONE_FILE, OPTIMUM = CACHE / "pytorch", CACHE / "model.onnx", CACHE / "optimum"
NEW_TOKENS = 20


def _tokenizer(folder: Path) -> str:
    """GPT-2's tokenizer into folder (tests/models' helper: the real one when ../shared/data has it); its source."""
    bench_cli.optimum_python()  # puts tests/models on the path (and makes the Optimum environment on first use)
    from generation_models import SHARED, gpt2_tokenizer_folder

    gpt2_tokenizer_folder(folder)
    # transformers 5 may write extra_special_tokens as a list, which 4.57 (the peer's) reads as a dict
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if isinstance(config.get("extra_special_tokens"), list):
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
        config_path.write_text(json.dumps(config, indent=2))
    real = (SHARED / "gpt2" / "_derived").is_dir()
    return "GPT-2's (../shared/data/gpt2)" if real else "a 500-token byte-level BPE trained here (no ../shared/data)"


def _pytorch_folder() -> None:
    """The random-weight VisionEncoderDecoderModel folder: weights, config, tokenizer, image processor."""
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    partial = CACHE / "pytorch.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    source = _tokenizer(partial)
    tokenizer = AutoTokenizer.from_pretrained(partial)
    encoder = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        image_size=224, patch_size=16)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_embd=768, n_layer=12, n_head=12, n_positions=1024,
                         add_cross_attention=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config).eval()
    model.config.architectures = ["VisionEncoderDecoderModel"]
    model.save_pretrained(partial)
    (partial / "preprocessor_config.json").write_text(json.dumps(bench_images.VIT_PROCESSOR))
    (partial / "TOKENIZER").write_text(source)
    partial.replace(PYTORCH)


# Both exports, in the Optimum environment (its transformers 4.57 and Optimum's exporter). argv: folder, one file,
# Optimum's folder.
EXPORT = """
import sys
from pathlib import Path
folder, one_file, optimum = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if not one_file.is_file():
    from authoring.export import export
    partial = one_file.with_name(one_file.name + ".partial")
    report = export(folder, partial, task="image-to-text")
    partial.replace(one_file)
    print(f"onnxmeta's export: {report.exporter}, {report.export_config.get('exporter_task')}", flush=True)
if not (optimum / "config.json").is_file():
    import shutil
    from optimum.exporters.onnx import main_export
    partial = optimum.with_name(optimum.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    main_export(folder, partial, task="image-to-text-with-past", library_name="transformers", device="cpu",
                do_validation=False)
    partial.replace(optimum)
    print("Optimum's export: " + ", ".join(sorted(p.name for p in optimum.glob("*.onnx"))), flush=True)
"""


def build() -> Path:
    """The cached folder: pytorch/ (the weights), model.onnx (the one file), optimum/ (Optimum's export)."""
    if not (PYTORCH / "config.json").is_file():
        _pytorch_folder()
        print(f"built {PYTORCH}", flush=True)
    if not ONE_FILE.is_file() or not (OPTIMUM / "config.json").is_file():
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]), HF_HUB_OFFLINE="1")
        start = time.perf_counter()
        subprocess.run([str(bench_cli.optimum_python()), "-c", EXPORT, str(PYTORCH), str(ONE_FILE), str(OPTIMUM)],
                       env=env, check=True)
        print(f"exported in {time.perf_counter() - start:.0f} s", flush=True)
    return CACHE


# What every contender does per photo: greedy, NEW_TOKENS new tokens exactly, the caption of the one sequence.
GENERATE = (f"GENERATE = {{'max_new_tokens': {NEW_TOKENS}, 'min_new_tokens': {NEW_TOKENS}, 'num_beams': 1, "
            "'do_sample': False}\n")

PEER_SETUP = """
from optimum.onnxruntime import ORTModelForVision2Seq
from transformers import AutoImageProcessor, AutoTokenizer, pipeline
peer = pipeline("image-to-text", model=ORTModelForVision2Seq.from_pretrained(optimum),
                tokenizer=AutoTokenizer.from_pretrained(optimum), image_processor=AutoImageProcessor.from_pretrained(optimum))
"""

# A whole process: start, imports, load, caption the photos; prints the captions. argv: model (the one file or
# Optimum's folder), photos...
PROCESS = {
    "onnxmeta": "import json, sys\n" + GENERATE + """
import onnxmeta_runtime as rt
runtime = rt.Runtime(sys.argv[1], batch_size=1)
print(json.dumps([runtime(f, generate_kwargs=GENERATE)[0]["generated_text"] for f in sys.argv[2:]]))
""",
    "optimum": "import json, sys\n" + GENERATE + "optimum = sys.argv[1]\n" + PEER_SETUP + """
print(json.dumps([peer(f, generate_kwargs=GENERATE)[0]["generated_text"] for f in sys.argv[2:]]))
""",
}

# In process: the Optimum environment builds both, warms each up, then times interleaved passes; the runtime's
# preprocess / forward / postprocess are wrapped to split its time. argv: one file, Optimum's folder, passes, photos...
IN_PROCESS = "import json, sys, time\nsys.path.insert(0, @RUNTIME@)\n" + GENERATE + """
one_file, optimum, passes, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
import onnxmeta_runtime as rt
""" + PEER_SETUP + """
ours = rt.Runtime(one_file, batch_size=1)
contenders = {"onnxmeta": lambda: [ours(f, generate_kwargs=GENERATE)[0]["generated_text"] for f in files],
              "optimum": lambda: [peer(f, generate_kwargs=GENERATE)[0]["generated_text"] for f in files]}
""" + bench_cli.IN_PROCESS_TIMING


def _model(contender: str) -> Path:
    return ONE_FILE if contender == "onnxmeta" else OPTIMUM


def whole_process(files: list[Path], repeats: int) -> dict[str, Any]:
    """Median wall time of a new process that imports, loads and captions the photos, rounds interleaved."""
    runs: dict[str, list[float]] = {name: [] for name in PROCESS}
    captions: dict[str, list[str]] = {}
    for _ in range(repeats):
        for name, code in PROCESS.items():
            cmd, env = bench_cli.contender_command(name, code)
            start = time.perf_counter()
            proc = subprocess.run([*cmd, str(_model(name)), *map(str, files)], env=env, capture_output=True, text=True,
                                  check=False)
            runs[name].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
            captions[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": {n: statistics.median(r) for n, r in runs.items()}, "runs": runs, "captions": captions}


def in_process(files: list[Path], passes: int) -> dict[str, Any]:
    cmd, env = bench_cli.contender_command("optimum", IN_PROCESS.replace("@RUNTIME@", repr(str(ROOT / "runtime"))))
    proc = subprocess.run([*cmd, str(ONE_FILE), str(OPTIMUM), str(passes), *map(str, files)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"in-process run failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _same(ours: list[str], theirs: list[str]) -> str:
    return f"{sum(a == b for a, b in zip(ours, theirs))}/{len(ours)} captions identical"


def run(repeats: int, count: int = 4) -> dict[str, Any]:
    if not ONE_FILE.is_file() or not (OPTIMUM / "config.json").is_file():
        subprocess.run([sys.executable, __file__, "--build"], check=True)
    paths, source = bench_images.photos()
    files = paths[:count]
    sizes = {p.name: _size(p) for p in files}
    tokenizer = (PYTORCH / "TOKENIZER").read_text()
    optimum_files = sorted(p for p in OPTIMUM.iterdir() if ".onnx" in p.name)
    optimum_sizes = {p.name: p.stat().st_size for p in optimum_files}
    print(f"model: ViT-base 224 + GPT-2 small with cross-attention (random weights), tokenizer {tokenizer}\n"
          f"  onnxmeta: {ONE_FILE} ({ONE_FILE.stat().st_size / 2**20:.0f} MB); optimum: {OPTIMUM} "
          f"({', '.join(f'{n} {b / 2**20:.0f} MB' for n, b in optimum_sizes.items())}; ORTModelForVision2Seq loads the "
          f"encoder and the merged decoder)\n"
          f"photos: {', '.join(f'{w}x{h}' for w, h in sizes.values())} ({source}); greedy, {NEW_TOKENS} new tokens "
          f"each, batch 1\n", flush=True)

    whole = whole_process(files, repeats)
    inner = in_process(files, max(repeats, 2))
    per_image = {n: min(s) / len(files) for n, s in inner["seconds"].items()}
    split = min(inner["split"], key=lambda s: sum(s.values()))
    total = sum(split.values())
    shares = {k: v / total for k, v in split.items()}
    ratios = {"whole_process": whole["seconds"]["optimum"] / whole["seconds"]["onnxmeta"],
              "in_process": per_image["optimum"] / per_image["onnxmeta"]}
    agreement = {"in_process": _same(inner["outputs"]["onnxmeta"], inner["outputs"]["optimum"]),
                 "whole_process": _same(whole["captions"]["onnxmeta"], whole["captions"]["optimum"])}
    print(f"{'':<28}{'onnxmeta':>10}{'optimum':>10}{'speed-up':>10}")
    print(f"{'whole process, s (median)':<28}{whole['seconds']['onnxmeta']:>10.2f}{whole['seconds']['optimum']:>10.2f}"
          f"{ratios['whole_process']:>10.2f}")
    print(f"{'in process, ms/photo (best)':<28}{per_image['onnxmeta'] * 1e3:>10.0f}{per_image['optimum'] * 1e3:>10.0f}"
          f"{ratios['in_process']:>10.2f}")
    print(f"\nour in-process split: decode + preprocessing {shares['preprocess']:.0%} / generation "
          f"{shares['forward']:.0%} / decoding the tokens {shares['postprocess']:.0%}")
    print(f"captions: {agreement['in_process']} in process, {agreement['whole_process']} in the whole processes")
    for name, caption in zip(sizes, inner["outputs"]["onnxmeta"]):
        print(f"  {name}: {caption!r}")
    return {"model": {"one_file": str(ONE_FILE), "optimum": str(OPTIMUM), "tokenizer": tokenizer,
                      "one_file_bytes": ONE_FILE.stat().st_size, "optimum_files": optimum_sizes, "new_tokens": NEW_TOKENS},
            "photos": {"files": [str(p) for p in files], "sizes": sizes, "source": source},
            "whole_process": whole, "in_process": inner, "per_image_s": per_image, "split_s": split, "shares": shares,
            "ratios": ratios, "captions_agree": agreement}


def _size(path: Path) -> tuple[int, int]:
    """The photo's upright size (after its EXIF rotation)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
        return upright.width, upright.height


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--photos", type=int, default=4)
    known, rest = parser.parse_known_args(argv)
    return bench_cli.main(__doc__, lambda repeats: run(repeats, known.photos), "results-image-to-text.json", repeats=3,
                          build=build, argv=rest)


if __name__ == "__main__":
    sys.exit(main())
