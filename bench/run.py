"""The whole benchmark suite in one command, every figure measured on this machine in this run.

    python bench/run.py [--repeats 3] [--size-mb 400] [--json bench/results.json] [--all | --parts NAME ...]

1. read_metadata vs onnx.load on a ~400 MB model (time, peak RSS)       bench_metadata.py
2. streaming embed (new file, in place) vs onnx.load+save and a copy    bench_metadata.py
3. cold start of a Runtime vs Optimum + transformers pipeline           bench_runtime.py
4. throughput on 256 texts vs Optimum (batch 32, 1) and a hand loop     bench_runtime.py
5. the embed command as a whole process vs an onnx.load+save process    bench_process.py
6. optimized (O1-O3) and quantized (int8, int4, fp16) exports vs plain   bench_export.py
   (texts/s at batch 8 and 1, file size, max score difference)
7. T5 (t5-small-sized) as one file: tokens/s vs Optimum (batch 1, 8),   bench_seq2seq.py --quick
   whole process vs Optimum, per token vs the separate files

1-4 and 6 time the operation inside a process whose imports are done (in-process figures); 5 times what a user
waits for: process start, imports and work (whole-process figures); 7 gives both, each labelled.

With --all (or --parts NAME ...), each modality's own bench script runs after 1-7, as its own process,
printing its table (in-process and whole-process figures, each labelled) and writing its JSON:

8. generation: tokens/s vs onnxruntime-genai and Optimum (GPT-2)        bench_generation.py
9. images: preprocessing vs transformers, end to end vs Optimum         bench_images.py
10. audio: feature extraction vs transformers, end to end               bench_audio.py
11. Whisper transcription, real-time factor vs Optimum's pipeline and     bench_whisper.py
    faster-whisper's int8
12. int4 LLM one files vs onnxruntime-genai's int4, Optimum, llama.cpp    bench_quantize.py
13. the OpenAI-compatible server: embeddings req/s batched vs not,        bench_serve.py
    streaming chat tokens/s vs Runtime.stream, cold start to /health
14. text to speech (VITS, tiny and MMS-TTS-sized): real-time factor vs    bench_tts.py
    transformers' text-to-audio pipeline, whole process with a WAV
15. vision tasks per photo (segmentation, super-resolution vs Optimum;     bench_vision.py
    detection, depth vs PyTorch): whole process, in process, numpy share
16. constrained generation: schema compile time, masking per token on a   bench_constraints.py
    49k vocabulary, against the same generation unconstrained
17. image captioning (ViT-base + GPT-2 small): ms per photo vs Optimum's   bench_image_to_text.py
    ORTModelForVision2Seq in 4.57's pipeline, whole process, in process

Builds the models it needs offline on first use (cached under ~/.cache/onnxmeta/bench/; the T5 export takes a few
minutes the first time); about 10 minutes on 2 cores. Prints each part, then one table of ratios and targets; writes
everything to --json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_export
import bench_metadata
import bench_process
import bench_runtime
import bench_seq2seq

# the modality parts: each script measures and prints its own table and writes its own JSON
MODALITIES = {
    "generation": "bench_generation.py",
    "images": "bench_images.py",
    "audio": "bench_audio.py",
    "whisper": "bench_whisper.py",
    "quantize": "bench_quantize.py",
    "serve": "bench_serve.py",
    "tts": "bench_tts.py",
    "vision": "bench_vision.py",
    "constraints": "bench_constraints.py",
    "image-to-text": "bench_image_to_text.py",
}


def run_modalities(names: list[str]) -> dict[str, int]:
    """Each named modality's bench script as its own process; their exit codes."""
    codes = {}
    for name in names:
        print(f"\n== {name}: {MODALITIES[name]} ==", flush=True)
        codes[name] = subprocess.run([sys.executable, str(Path(__file__).with_name(MODALITIES[name]))]).returncode
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--all", action="store_true", help="also every modality part (8-17)")
    parser.add_argument("--parts", nargs="+", choices=list(MODALITIES), default=[],
                        help="modality parts to run after 1-7")
    parser.add_argument("--only-parts", action="store_true", help="skip 1-7")
    args = parser.parse_args(argv)
    parts = list(MODALITIES) if args.all else args.parts
    if args.only_parts:
        return max(run_modalities(parts).values(), default=0)
    start = time.perf_counter()
    print("== 1-2: metadata I/O ==")
    io = bench_metadata.run(args.size_mb, args.repeats)
    print("\n== 3-4: runtime ==")
    rt = bench_runtime.run(args.repeats)
    print("\n== 5: the embed command, whole process ==")
    proc = bench_process.run(max(args.repeats, 5))
    print("\n== 6: optimized and quantized exports ==")
    exported = bench_export.run(args.repeats)
    print("\n== 7: encoder-decoder (T5) ==")
    s2s = bench_seq2seq.run(passes=3, repeats=2, trials=2)
    r, q, p, t = io["ratios"], rt["ratios"], proc["ratios"], s2s["ratios"]
    x, variants = exported["ratios"], exported["variants"]
    rows = [
        ("1 read_metadata speed vs onnx.load", f"{r['read_speedup_vs_onnx_load']:.0f}x faster", ">= 100x",
         r["read_speedup_vs_onnx_load"] >= 100),
        ("1 read_metadata RSS beyond imports", f"{r['read_rss_delta_mb']:.1f} MB", "< 25 MB", r["read_rss_delta_mb"] < 25),
        ("2 embed to a new file vs copyfile", f"{r['embed_time_vs_copyfile']:.2f}x", "<= 1.5x", r["embed_time_vs_copyfile"] <= 1.5),
        ("2 embed to a new file vs copy+fsync", f"{r['embed_time_vs_copyfile_fsync']:.2f}x", "(durable peer)", None),
        ("2 embed in place vs copyfile", f"{r['embed_inplace_time_vs_copyfile']:.2f}x", "<= 1.5x",
         r["embed_inplace_time_vs_copyfile"] <= 1.5),
        ("2 embed speed vs onnx.load+save", f"{r['embed_speedup_vs_onnx_save']:.1f}x faster", "", None),
        ("2 embed RSS beyond imports", f"{r['embed_rss_delta_mb']:.1f} MB", "< 100 MB", r["embed_rss_delta_mb"] < 100),
        ("3 cold start vs Optimum", f"{q['cold_start_vs_optimum']:.2f}x", "<= 0.3x", q["cold_start_vs_optimum"] <= 0.3),
        ("4 throughput vs Optimum, batch 32", f"{q['throughput_vs_optimum_bs32']:.2f}x", ">= 1.5x",
         q["throughput_vs_optimum_bs32"] >= 1.5),
        ("4 throughput vs Optimum, batch 1", f"{q['throughput_vs_optimum_bs1']:.2f}x", ">= 1.5x",
         q["throughput_vs_optimum_bs1"] >= 1.5),
        ("4 throughput vs hand loop, batch 32", f"{q['throughput_vs_limit_bs32']:.2f}x", ">= 0.9x",
         q["throughput_vs_limit_bs32"] >= 0.9),
        ("4 throughput vs hand loop, batch 1", f"{q['throughput_vs_limit_bs1']:.2f}x", ">= 0.9x",
         q["throughput_vs_limit_bs1"] >= 0.9),
        ("5 embed command vs onnx load+save proc", f"{p['embed_process_vs_onnx_process']:.2f}x", "<= 0.5x",
         p["embed_process_vs_onnx_process"] <= 0.5),
        ("5 embed command peak RSS", f"{p['embed_process_rss_mb']:.0f} MB", "< 150 MB", p["embed_process_rss_mb"] < 150),
        *[(f"6 {name} vs plain, batch 8 / 1", f"{x[name]['speed_vs_plain_bs8']:.2f}x / {x[name]['speed_vs_plain_bs1']:.2f}x",
           "", None) for name in ("O2", "O3", "int8", "O2+int8", "int4", "fp16")],
        *[(f"6 {name} size vs plain; max diff", f"{x[name]['size_vs_plain']:.2f}x; "
           f"{variants[name]['max_score_difference']:.0e}", "", None) for name in ("int8", "O2+int8", "int4", "fp16")],
        ("7 T5 tokens/s vs Optimum, batch 1", f"{t['bs1_vs_optimum']:.2f}x", ">= 1.3x", t["bs1_vs_optimum"] >= 1.3),
        ("7 T5 tokens/s vs Optimum, batch 8", f"{t['bs8_vs_optimum']:.2f}x", ">= 1.3x", t["bs8_vs_optimum"] >= 1.3),
        ("7 T5 whole process vs Optimum", f"{t['process_vs_optimum']:.2f}x", "(time)", None),
        ("7 T5 one file vs separate, batch 1", f"{t['one_file_vs_separate_bs1']:.3f}x", "<= 1.05x",
         t["one_file_vs_separate_bs1"] <= 1.05),
        ("7 T5 one file vs separate, batch 8", f"{t['one_file_vs_separate_bs8']:.3f}x", "<= 1.05x",
         t["one_file_vs_separate_bs8"] <= 1.05),
    ]
    print(f"\n== summary ({time.perf_counter() - start:.0f} s) ==")
    print(f"{'measure':<38}{'measured':>14}{'target':>16}  verdict")
    for name, value, target, ok in rows:
        print(f"{name:<38}{value:>14}{target:>16}  {'' if ok is None else 'PASS' if ok else 'MISS'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"metadata_io": io, "runtime": rt, "embed_process": proc, "export": exported,
                                     "seq2seq": s2s,
                                     "seconds": time.perf_counter() - start}, indent=2))
    print(f"\nwrote {args.json}")
    return max(run_modalities(parts).values(), default=0)


if __name__ == "__main__":
    sys.exit(main())
