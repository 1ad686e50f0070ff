"""Command line: python -m authoring (or onnxmeta) {export,embed,inspect,validate,demo}."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataError

from . import progress
from .discovery import EMBEDDING_LEVELS, MetadataDiscovery
from .embedder import FolderResult, compress_threshold, embed, embed_folder
from .export import DEFAULT_OPSET, EXPORTERS, OPTIMIZE_LEVELS
from .inspection import checks_as_dicts, describe, validate
from .quality import card_summary
from .seq2seq import is_seq2seq_export, merge_export
from .weights import BLOCK_SIZES, LM_HEAD_BITS, QUANTIZE_ALIASES, QUANTIZE_MODES, Quantization


def _safe(value: Any) -> str:
    """Text for a terminal: control characters escaped, so file contents cannot drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def _loudness(parser: argparse.ArgumentParser, default: Any) -> None:
    """-v/-q, before the command or after it (a command's default is SUPPRESS: it keeps the main parser's value)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log every step (and the exporters' warnings)")
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="log errors only; no progress display")


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Make ONNX models self-contained.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {rt.__version__} (metadata format {rt.FORMAT_VERSION})")
    _loudness(parser, False)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a hub id or model folder to ONE self-contained ONNX file")
    p.add_argument("model", help="a hub id (bert-base-uncased, through the Hugging Face cache) or a local model folder")
    p.add_argument("output", help="the ONNX file to write (e.g. model.onnx); replaced atomically when everything passed")
    p.add_argument("--task", help="pipeline task to export for instead of the detected one (e.g. zero-shot-classification)")
    p.add_argument("--revision", help="a branch, tag or commit of the hub id (default: main)")
    p.add_argument("--opset", type=int, help=f"ONNX opset (default: Optimum's for the model, {DEFAULT_OPSET} with torch.onnx)")
    p.add_argument("--level", choices=list(EMBEDDING_LEVELS), default="full",
                   help="how much metadata to embed (default: full, with the vocabulary)")
    p.add_argument("--optimize", choices=OPTIMIZE_LEVELS,
                   help="onnxruntime's transformer optimizer: O1 basic graph optimizations, O2 extended ones and "
                        "transformer fusions, O3 also the GELU approximation")
    p.add_argument("--quantize", choices=[*QUANTIZE_MODES, *QUANTIZE_ALIASES],
                   help="int4: 4-bit weights (MatMulNBits, tied embeddings quantized once); int8: weight-only 8-bit for "
                        "generating graphs, dynamic int8 for the others (dynamic-int8 is its alias); fp16: float16 "
                        "weights and compute; q4f16: int4 weights, float16 activations (GPUs)")
    p.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=32,
                   help="int4/int8 block size along the reduced axis (default 32)")
    p.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=True,
                   help="symmetric blocks (default), or --no-symmetric: a zero point per block")
    p.add_argument("--accuracy-level", type=int, choices=range(5),
                   help="MatMulNBits compute type: 4 int8 (default on CPU), 0 the input's type (q4f16's default)")
    p.add_argument("--lm-head", choices=LM_HEAD_BITS, default="int4",
                   help="the output projection's bits in int4 mode (int8 keeps it more accurate, as genai offers)")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="auto: onnxruntime-genai's builder for the decoder-only LLMs it supports (where installed), "
                        "else Optimum's exporter, else torch.onnx")
    p.add_argument("--no-validate", action="store_true", help="skip the exporter's check and the file's validation")

    p = sub.add_parser("embed", help="embed Hugging Face metadata into an ONNX file")
    p.add_argument("onnx", help="the ONNX file, or a folder of them (an Optimum export): every .onnx file in it; an "
                                "encoder-decoder export (encoder_model.onnx + decoders) is merged into ONE file")
    p.add_argument("model", help="a local model folder or a hub id (bert-base-uncased)")
    p.add_argument("--output", "-o", help="write here instead of replacing the input (a folder for a folder; the one "
                                          "file for an encoder-decoder export, default <folder>/model.onnx)")
    p.add_argument("--jobs", "-j", type=int, help="files embedded at once for a folder (default: up to 8)")
    p.add_argument("--in-place", action="store_true",
                   help="rewrite only the metadata at the end of the file, through an undo journal (fast; a reader "
                        "during the rewrite can see a torn file, a crash is undone by the next embed) instead of "
                        "replacing the file atomically")
    p.add_argument("--include-vocab", action="store_true", help="embed tokenizer.json with its vocabulary (level full)")
    p.add_argument("--level", choices=list(EMBEDDING_LEVELS), help="how much to embed (default: essential)")
    p.add_argument("--no-compress", action="store_true", help="store every value as plain text")
    p.add_argument("--compress-threshold", type=float, metavar="KB",
                   help="compress values larger than this (default: the level's, 10 for full)")
    p.add_argument("--task", help="pipeline task to embed instead of the detected one")
    p.add_argument("--revision", help="a branch, tag or commit of the hub id (default: main)")

    for name, aliases in (("inspect", ["analyze"]),):
        p = sub.add_parser(name, aliases=aliases, help="show what a file carries")
        p.add_argument("onnx")
        p.add_argument("--show-metadata", action="store_true", help="print every embedded value")
        p.add_argument("--show-task", action="store_true", help="print the task")
        p.add_argument("--show-processor", action="store_true", help="print the processor configuration")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("validate", help="check integrity, task and processor; exit 1 on failure")
    p.add_argument("onnx")
    p.add_argument("--check-metadata", action="store_true")
    p.add_argument("--check-task", action="store_true")
    p.add_argument("--check-processor", action="store_true")
    p.add_argument("--check-graph", action="store_true", help="metadata against the graph: inputs, vocabulary, labels")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("demo", help="build a tiny sentiment model offline, embed, run it")
    p.add_argument("--output-dir", default="onnxmeta-demo", help="where to write the demo model")
    for command in {id(c): c for c in sub.choices.values()}.values():  # an alias shares its command's parser
        _loudness(command, argparse.SUPPRESS)
    return parser


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    quantization = None if args.quantize is None else Quantization(
        args.quantize, block_size=args.block_size, symmetric=args.symmetric, accuracy_level=args.accuracy_level,
        lm_head=args.lm_head)
    report = export(args.model, args.output, task=args.task, revision=args.revision, opset=args.opset, level=args.level,
                    optimize=args.optimize, quantize=quantization, exporter=args.exporter, validate=not args.no_validate)
    config, mb = report.export_config, 1024 * 1024
    made = " + ".join(filter(None, [config["exporter"], args.optimize, None if quantization is None else quantization.mode]))
    print(f"exported {_safe(args.model)} ({report.task}) with {made} into ONE file {_safe(report.output_path)}: "
          f"{report.file_bytes / mb:.1f} MB, {len(report.entries)} metadata entries")
    source = ", ".join(f"{k} {_safe(config[k])}" for k in ("revision", "commit") if k in config)
    if source:
        print(f"  source: {source}")
    if report.layout is not None:
        print(f"  encoder-decoder entry points: {', '.join(report.layout['entry_points'])}")
    tied = (config.get("weights") or {}).get("tied_bytes")
    if tied:
        print(f"  tied weights stored once: {tied / mb:.1f} MB less")
    if report.quality is not None:
        print(f"  quality card {card_summary(report.quality.as_dict())} ({report.plain_bytes / mb:.1f} MB)")
    for c in report.checks:
        print(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}: {_safe(c.message)}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    level = "full" if args.include_vocab else (args.level or "essential")
    if args.include_vocab and args.level not in (None, "full"):
        raise rt.MetadataExtractionError(f"--include-vocab means --level full, not {args.level}")
    seq2seq = Path(args.onnx).is_dir() and is_seq2seq_export(args.onnx)
    if seq2seq and (args.in_place or args.jobs is not None):
        raise rt.MetadataEmbeddingError(
            f"{_safe(args.onnx)} is an encoder-decoder export, merged into one new file: --in-place and --jobs do not apply")
    if not Path(args.onnx).is_dir():
        rt.scan_model(args.onnx)  # a bad ONNX path fails before the slow discovery
    metadata = MetadataDiscovery().discover(args.model, level=level, task=args.task, revision=args.revision)
    threshold = compress_threshold(metadata[rt.KEY_EMBEDDING_LEVEL], not args.no_compress, args.compress_threshold)
    if seq2seq:
        return _merge_folder(args, metadata, threshold)
    if Path(args.onnx).is_dir():
        return _embed_folder(args, metadata, threshold)
    with progress.step(f"embedding into {Path(args.onnx).name}"):
        report = embed(args.onnx, metadata, args.output, compress_threshold=threshold, in_place=args.in_place)
    print(f"embedded {len(report.entries)} entries ({report.total_bytes / 1024:.1f} KB) into {report.output_path}")
    print(f"  task: {metadata.get(rt.KEY_PIPELINE_TASK) or '(none)'}, level: {metadata[rt.KEY_EMBEDDING_LEVEL]}")
    for e in report.entries:
        note = f"  (gzip of {e.text_bytes:,} B)" if e.compressed else ""
        print(f"  {e.key:<32} {e.stored_bytes:>10,} B{note}")
    for name in report.data_files:
        action = "copied beside the output" if name in report.copied_data_files else "already beside the output"
        print(f"  external data {_safe(name)}: {action} (its location in the graph is unchanged)")
    if report.preserved_keys:
        print(f"  kept {len(report.preserved_keys)} other metadata_props: {', '.join(map(_safe, report.preserved_keys))}")
    return 0


def _merge_folder(args: argparse.Namespace, metadata: dict[str, Any], threshold: int | None) -> int:
    """Merge an encoder-decoder export into one file with the metadata embedded."""
    with progress.step("merging the encoder-decoder into one file"):
        report = merge_export(args.onnx, args.output, metadata, compress_threshold=threshold)
    mb = 1024 * 1024
    print(f"merged {_safe(args.onnx)} into ONE file {_safe(report.output_path)}: {report.file_bytes / mb:.1f} MB "
          f"(the export's files: {report.export_bytes / mb:.1f} MB, its weights once: {report.unique_weight_bytes / mb:.1f} MB)")
    print(f"  task: {metadata.get(rt.KEY_PIPELINE_TASK) or '(none)'}, level: {metadata[rt.KEY_EMBEDDING_LEVEL]}")
    for entry, point in report.layout["entry_points"].items():
        names = [_safe(n) for role, n in point["inputs"].items() if not role.startswith("past_key_values.")]
        past = len(point["inputs"]) - len(names)
        shown = ", ".join(names + ([f"{past} past"] if past else []))
        print(f"  {report.layout['phase_input']}={point['phase']}: {entry}({shown})")
    if report.data_file is not None:
        print(f"  weights in {_safe(report.data_file)} beside it (over 2 GB: keep the two files together)")
    return 0


def _embed_folder(args: argparse.Namespace, metadata: dict[str, Any], threshold: int | None) -> int:
    """Embed one discovery's metadata into every .onnx file of a folder, one progress line per file done."""
    if args.jobs is not None and args.jobs < 1:
        raise rt.MetadataEmbeddingError(f"--jobs must be at least 1, got {args.jobs}")

    def done_one(done: int, total: int, result: FolderResult) -> None:
        step.count(done, total)
        name = _safe(Path(result.onnx_path).name)
        if result.report is None:
            print(f"[{done}/{total}] {name}: failed: {_safe(result.error)}", file=sys.stderr, flush=True)
        else:
            copied = f", copied {', '.join(result.report.copied_data_files)}" if result.report.copied_data_files else ""
            print(f"[{done}/{total}] {name}: {len(result.report.entries)} entries, "
                  f"{result.report.total_bytes / 1024:.1f} KB{copied}", file=sys.stderr, flush=True)

    with progress.step(f"embedding the files of {Path(args.onnx).name}") as step:
        results = embed_folder(args.onnx, metadata, args.output, compress_threshold=threshold, max_workers=args.jobs,
                               in_place=args.in_place, progress=done_one)
    done = [r for r in results if r.report is not None]
    print(f"embedded level {metadata[rt.KEY_EMBEDDING_LEVEL]} metadata (task: {metadata.get(rt.KEY_PIPELINE_TASK) or '(none)'}) "
          f"into {len(done)} of {len(results)} files of {_safe(args.onnx)}, discovered once:")
    for r in results:
        if r.report is not None:
            print(f"  {_safe(r.report.output_path)}  {len(r.report.entries)} entries, {r.report.total_bytes / 1024:.1f} KB")
            for name in r.report.copied_data_files:
                print(f"    external data {_safe(name)} copied beside it")
    failed = [r for r in results if r.report is None]
    if failed:
        raise rt.MetadataEmbeddingError(
            f"{len(failed)} of {len(results)} files failed: "
            + "; ".join(f"{Path(r.onnx_path).name}: {r.error}" for r in failed)
        )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """The whole report, or only the parts the --show-* flags ask for."""
    metadata = rt.read_metadata(args.onnx, verify=False)
    if not metadata:
        raise rt.MetadataReadError(f"{args.onnx} has no onnxmeta metadata; embed it: "
                                   f"{args.prog} embed {args.onnx} <model> --include-vocab")
    info = describe(args.onnx)
    if args.show_metadata or args.show_processor or args.show_task:
        keys = [rt.KEY_TOKENIZER_CONFIG, rt.KEY_IMAGE_PROCESSOR_CONFIG, rt.KEY_FEATURE_EXTRACTOR_CONFIG,
                rt.KEY_FEATURE_ENGINEERING]
        shown = {"task": info["task"]} if args.show_task else {}
        if args.show_processor:
            shown["processor"] = {k: metadata[k] for k in keys if k in metadata}
        if args.show_metadata:
            shown["metadata"] = {k: (f"<tokenizer.json, {len(v):,} characters>" if k == rt.KEY_TOKENIZER_JSON else v)
                                 for k, v in metadata.items()}
        info = shown
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=True))
        return 0
    for key, value in info.items():
        if key == "quality" and isinstance(value, dict):
            print(f"quality: {_safe(card_summary(value))}")
        elif key == "quantization" and isinstance(value, dict):
            print(f"quantization: {_safe(_quantization_summary(value))}")
        elif key == "entries":
            print("entries:")
            for e in value:
                print(f"  {_safe(e['key']):<32} {e['stored_bytes']:>10,} B{'  gzip' if e['compressed'] else ''}")
        elif isinstance(value, (dict, list)):
            print(f"{key}: {_safe(json.dumps(value, ensure_ascii=False, sort_keys=True))}")
        else:
            print(f"{key}: {_safe(value)}")
    return 0


def _quantization_summary(settings: dict[str, Any]) -> str:
    """A recorded quantization (export_config["quantize"]) in one line."""
    if settings.get("method") == "dynamic":
        return f"{settings.get('mode')} (dynamic: int8 weights per {'channel' if settings.get('per_channel') else 'tensor'}, " \
               "activations quantized as they run)"
    parts = [str(settings.get("method") or "float16 weights and compute")]
    if "bits" in settings:
        parts += [f"{settings['bits']} bits", f"blocks of {settings.get('block_size')}",
                  "symmetric" if settings.get("symmetric") else "asymmetric", f"accuracy level {settings.get('accuracy_level')}"]
    if settings.get("lm_head_bits") not in (None, settings.get("bits")):
        parts.append(f"lm_head {settings['lm_head_bits']} bits")
    return f"{settings.get('mode')} ({', '.join(parts)})"


def _cmd_validate(args: argparse.Namespace) -> int:
    chosen = (args.check_metadata, args.check_task, args.check_processor, args.check_graph)
    every = not any(chosen)
    with progress.step(f"validating {Path(args.onnx).name}"):
        checks = validate(args.onnx, check_metadata=every or args.check_metadata, check_task=every or args.check_task,
                          check_processor=every or args.check_processor, check_graph=every or args.check_graph)
    if args.json:
        print(json.dumps({"ok": all(c.ok for c in checks), "checks": checks_as_dicts(checks)}, indent=2, sort_keys=True))
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {_safe(c.message)}")
    return 0 if all(c.ok for c in checks) else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output_dir)
    return 0


class _Formatter(logging.Formatter):
    """warning: message, error: message (debug and info with the logger's name too, for -v)."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.levelno <= logging.DEBUG:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _configure_output(verbose: bool, quiet: bool) -> None:
    """Logging for the onnxmeta logger (-v: debug, -q: errors only, else warnings) on stderr, above the progress
    line that long commands show on a terminal (not with -q)."""
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: an application (or pytest) that set up logging keeps its own
        handler = progress.handler()
        handler.setFormatter(_Formatter())
        root.addHandler(handler)
    logging.getLogger("onnxmeta").setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    if quiet:
        progress.disable()
    else:
        progress.enable()


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point; returns the exit status. prog names the command in messages (default: the program's file
    name, onnxmeta for the console script)."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    args.prog = parser.prog
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    _configure_output(args.verbose, args.quiet)
    # transformers, imported only for tokenizers without tokenizer.json, notes that torch is missing and that it
    # does not know a config's model type: nothing this command needs
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if args.verbose else "error")
    commands = {"export": _cmd_export, "embed": _cmd_embed, "inspect": _cmd_inspect, "analyze": _cmd_inspect,
                "validate": _cmd_validate, "demo": _cmd_demo}
    try:
        return commands[args.command](args)
    except MetadataError as exc:
        print(f"error: {_safe(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:  # the file system refused: no space, read-only, a file where a folder should be
        print(f"error: {_safe(exc.strerror or exc)}: {_safe(exc.filename or '')}", file=sys.stderr)
        return 1
