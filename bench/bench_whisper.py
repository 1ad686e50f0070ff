"""Benchmark Whisper transcription: the runtime on ONE file (float32, and `onnxmeta export --quantize int8`) against
transformers' pipeline on Optimum's ORTModelForSpeechSeq2Seq (the same Optimum export) and faster-whisper's
CTranslate2 int8 (the same weights converted), side by side in one run.

    python bench/bench_whisper.py [--repeats 3] [--json bench/results-whisper.json]

The model: a random-weight Whisper of whisper-tiny's shapes (d_model 384, 4+4 layers, 6 heads, vocabulary 51,865,
80 mel bins, 1500/448 positions) with the real whisper-tiny tokenizer where /work/shared/data is present (else one
built by tests/models/whisper_models.py), exported by Optimum (automatic-speech-recognition-with-past) and merged into one
file by `python -m authoring embed`; built once under ~/.cache/onnxmeta/bench/whisper/. Optimum and its transformers
4.57 live in their own environment (tests/models/helpers.optimum_python()), so each contender runs in its own process.

Both transcribe the same 16 kHz clips (LibriSpeech 13.3 s and jfk.flac 11 s where present, synthetic 30 s) with the
same options: greedy search and the pipeline's 5 beams, max_new_tokens 64 (random weights never stop by themselves,
so every call generates the same number of tokens on both sides; the transcripts are compared and reported).

* in process: the model loaded once, one warm-up call, then interleaved rounds; the median seconds per clip, as a
  real-time factor (seconds of compute per second of audio);
* whole process: a new process imports, loads the model and transcribes the LibriSpeech clip (synthetic where
  absent); median wall time.

faster-whisper (~/.cache/onnxmeta/venv-fasterwhisper, made on first use: faster-whisper, and transformers and torch
for ct2-transformers-converter) transcribes the same clips with beam_size 1 or 5, max_new_tokens 64, language "en",
no timestamps, no VAD, the previous text not carried over, cpu_threads = the cores (intra-op threads of the runtime).

Targets: the runtime's real-time factor at least 1.3x better than Optimum's in process (float32); the int8 file at
most 0.35x the float32 one; its transcription at least as fast as faster-whisper's int8 (greedy). With random
weights the int8 transcripts may differ from float32's; their word error rate against float32's is reported.
Timings from a shared or busy machine are noisy; compare ratios from one run.
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
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT), str(ROOT / "tests" / "models")]
SHARED = Path(os.environ.get("ONNXMETA_SHARED_DATA", "/work/shared/data"))
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "whisper"
OPTIONS = {"greedy": {"num_beams": 1, "max_new_tokens": 64}, "5 beams": {"num_beams": 5, "max_new_tokens": 64}}

# One contender in its own process: load, warm up, time interleaved rounds over the clips; JSON on stdout.
OURS = """
import json, sys, time
sys.path.insert(0, {runtime!r})
import numpy as np
import onnxmeta_runtime as rt
model = rt.Runtime({onnx!r})
def transcribe(audio, options):
    return model(audio, generate_kwargs=options)["text"]
"""
OPTIMUM = """
import json, sys, time
import numpy as np
from optimum.onnxruntime import ORTModelForSpeechSeq2Seq
from transformers import AutoTokenizer, WhisperFeatureExtractor, pipeline
ort_model = ORTModelForSpeechSeq2Seq.from_pretrained({export!r})
pipe = pipeline("automatic-speech-recognition", model=ort_model, tokenizer=AutoTokenizer.from_pretrained({folder!r}),
                feature_extractor=WhisperFeatureExtractor.from_pretrained({folder!r}))
def transcribe(audio, options):
    return pipe(audio.copy(), generate_kwargs=dict(options))["text"]
"""
FASTER_WHISPER = """
import json, sys, time
import numpy as np
from faster_whisper import WhisperModel
model = WhisperModel({ct2!r}, device="cpu", compute_type="int8", cpu_threads={threads})
def transcribe(audio, options):
    segments, _ = model.transcribe(audio, beam_size=options["num_beams"], max_new_tokens=options["max_new_tokens"],
                                   language="en", without_timestamps=True, vad_filter=False,
                                   condition_on_previous_text=False, temperature=0.0)
    return "".join(segment.text for segment in segments)
"""
FASTER_WHISPER_VENV = Path.home() / ".cache" / "onnxmeta" / "venv-fasterwhisper"
EXPORT = """
import sys
from authoring.export import export
export(sys.argv[1], sys.argv[2], quantize=sys.argv[3] or None)
"""
TIMING = """
clips = dict(np.load({clips!r}))
options = json.loads({options!r})
rounds = int(sys.argv[1])
texts, runs = {{}}, {{}}
for mode, opts in options.items():
    for name, audio in clips.items():
        texts[f"{{mode}}|{{name}}"] = transcribe(audio, opts)  # warm-up
for _ in range(rounds):
    for mode, opts in options.items():
        for name, audio in clips.items():
            start = time.perf_counter()
            transcribe(audio, opts)
            runs.setdefault(f"{{mode}}|{{name}}", []).append(time.perf_counter() - start)
print(json.dumps({{"texts": texts, "runs": runs}}))
"""
ONCE = """
clip = np.load({clip!r})
transcribe(clip, json.loads({options!r}))
"""


def build() -> dict[str, Path]:
    """The bench model folder, its Optimum export and the one file, built once."""
    import whisper_models

    folder, export = CACHE / "model", CACHE / "model-onnx"
    if not (export / "model.onnx").exists():
        import shutil

        shutil.rmtree(CACHE, ignore_errors=True)
        CACHE.mkdir(parents=True)
        whisper_models.build(folder, multilingual=True, size="bench",
                             real_tokenizer=(SHARED / "openai__whisper-tiny").exists())
        whisper_models.export([folder])
        # Optimum loads the export folder: keep its separate files, and write the one file beside them
        shutil.copytree(export, CACHE / "one")
        whisper_models.one_file(CACHE / "one", folder)
        shutil.move(str(CACHE / "one" / "model.onnx"), str(export / "model.onnx"))
        shutil.rmtree(CACHE / "one")
    int8, fp32 = CACHE / "onnxmeta-int8.onnx", CACHE / "onnxmeta-fp32.onnx"
    for path, mode in ((int8, "int8"), (fp32, "")):  # onnxmeta export [--quantize int8], in Optimum's environment
        if not path.exists():
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
            subprocess.run([str(bench_cli.optimum_python()), "-c", EXPORT, str(folder.parent / "model-transformers4"),
                            str(path), mode], check=True, capture_output=True, env=env)
    paths = {"folder": folder, "export": export, "onnx": export / "model.onnx", "int8": int8, "fp32": fp32}
    python = faster_whisper_python()
    ct2 = CACHE / "ct2-int8"
    if python is not None and not (ct2 / "model.bin").exists():
        converter = python.parent / "ct2-transformers-converter"
        subprocess.run([str(converter), "--model", str(folder), "--output_dir", str(ct2), "--quantization", "int8",
                        "--copy_files", "tokenizer.json", "preprocessor_config.json", "--force"], check=True, capture_output=True)
    if python is not None:
        paths["ct2"] = ct2
    return paths


def faster_whisper_python() -> Path | None:
    """The faster-whisper environment (its converter needs transformers and torch), made on first use."""
    python = FASTER_WHISPER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FASTER_WHISPER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "faster-whisper", "transformers==5.25.*", "torch==2.13.0"],
                       check=False)
    ok = subprocess.run([str(python), "-c", "import faster_whisper"], capture_output=True, check=False).returncode == 0
    return python if ok else None


def clips() -> Path:
    """The clips as one .npz (16 kHz float32), written once."""
    import numpy as np
    from audio_models import signal

    import onnxmeta_runtime as rt

    path = CACHE / "clips.npz"
    if not path.exists():
        out = {}
        if (SHARED / "_assets").exists():
            out["LibriSpeech 13.3 s"] = rt.load_audio(SHARED / "_assets" / "1272-141231-0002.wav", 16000)
            out["jfk 11 s"] = rt.load_audio(SHARED / "_assets" / "jfk.flac", 16000)
        out["synthetic 30 s"] = signal(30.0, seed=5)
        np.savez(path, **out)
    return path


def contenders(paths: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """(command, setup code) per contender."""
    import helpers

    ours = OURS.format(runtime=str(ROOT / "runtime"), onnx=str(paths["onnx"]))
    int8 = OURS.format(runtime=str(ROOT / "runtime"), onnx=str(paths["int8"]))
    # transformers 4.57 reads the tokenizer from the copy tests/models/helpers.for_transformers_4 made for the export
    optimum = OPTIMUM.format(export=str(paths["export"]), folder=str(paths["folder"].parent / "model-transformers4"))
    out = {"onnxmeta": ([sys.executable], ours), "onnxmeta-int8": ([sys.executable], int8),
           "optimum": ([str(helpers.optimum_python())], optimum)}
    if "ct2" in paths:
        code = FASTER_WHISPER.format(ct2=str(paths["ct2"]), threads=os.cpu_count() or 1)
        out["faster-whisper-int8"] = ([str(FASTER_WHISPER_VENV / "bin" / "python")], code)
    return out


def _run(command: list[str], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([*command, "-c", code, *args], capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"},
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{command[0]} failed:\n{proc.stderr[-3000:]}")
    return proc


def in_process(paths: dict[str, Path], clip_path: Path, rounds: int) -> dict[str, Any]:
    """Per contender: the texts and the seconds of each round per mode and clip."""
    timing = TIMING.format(clips=str(clip_path), options=json.dumps(OPTIONS))
    return {name: json.loads(_run(command, setup + timing, str(rounds)).stdout.strip().splitlines()[-1])
            for name, (command, setup) in contenders(paths).items()}


def whole_process(paths: dict[str, Path], clip_path: Path, repeats: int) -> dict[str, Any]:
    """Median wall time of a new process that imports, loads the model and transcribes one clip (greedy)."""
    import numpy as np

    with np.load(clip_path) as loaded:
        clip = loaded[loaded.files[0]]
    one = CACHE / "one-clip.npy"
    np.save(one, clip)
    once = ONCE.format(clip=str(one), options=json.dumps(OPTIONS["greedy"]))
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, (command, setup) in contenders(paths).items():
            start = time.perf_counter()
            _run(command, setup + once)
            runs.setdefault(name, []).append(time.perf_counter() - start)
    return {"clip_seconds": len(clip) / 16000, **{n: {"median_s": statistics.median(r), "runs": r} for n, r in runs.items()}}


def run(repeats: int) -> dict[str, Any]:
    """Build, measure, print; the figures and the target verdict as a dict."""
    import numpy as np

    paths = build()
    clip_path = clips()
    with np.load(clip_path) as loaded:
        seconds = {name: len(loaded[name]) / 16000 for name in loaded.files}
    inside = in_process(paths, clip_path, max(repeats, 3))
    print(f"{'Whisper-tiny-sized, in process':<36}{'ours RTF':>10}{'Optimum RTF':>13}{'ratio':>8}  same text")
    rows = {}
    for key in inside["onnxmeta"]["runs"]:
        mode, name = key.split("|")
        ours = statistics.median(inside["onnxmeta"]["runs"][key]) / seconds[name]
        theirs = statistics.median(inside["optimum"]["runs"][key]) / seconds[name]
        same = inside["onnxmeta"]["texts"][key] == inside["optimum"]["texts"][key]
        rows[key] = {"ours_rtf": ours, "optimum_rtf": theirs, "ratio": theirs / ours, "same_text": same}
        print(f"{mode + ', ' + name:<36}{ours:>10.4f}{theirs:>13.4f}{theirs / ours:>7.2f}x  {same}")
    int8_rows = _int8_rows(inside, seconds)
    whole = whole_process(paths, clip_path, repeats)
    whole_ratio = whole["optimum"]["median_s"] / whole["onnxmeta"]["median_s"]
    print(f"\nwhole process (import, load, one {whole['clip_seconds']:.1f} s clip, greedy): "
          + ", ".join(f"{name} {whole[name]['median_s']:.2f} s" for name in contenders(paths))
          + f"; Optimum / ours {whole_ratio:.2f}x")
    ratio = min(r["ratio"] for r in rows.values())
    size = paths["int8"].stat().st_size / paths["fp32"].stat().st_size
    weights = sum(p.stat().st_size for p in paths["folder"].glob("*.safetensors"))
    print(f"int8 one file {paths['int8'].stat().st_size / 1e6:.1f} MB = {size:.2f}x the float32 one of `onnxmeta export` "
          f"({paths['fp32'].stat().st_size / 1e6:.1f} MB, {paths['fp32'].stat().st_size / weights:.2f}x the safetensors; "
          f"`embed`'s merge of Optimum's files, its tied projection twice: {paths['onnx'].stat().st_size / 1e6:.1f} MB)")
    targets = {"RTF >= 1.3x Optimum's in process (worst clip and mode)": ratio >= 1.3, "int8 file <= 0.35x float32": size <= 0.35}
    if int8_rows:
        faster = min(r["vs_faster_whisper"] for k, r in int8_rows.items() if k.startswith("greedy"))
        targets["int8 greedy >= 1.0x faster-whisper int8 (worst clip)"] = faster >= 1.0
        if "faster-whisper-int8" in whole:
            whole["int8_vs_faster_whisper"] = whole["faster-whisper-int8"]["median_s"] / whole["onnxmeta-int8"]["median_s"]
    print()
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return {"in_process": rows, "int8": int8_rows, "raw": inside, "whole_process": whole, "int8_size_vs_fp32": size,
            "sizes_mb": {name: paths[name].stat().st_size / 1e6 for name in ("int8", "fp32", "onnx")},
            "ratios": {"in_process_worst": ratio, "whole_process": whole_ratio}, "targets": targets}


def _int8_rows(inside: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The int8 file per mode and clip: its RTF, against float32's and faster-whisper int8's, and its transcript's
    word error rate against float32's."""
    from authoring.quality import word_errors

    rows = {}
    print(f"\n{'int8, in process':<36}{'RTF':>8}{'vs fp32':>9}{'vs f-w int8':>13}{'WER vs fp32':>13}")
    for key, runs in inside["onnxmeta-int8"]["runs"].items():
        name = key.split("|")[1]
        rtf = statistics.median(runs) / seconds[name]
        fp32 = statistics.median(inside["onnxmeta"]["runs"][key]) / seconds[name]
        reference = inside["onnxmeta"]["texts"][key]
        wer = word_errors(reference, inside["onnxmeta-int8"]["texts"][key]) / max(len(reference.split()), 1)
        row = {"rtf": rtf, "vs_fp32": fp32 / rtf, "word_error_rate_vs_fp32": wer}
        if "faster-whisper-int8" in inside:
            row["vs_faster_whisper"] = statistics.median(inside["faster-whisper-int8"]["runs"][key]) / seconds[name] / rtf
        rows[key] = row
        versus = f"{row['vs_faster_whisper']:.2f}x" if "vs_faster_whisper" in row else "-"
        print(f"{key.replace('|', ', '):<36}{rtf:>8.4f}{row['vs_fp32']:>8.2f}x{versus:>13}{wer:>12.1%}")
    return rows


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(__doc__, run, "results-whisper.json", repeats=3, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
