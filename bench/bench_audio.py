"""Benchmark the runtime's Whisper log-mel features against transformers' WhisperFeatureExtractor.

    python bench/bench_audio.py [--repeats 5] [--json bench/results-audio.json]

Both compute 80-bin log-mel features of 16 kHz audio padded or cut to 30 s (input_features (1, 80, 3000)),
equal within 1e-4 (checked here). transformers' WhisperFeatureExtractor takes torch's STFT when torch is
installed (as in this environment; the run says which) and a per-frame numpy loop otherwise; the runtime's is
numpy alone.

* in process: one clip per call, each contender warmed up, interleaved rounds, best and median: 30 s of
  synthetic audio, and the real speech files of /work/shared/data/_assets (LibriSpeech 13.3 s WAV; jfk.flac, 11 s
  at 44.1 kHz, resampled to 16 kHz beforehand, so that only feature extraction is timed);
* whole process: a new process starts, imports, reads N WAV files (16 kHz) and computes their features; the
  runtime reads them with load_audio (standard library), transformers' extractor is given what soundfile reads
  (its pipelines read files through ffmpeg, which this machine lacks). Median wall time of interleaved runs.

Target: the runtime at least as fast as transformers (ratio = transformers' time / ours >= 1.0) in process.
Timings from a shared or busy machine are noisy; compare ratios from one run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "runtime"))
ASSETS = Path("/work/shared/data/_assets")
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "audio"
FILES = 8

OURS = """
import sys
sys.path.insert(0, {runtime!r})
import onnxmeta_runtime as rt
extractor = rt.WhisperFeatureExtractor({{}})
for path in sys.argv[1:]:
    extractor([rt.load_audio(path, 16000)])
"""
TRANSFORMERS = """
import sys
import soundfile
from transformers import WhisperFeatureExtractor
extractor = WhisperFeatureExtractor()
for path in sys.argv[1:]:
    audio, rate = soundfile.read(path, dtype="float32")
    extractor(audio, sampling_rate=rate, return_tensors="np")
"""


def synthetic(seconds: float, seed: int) -> Any:
    """Speech-like audio: drifting tones, bursts and noise, float32."""
    import numpy as np

    rng = np.random.RandomState(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    out = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(120, 3000) * t) for _ in range(4))
    out = out * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(1, 4) * t) ** 2) + 0.02 * rng.randn(len(t))
    return out.astype(np.float32)


def clips() -> dict[str, Any]:
    """The clips timed in process, by name."""
    import onnxmeta_runtime as rt

    out = {"synthetic 30 s": synthetic(30.0, 0)}
    if ASSETS.exists():
        out["LibriSpeech 13.3 s"] = rt.load_audio(ASSETS / "1272-141231-0002.wav", 16000)
        out["jfk 11 s"] = rt.load_audio(ASSETS / "jfk.flac", 16000)
    return out


def wav_files() -> list[Path]:
    """FILES 16 kHz PCM WAV files (the real ones where present, then synthetic 5-30 s), written once."""
    import numpy as np

    CACHE.mkdir(parents=True, exist_ok=True)
    audios = list(clips().values())[1:] + [synthetic(5.0 + 25.0 * i / FILES, i + 1) for i in range(FILES)]
    paths = []
    for i, audio in enumerate(audios[:FILES]):
        path = CACHE / f"clip{i}.wav"
        if not path.exists():
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes(np.round(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        paths.append(path)
    return paths


def in_process(rounds: int) -> dict[str, Any]:
    """Per clip: best and median seconds of one feature extraction, ours and transformers'."""
    import numpy as np
    from transformers import WhisperFeatureExtractor

    import onnxmeta_runtime as rt

    ours, theirs = rt.WhisperFeatureExtractor({}), WhisperFeatureExtractor()
    contenders = {
        "onnxmeta": lambda audio: ours([audio])["input_features"],
        "transformers": lambda audio: theirs(audio, sampling_rate=16000, return_tensors="np")["input_features"],
    }
    results = {}
    for name, audio in clips().items():
        outputs = {c: f(audio) for c, f in contenders.items()}  # warm-up, and the parity check
        difference = float(np.abs(outputs["onnxmeta"] - outputs["transformers"]).max())
        runs: dict[str, list[float]] = {c: [] for c in contenders}
        for _ in range(rounds):
            for contender, extract in contenders.items():
                start = time.perf_counter()
                extract(audio)
                runs[contender].append(time.perf_counter() - start)
        results[name] = {"max_abs_difference": difference,
                         **{c: {"best_s": min(r), "median_s": statistics.median(r), "runs": r} for c, r in runs.items()}}
    return results


def whole_process(paths: list[Path], repeats: int) -> dict[str, Any]:
    """Median wall time of a new process that imports, reads the files and extracts their features."""
    codes = {"onnxmeta": OURS.format(runtime=str(ROOT / "runtime")), "transformers": TRANSFORMERS}
    runs: dict[str, list[float]] = {c: [] for c in codes}
    for _ in range(repeats):
        for contender, code in codes.items():
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, check=False)
            runs[contender].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(f"{contender} failed:\n{proc.stderr[-2000:]}")
    return {c: {"median_s": statistics.median(r), "runs": r} for c, r in runs.items()}


def run(repeats: int) -> dict[str, Any]:
    """Measure, print; the figures and target verdicts as a dict."""
    from transformers.utils import is_torch_available

    path = "torch.stft" if is_torch_available() else "numpy loop"
    inside = in_process(max(repeats, 5))
    print(f"{'Whisper features, in process':<30}{'ours best s':>12}{'theirs best s':>14}{'ratio':>8}{'max diff':>10}"
          f"   (transformers' path: {path})")
    for name, r in inside.items():
        ratio = r["transformers"]["best_s"] / r["onnxmeta"]["best_s"]
        r["ratio"] = ratio
        print(f"{name:<30}{r['onnxmeta']['best_s']:>12.4f}{r['transformers']['best_s']:>14.4f}{ratio:>7.2f}x"
              f"{r['max_abs_difference']:>10.1e}")
    paths = wav_files()
    whole = whole_process(paths, repeats)
    whole_ratio = whole["transformers"]["median_s"] / whole["onnxmeta"]["median_s"]
    print(f"\nwhole process, {len(paths)} WAV files ({sum(p.stat().st_size for p in paths) / 2**20:.1f} MB): ours "
          f"{whole['onnxmeta']['median_s']:.2f} s, transformers {whole['transformers']['median_s']:.2f} s = {whole_ratio:.1f}x")
    ratios = {"in_process_30s": inside["synthetic 30 s"]["ratio"],
              "in_process_real_files": min((r["ratio"] for n, r in inside.items() if n != "synthetic 30 s"), default=None),
              "whole_process": whole_ratio}
    targets = {"features >= 1.0x transformers' speed in process": min(r["ratio"] for r in inside.values()) >= 1.0,
               "features equal within 1e-4": all(r["max_abs_difference"] <= 1e-4 for r in inside.values())}
    print()
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return {"transformers_path": path, "in_process": inside, "whole_process": whole, "files": [str(p) for p in paths],
            "ratios": ratios, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(__doc__, run, "results-audio.json", repeats=5, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
