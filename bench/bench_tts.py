"""Benchmark text-to-speech (VITS): the runtime's real-time factor against transformers' pipeline on the same weights.

    python bench/bench_tts.py [--repeats 3] [--json bench/results-tts.json]

Two random-weight VitsModel models with the character vocabulary of the tests (tests/models/tts_models.py), built
once into ~/.cache/onnxmeta/bench/tts and exported by authoring's export (torch.onnx of authoring/vits.py): "tiny"
(the tests' size) and "mms" (VitsConfig's defaults, MMS-TTS's size: hidden 192, 6 layers, HiFi-GAN from 512
channels, ~36 M parameters, most of them in the decoder). Their configs set the noise scales to 0, so the two sides
compute the same waveform (checked here, within 1e-3).

* in process: each text spoken once per round by each contender (warmed up first, interleaved rounds); the real-time
  factor (RTF) is the best seconds of compute per second of audio (below 1: faster than real time);
* whole process: a new process starts, imports, loads the model, speaks one text and writes a WAV file: the
  runtime's command line (``onnxmeta_runtime.py tts.onnx TEXT --output out.wav``) against a script that runs
  ``pipeline("text-to-audio")`` and writes the WAV with the standard library. Median wall time.

Random weights speak random durations: the audio lengths (printed) are not those of a trained model, the RTF per
second of audio is what compares. Timings from a shared or busy machine are noisy; compare ratios from one run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT), str(ROOT / "tests" / "models")]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "tts"
TEXTS = ["Hello world, this is a test.",
         "The quick brown fox jumps over the lazy dog, and the food was good but slow.",
         "Paris is the capital of France, a city on the river; my name is Wolfgang and I live in Berlin."]
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {},
    "mms": {"hidden_size": 192, "num_hidden_layers": 6, "ffn_dim": 768, "flow_size": 192, "spectrogram_bins": 513,
            "upsample_initial_channel": 512, "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
            "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5]] * 3,
            "duration_predictor_filter_channels": 256, "duration_predictor_num_flows": 4, "prior_encoder_num_flows": 4,
            "prior_encoder_num_wavenet_layers": 4, "posterior_encoder_num_wavenet_layers": 16,
            "depth_separable_num_layers": 3, "initializer_range": 0.02},
}

OURS = "import sys, onnxmeta_runtime as rt; sys.exit(rt._main([sys.argv[1], sys.argv[2], '--output', sys.argv[3]]))"
TRANSFORMERS = """
import sys, wave
import numpy as np
from transformers import pipeline
out = pipeline("text-to-audio", model=sys.argv[1])(sys.argv[2])
with wave.open(sys.argv[3], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(out["sampling_rate"])
    w.writeframes(np.round(np.clip(out["audio"], -1, 1) * 32767).astype("<i2").tobytes())
"""


def built(size: str) -> tuple[Path, Path]:
    """The model folder and its exported file for a size, built once."""
    folder, onnx = CACHE / size / "hf", CACHE / size / "tts.onnx"
    if not onnx.exists():
        import torch
        from transformers import VitsConfig, VitsModel
        from tts_models import tiny_vits

        from authoring.export import export

        tiny_vits(folder, seed=0)
        if SIZES[size]:
            config = VitsConfig.from_pretrained(folder)
            for key, value in SIZES[size].items():
                setattr(config, key, value)
            torch.manual_seed(0)
            VitsModel(config).eval().save_pretrained(folder)
        export(folder, onnx)
    return folder, onnx


def in_process(size: str, rounds: int) -> dict[str, Any]:
    """Per text: seconds of audio, best and median compute seconds and RTF of each contender, their difference."""
    import numpy as np
    from transformers import pipeline

    import onnxmeta_runtime as rt

    folder, onnx = built(size)
    ours, theirs = rt.Runtime(onnx), pipeline("text-to-audio", model=str(folder))
    contenders = {"onnxmeta": ours, "transformers": theirs}
    results = {}
    for text in TEXTS:
        outputs = {c: speak(text) for c, speak in contenders.items()}  # warm-up, and the parity check
        audio = outputs["transformers"]["audio"]
        seconds = audio.size / outputs["transformers"]["sampling_rate"]
        same = outputs["onnxmeta"]["audio"].shape == audio.shape
        difference = float(np.abs(outputs["onnxmeta"]["audio"] - audio).max()) if same else float("inf")
        runs: dict[str, list[float]] = {c: [] for c in contenders}
        for _ in range(rounds):
            for contender, speak in contenders.items():
                start = time.perf_counter()
                speak(text)
                runs[contender].append(time.perf_counter() - start)
        results[text] = {"audio_s": seconds, "max_abs_difference": difference, **{
            c: {"best_s": min(r), "median_s": statistics.median(r), "rtf": min(r) / seconds, "runs": r}
            for c, r in runs.items()}}
    return results


def whole_process(size: str, repeats: int) -> dict[str, Any]:
    """Median wall time of a new process that loads the model, speaks TEXTS[1] and writes a WAV file."""
    folder, onnx = built(size)
    commands = {"onnxmeta": (OURS, str(onnx)), "transformers": (TRANSFORMERS, str(folder))}
    runs: dict[str, list[float]] = {c: [] for c in commands}
    for _ in range(repeats):
        for contender, (code, model) in commands.items():
            command, env = bench_cli.contender_command(contender, code)
            start = time.perf_counter()
            proc = subprocess.run([*command, model, TEXTS[1], str(CACHE / size / f"{contender}.wav")], env=env,
                                  capture_output=True, text=True, check=False)
            runs[contender].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"{contender} failed:\n{proc.stderr[-2000:]}")
    return {c: {"median_s": statistics.median(r), "runs": r} for c, r in runs.items()}


def run(repeats: int) -> dict[str, Any]:
    """Measure, print; the figures and target verdicts as a dict."""
    figures: dict[str, Any] = {}
    for size in SIZES:
        inside = in_process(size, max(repeats, 1))
        whole = whole_process(size, max(repeats, 1))
        print(f"\n{size}: in process{'audio s':>22}{'ours RTF':>10}{'theirs RTF':>12}{'ratio':>8}{'max diff':>10}")
        for text, r in inside.items():
            r["ratio"] = r["transformers"]["best_s"] / r["onnxmeta"]["best_s"]
            print(f"  {text[:32]:<34}{r['audio_s']:>8.2f}{r['onnxmeta']['rtf']:>10.4f}{r['transformers']['rtf']:>12.4f}"
                  f"{r['ratio']:>7.2f}x{r['max_abs_difference']:>10.1e}")
        ratio = whole["transformers"]["median_s"] / whole["onnxmeta"]["median_s"]
        print(f"  whole process (load, speak, write a WAV): ours {whole['onnxmeta']['median_s']:.2f} s, transformers "
              f"{whole['transformers']['median_s']:.2f} s = {ratio:.1f}x")
        figures[size] = {"in_process": inside, "whole_process": whole, "whole_process_ratio": ratio}
    targets = {
        "waveforms equal within 1e-3": all(r["max_abs_difference"] <= 1e-3 for f in figures.values()
                                           for r in f["in_process"].values()),
        "faster than real time (RTF < 1) in process, mms size": all(
            r["onnxmeta"]["rtf"] < 1 for r in figures["mms"]["in_process"].values()),
    }
    print()
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return {**figures, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(__doc__, run, "results-tts.json", repeats=3, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
