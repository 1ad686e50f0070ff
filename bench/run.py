"""The whole benchmark suite in one command, every figure measured on this machine in this run.

    python bench/run.py [--repeats 3] [--size-mb 400] [--json bench/results.json]

1. read_metadata vs onnx.load on a ~400 MB model (time, peak RSS)       bench_metadata.py
2. streaming embed (new file, in place) vs onnx.load+save and a copy    bench_metadata.py
3. cold start of a Runtime vs Optimum + transformers pipeline           bench_runtime.py
4. throughput on 256 texts vs Optimum (batch 32, 1) and a hand loop     bench_runtime.py
5. Whisper transcription real-time factor vs Optimum's pipeline         bench_whisper.py

Builds the models it needs offline on first use (cached under ~/.cache/onnxmeta/bench/); about 5
minutes on 2 cores. Prints each part, then one table of ratios and targets; writes everything to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_metadata
import bench_runtime
import bench_whisper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=400)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print("== 1-2: metadata I/O ==")
    io = bench_metadata.run(args.size_mb, args.repeats)
    print("\n== 3-4: runtime ==")
    rt = bench_runtime.run(args.repeats)
    print("\n== 5: Whisper ==")
    whisper = bench_whisper.run(args.repeats)
    r, q, w = io["ratios"], rt["ratios"], whisper["ratios"]
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
        ("5 Whisper RTF vs Optimum (worst case)", f"{w['in_process_worst']:.2f}x", ">= 1.3x", w["in_process_worst"] >= 1.3),
        ("5 Whisper whole process vs Optimum", f"{w['whole_process']:.2f}x", "", None),
    ]
    print(f"\n== summary ({time.perf_counter() - start:.0f} s) ==")
    print(f"{'measure':<38}{'measured':>14}{'target':>16}  verdict")
    for name, value, target, ok in rows:
        print(f"{name:<38}{value:>14}{target:>16}  {'' if ok is None else 'PASS' if ok else 'MISS'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"metadata_io": io, "runtime": rt, "whisper": whisper, "seconds": time.perf_counter() - start}, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
