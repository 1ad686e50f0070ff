"""Describe and validate a self-contained ONNX file."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataError

from .external import check_data_files
from .tasks import PIPELINE_TASKS, detect_task

# What each embedding level promises to carry.
REQUIRED_KEYS = {
    "minimal": (rt.KEY_VERSION, rt.KEY_MODEL_CONFIG),
    "essential": (rt.KEY_VERSION, rt.KEY_MODEL_CONFIG, rt.KEY_FEATURE_ENGINEERING),
    "full": (rt.KEY_VERSION, rt.KEY_MODEL_CONFIG, rt.KEY_FEATURE_ENGINEERING, rt.KEY_TOKENIZER_JSON),
}


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A stable, JSON-safe summary of a file's metadata (keys never change meaning between versions)."""
    scan = rt.scan_model(path)
    metadata = rt.read_metadata(path, verify=False)
    config = metadata.get(rt.KEY_MODEL_CONFIG) or {}
    tokenizer_config = metadata.get(rt.KEY_TOKENIZER_CONFIG)
    id2label = config.get("id2label") or {}
    entries = [
        {
            "key": e.key.removesuffix(rt.COMPRESSED_SUFFIX),
            "stored_bytes": e.field.end - e.field.start,
            "compressed": e.key.endswith(rt.COMPRESSED_SUFFIX),
        }
        for e in scan.entries
        if rt.is_format_key(e.key.removesuffix(rt.COMPRESSED_SUFFIX))
    ]
    return {
        "file": os.path.basename(os.fspath(path)),
        "file_bytes": scan.size,
        "format_version": metadata.get(rt.KEY_VERSION),
        "embedding_level": metadata.get(rt.KEY_EMBEDDING_LEVEL),
        "task": metadata.get(rt.KEY_PIPELINE_TASK),
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures") or [],
        "labels": [id2label[k] for k in sorted(id2label, key=lambda k: int(k) if str(k).isdigit() else 0)],
        "tokenizer": None if tokenizer_config is None else {
            "class": tokenizer_config.get("tokenizer_class"),
            "has_vocabulary": rt.KEY_TOKENIZER_JSON in metadata,
            "model_max_length": tokenizer_config.get("model_max_length"),
        },
        "image_processor": metadata.get(rt.KEY_IMAGE_PROCESSOR_CONFIG),
        "feature_extractor": metadata.get(rt.KEY_FEATURE_EXTRACTOR_CONFIG),
        "transformers_version": metadata.get(rt.KEY_TRANSFORMERS_VERSION),
        "export_timestamp": metadata.get(rt.KEY_TIMESTAMP),
        "metadata_bytes": sum(e["stored_bytes"] for e in entries),
        "entries": entries,
        "other_metadata_props": {e.key: e.value for e in scan.entries if not rt.is_format_key(e.key.removesuffix(rt.COMPRESSED_SUFFIX))},
        "model": rt.model_info(path, scan),
    }


@dataclass
class Check:
    """One validation result."""

    name: str
    ok: bool
    message: str


def _check(name: str, func: Any) -> Check:
    try:
        return Check(name, True, func())
    except MetadataError as exc:
        return Check(name, False, str(exc))


def _metadata_check(metadata: dict[str, Any]) -> str:
    if rt.KEY_VERSION not in metadata:
        raise rt.MetadataValidationError("no onnxmeta metadata; embed it with python -m authoring embed")
    level = metadata.get(rt.KEY_EMBEDDING_LEVEL, "essential")
    missing = [k for k in REQUIRED_KEYS.get(level, ()) if k not in metadata]
    if missing:
        raise rt.MetadataValidationError(f"level {level!r} requires {', '.join(missing)}, which are missing")
    digest = "digest verified" if rt.KEY_DIGEST in metadata else "no digest (older writer)"
    return f"format {metadata[rt.KEY_VERSION]}, level {level}, {digest}"


def _task_check(metadata: dict[str, Any]) -> str:
    task = metadata.get(rt.KEY_PIPELINE_TASK)
    if not task:
        raise rt.TaskDetectionError("no pipeline task embedded; re-embed with --task")
    if task not in PIPELINE_TASKS:
        raise rt.TaskDetectionError(f"task {task!r} is not a transformers pipeline task")
    detected = detect_task(metadata.get(rt.KEY_MODEL_CONFIG) or {})
    source = (metadata.get(rt.KEY_PIPELINE_CONFIG) or {}).get("task_source")
    if detected not in (None, task) and source != "override":
        raise rt.TaskDetectionError(f"embedded task {task!r} but the config says {detected!r}")
    return f"{task} ({'runs in this runtime' if task in rt.TASKS else 'not yet supported by this runtime'})"


def _processor_check(path: str | os.PathLike[str], metadata: dict[str, Any]) -> str:
    tokenizer = rt.load_tokenizer(metadata)
    if isinstance(tokenizer, rt.TokenizerProxy):
        raise rt.ProcessorReconstructionError("no vocabulary embedded; re-embed with --include-vocab to tokenize")
    if tokenizer is None:
        raise rt.ProcessorReconstructionError("no tokenizer or processor embedded")
    vocab = tokenizer.backend.get_vocab_size()
    config_vocab = (metadata.get(rt.KEY_MODEL_CONFIG) or {}).get("vocab_size")
    if isinstance(config_vocab, int) and vocab > config_vocab:
        raise rt.MetadataValidationError(f"tokenizer has {vocab} tokens but the model config's vocab_size is {config_vocab}")
    if metadata.get(rt.KEY_PIPELINE_TASK) in rt.TASKS:
        rt.Runtime(path)  # builds the session and the task: graph inputs must match the tokenizer
    return f"tokenizer rebuilt ({vocab} tokens, max length {tokenizer.max_length})"


def _external_check(path: str | os.PathLike[str]) -> str:
    files = check_data_files(path)
    if not files:
        return ""
    size = sum(os.path.getsize(os.path.join(os.path.dirname(os.fspath(path)), f)) for f in files)
    return f"{len(files)} data file{'s' if len(files) > 1 else ''} beside the model ({', '.join(files)}; {size:,} bytes)"


def validate(
    path: str | os.PathLike[str], *, check_metadata: bool = True, check_task: bool = True, check_processor: bool = True
) -> list[Check]:
    """Run the chosen checks; each Check says what it verified or what is wrong."""
    try:
        metadata = rt.read_metadata(path)
    except MetadataError as exc:
        return [Check("metadata", False, str(exc))]
    checks = []
    if check_metadata:
        checks.append(_check("metadata", lambda: _metadata_check(metadata)))
        external = _check("external data", lambda: _external_check(path))
        if external.message:
            checks.append(external)
    if check_task:
        checks.append(_check("task", lambda: _task_check(metadata)))
    if check_processor:
        checks.append(_check("processor", lambda: _processor_check(path, metadata)))
    return checks


def checks_as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
