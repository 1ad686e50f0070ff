"""Benchmark optimized and quantized exports (onnxmeta export --optimize / --quantize) against the plain export.

    python bench/bench_export.py [--repeats 5] [--json bench/results-export.json]

Builds (once, cached under ~/.cache/onnxmeta/bench/bert-small-export/) a random-weight BERT classifier of a
realistic small size (hidden 256, 4 layers, 4 heads, intermediate 1024; the bert-base-uncased tokenizer from
/work/shared/data when present, else a WordPiece tokenizer trained here on the bench's words) and exports it
with `authoring.export.export` (torch.onnx in this environment) eight times: plain, --optimize O1, O2, O3,
--quantize int8 (dynamic, per channel, for an encoder), O2 + int8, int4 and fp16. For each file it prints and writes
to --json:

* the file's size (metadata included) and its ratio to the plain file;
* texts/s through the runtime (`Runtime(path, batch_size=b)`) on 256 mixed-length texts (2-80 words) at
  batch 8, and on the first 64 at batch 1; every variant warmed up, then timed in interleaved passes (best
  pass; the median is kept in the JSON);
* the accuracy cost: the largest difference of any label's score against the plain file over the 256
  texts (top_k=None), how many top labels changed, and the quality card the export embedded (its probe inputs).

The weights are random (initializer_range 0.02, as a freshly initialized BERT): scores sit near 0.5, so the
score differences are those of this model, not of a fine-tuned one. On a machine shared with other work the
absolute figures move from run to run; the ratios to the plain file, measured interleaved, are the ones to read.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]
sys.path.insert(0, str(Path(__file__).parent))

from bench_runtime import texts  # noqa: E402 - the same 256 texts as the runtime bench

CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "bert-small-export"
BERT = Path(os.environ.get("ONNXMETA_SHARED_DATA", "/work/shared/data")) / "bert-base-uncased"
# name: export()'s options
VARIANTS: dict[str, dict[str, str]] = {
    "plain": {},
    "O1": {"optimize": "O1"},
    "O2": {"optimize": "O2"},
    "O3": {"optimize": "O3"},
    "int8": {"quantize": "int8"},
    "O2+int8": {"optimize": "O2", "quantize": "int8"},
    "int4": {"quantize": "int4"},
    "fp16": {"quantize": "fp16"},
}
BATCH_1_TEXTS = 64


def _tokenizer(folder: Path) -> str:
    """bert-base-uncased's tokenizer files into folder, else a WordPiece trained on the bench's words."""
    if (BERT / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(BERT).save_pretrained(folder)
        return "bert-base-uncased"
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts(), trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(folder)
    return "WordPiece trained here (no /work/shared/data)"


def build() -> tuple[Path, str]:
    """The cached model folder (config, weights, tokenizer) and which tokenizer it has."""
    folder = CACHE / "model"
    marker = folder / "tokenizer-source.txt"
    if marker.is_file():
        return folder, marker.read_text()
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    source = _tokenizer(folder)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    config = BertConfig(vocab_size=len(vocab), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                        architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    marker.write_text(source)
    return folder, source


def export_all(folder: Path) -> dict[str, dict[str, Any]]:
    """Each variant exported (cached): its path, size, and the accuracy export() measured on its probes."""
    from authoring.export import export

    out = {}
    for name, options in VARIANTS.items():
        path = CACHE / f"{name}.onnx"
        summary = CACHE / f"{name}.json"
        if not summary.is_file():
            start = time.perf_counter()
            report = export(folder, path, **options)  # type: ignore[arg-type]
            quality = report.quality
            summary.write_text(json.dumps({
                "export_s": time.perf_counter() - start, "file_bytes": report.file_bytes,
                "probe_max_score_difference": quality.max_score_difference if quality else None,
                "probe_changed": quality.changed if quality else None, "options": options,
                "quality": quality.as_dict() if quality else None,
                "fused": report.export_config.get("optimize", {}).get("fused", {}),
            }))
        out[name] = {"path": str(path), **json.loads(summary.read_text())}
    return out


def _scores(results: list[Any]) -> list[dict[str, float]]:
    return [{r["label"]: r["score"] for r in ranked} for ranked in results]


def measure(files: dict[str, dict[str, Any]], repeats: int) -> dict[str, dict[str, Any]]:
    """texts/s at batch 8 and 1 (interleaved passes) and the score differences against the plain file."""
    import onnxmeta_runtime as rt

    corpus = texts()
    runtimes = {(name, batch): rt.Runtime(f["path"], batch_size=batch) for name, f in files.items() for batch in (8, 1)}
    work = {8: corpus, 1: corpus[:BATCH_1_TEXTS]}
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in runtimes}
    for runtime in runtimes.values():  # warm up
        runtime(corpus[:8])
    for _ in range(repeats):
        for key, runtime in runtimes.items():
            start = time.perf_counter()
            runtime(work[key[1]])
            seconds[key].append(time.perf_counter() - start)
    reference = _scores(runtimes["plain", 8](corpus, top_k=None))
    out = {}
    for name in files:
        scores = _scores(runtimes[name, 8](corpus, top_k=None))
        worst = max(abs(s[label] - r[label]) for s, r in zip(scores, reference) for label in r)
        changed = sum(max(s, key=s.get) != max(r, key=r.get) for s, r in zip(scores, reference))
        out[name] = {
            **files[name],
            "texts_per_s_bs8": len(work[8]) / min(seconds[name, 8]), "median_s_bs8": statistics.median(seconds[name, 8]),
            "texts_per_s_bs1": len(work[1]) / min(seconds[name, 1]), "median_s_bs1": statistics.median(seconds[name, 1]),
            "max_score_difference": worst, "top_label_changed": changed, "texts": len(corpus),
        }
    return out


def run(repeats: int) -> dict[str, Any]:
    """Build and export if needed, measure, print; the figures and ratios to the plain file as a dict."""
    import onnxruntime

    start = time.perf_counter()
    folder, source = build()
    files = export_all(folder)
    print(f"model: BERT hidden 256, 4 layers, tokenizer {source}; exports ready in {time.perf_counter() - start:.1f} s "
          f"(onnxruntime {onnxruntime.__version__})")
    figures = measure(files, repeats)
    plain = figures["plain"]
    print(f"\n{'variant':<10}{'MB':>7}{'size':>7}{'bs8 t/s':>10}{'x plain':>9}{'bs1 t/s':>10}{'x plain':>9}"
          f"{'max diff':>11}{'changed':>9}{'probe diff':>12}")
    ratios = {}
    for name, f in figures.items():
        size, bs8, bs1 = (f["file_bytes"] / plain["file_bytes"], f["texts_per_s_bs8"] / plain["texts_per_s_bs8"],
                          f["texts_per_s_bs1"] / plain["texts_per_s_bs1"])
        probe = f["probe_max_score_difference"]
        print(f"{name:<10}{f['file_bytes'] / 2**20:>7.1f}{size:>6.2f}x{f['texts_per_s_bs8']:>10.1f}{bs8:>8.2f}x"
              f"{f['texts_per_s_bs1']:>10.1f}{bs1:>8.2f}x{f['max_score_difference']:>11.1e}"
              f"{f['top_label_changed']:>5}/{f['texts']:<3}{'' if probe is None else f'{probe:.1e}':>12}")
        ratios[name] = {"size_vs_plain": size, "speed_vs_plain_bs8": bs8, "speed_vs_plain_bs1": bs1}
    return {"tokenizer": source, "variants": figures, "ratios": ratios, "onnxruntime": onnxruntime.__version__}


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(__doc__, run, "results-export.json", repeats=5, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
