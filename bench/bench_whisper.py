"""Benchmark Whisper transcription: the runtime on ONE file against transformers' pipeline on Optimum's
ORTModelForSpeechSeq2Seq, the same Optimum export, side by side in one run.

    python bench/bench_whisper.py [--repeats 3] [--json bench/results-whisper.json]

The model: a random-weight Whisper of whisper-tiny's shapes (d_model 384, 4+4 layers, 6 heads, vocabulary 51,865,
80 mel bins, 1500/448 positions) with the real whisper-tiny tokenizer where /work/shared/data is present (else one
built by tests/whisper_models.py), exported by Optimum (automatic-speech-recognition-with-past) and merged into one
file by `python -m authoring embed`; built once under ~/.cache/onnxmeta/bench/whisper/. Optimum and its transformers
4.57 live in their own environment (tests/helpers.optimum_python()), so each contender runs in its own process.

Both transcribe the same 16 kHz clips (LibriSpeech 13.3 s and jfk.flac 11 s where present, synthetic 30 s) with the
same options: greedy search and the pipeline's 5 beams, max_new_tokens 64 (random weights never stop by themselves,
so every call generates the same number of tokens on both sides; the transcripts are compared and reported).

* in process: the model loaded once, one warm-up call, then interleaved rounds; the median seconds per clip, as a
  real-time factor (seconds of compute per second of audio);
* whole process: a new process imports, loads the model and transcribes the LibriSpeech clip (synthetic where
  absent); median wall time.

Target: the runtime's real-time factor at least 1.3x better (Optimum's time / ours >= 1.3) in process.
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
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT), str(ROOT / "tests")]
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
    return {"folder": folder, "export": export, "onnx": export / "model.onnx"}


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
    # transformers 4.57 reads the tokenizer from the copy tests/helpers.for_transformers_4 made for the export
    optimum = OPTIMUM.format(export=str(paths["export"]), folder=str(paths["folder"].parent / "model-transformers4"))
    return {"onnxmeta": ([sys.executable], ours), "optimum": ([str(helpers.optimum_python())], optimum)}


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
    whole = whole_process(paths, clip_path, repeats)
    whole_ratio = whole["optimum"]["median_s"] / whole["onnxmeta"]["median_s"]
    print(f"\nwhole process (import, load, one {whole['clip_seconds']:.1f} s clip, greedy): ours "
          f"{whole['onnxmeta']['median_s']:.2f} s, Optimum {whole['optimum']['median_s']:.2f} s = {whole_ratio:.2f}x")
    ratio = min(r["ratio"] for r in rows.values())
    targets = {"RTF >= 1.3x Optimum's in process (worst clip and mode)": ratio >= 1.3}
    print()
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return {"in_process": rows, "raw": inside, "whole_process": whole,
            "ratios": {"in_process_worst": ratio, "whole_process": whole_ratio}, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(__doc__, run, "results-whisper.json", repeats=3, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
