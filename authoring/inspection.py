"""Describe and validate a self-contained ONNX file."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataError

from .external import check_data_files
from .tasks import PIPELINE_TASKS, detect_task
from .vits import INPUTS as VITS_INPUTS

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
    export_config = metadata.get(rt.KEY_EXPORT_CONFIG)
    export_config = export_config if isinstance(export_config, dict) else {}
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
        # a file may carry any JSON here; describe it as it is rather than fail
        "labels": [id2label[k] for k in sorted(id2label, key=lambda k: int(k) if str(k).isdigit() else 0)]
        if isinstance(id2label, dict) else [],
        "tokenizer": None if tokenizer_config is None else {
            "class": tokenizer_config.get("tokenizer_class"),
            "has_vocabulary": rt.KEY_TOKENIZER_JSON in metadata or "vocab" in tokenizer_config,
            "model_max_length": tokenizer_config.get("model_max_length"),
        },
        "image_processor": metadata.get(rt.KEY_IMAGE_PROCESSOR_CONFIG),
        "feature_extractor": metadata.get(rt.KEY_FEATURE_EXTRACTOR_CONFIG),
        "transformers_version": metadata.get(rt.KEY_TRANSFORMERS_VERSION),
        "export_timestamp": metadata.get(rt.KEY_TIMESTAMP),
        "metadata_bytes": sum(e["stored_bytes"] for e in entries),
        "entries": entries,
        "other_metadata_props": {e.key: e.value for e in scan.entries
                                 if not rt.is_format_key(e.key.removesuffix(rt.COMPRESSED_SUFFIX))},
        "model": rt.model_info(path, scan),
        "exporter": export_config.get("exporter"),
        "quantization": export_config.get("quantize"),
        "quality": export_config.get("quality"),
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
    tokenizer_config = metadata.get(rt.KEY_TOKENIZER_CONFIG)
    # a CTC tokenizer's vocabulary is its config's "vocab"; a model without a tokenizer (audio, images) has none
    own_vocab = tokenizer_config is None or "vocab" in tokenizer_config
    missing = [k for k in REQUIRED_KEYS.get(level, ()) if k not in metadata and not (k == rt.KEY_TOKENIZER_JSON and own_vocab)]
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


def _audio_processor_check(path: str | os.PathLike[str], metadata: dict[str, Any], rebuilt: str) -> str:
    """The processors of an audio model: its feature extractor (rebuilt: what rebuilding it found), and the tokenizer
    beside it: tokenizer.json's, or a CTC vocabulary."""
    done = [rebuilt]
    tokenizer = rt.load_tokenizer(metadata)
    if isinstance(tokenizer, rt.TextTokenizer):
        done.append(f"tokenizer rebuilt ({tokenizer.backend.get_vocab_size()} tokens)")
    elif tokenizer is not None:
        done.append(f"CTC vocabulary of {len(rt.CTCDecoder(metadata[rt.KEY_TOKENIZER_CONFIG]).tokens)} tokens")
    if metadata.get(rt.KEY_PIPELINE_TASK) in rt.TASKS:
        try:
            rt.Runtime(path)  # builds the session and the task: graph inputs must match the features
        except rt.TaskDetectionError as exc:  # Whisper, until the runtime runs it
            done.append(f"the task does not run in this runtime yet ({exc})")
    return "; ".join(done)


def _processor_check(path: str | os.PathLike[str], metadata: dict[str, Any]) -> str:
    extractor = rt.load_feature_extractor(metadata)
    if extractor is not None:
        return _audio_processor_check(path, metadata, f"{type(extractor).__name__} rebuilt ({extractor.sampling_rate} Hz)")
    tokenizer = rt.load_tokenizer(metadata)
    if tokenizer is None and rt.KEY_IMAGE_PROCESSOR_CONFIG in metadata:
        processor = rt.load_image_processor(metadata)
        if metadata.get(rt.KEY_PIPELINE_TASK) in rt.TASKS:
            rt.Runtime(path)  # builds the session and the task: pixel_values must match the processor
        return f"image processor rebuilt ({processor!r})"
    if isinstance(tokenizer, rt.TokenizerProxy):
        raise rt.ProcessorReconstructionError("no vocabulary embedded; re-embed with --include-vocab to tokenize")
    if tokenizer is None:
        raise rt.ProcessorReconstructionError("no tokenizer or processor embedded")
    if isinstance(tokenizer, rt.CTCDecoder):
        raise rt.ProcessorReconstructionError(f"a CTC vocabulary without the feature extractor its audio needs "
                                              f"({rt.KEY_FEATURE_EXTRACTOR_CONFIG})")
    if isinstance(tokenizer, rt.VitsTokenizer):
        if metadata.get(rt.KEY_PIPELINE_TASK) in rt.TASKS:
            rt.Runtime(path)  # builds the session and the task: the graph must take the noise the runtime feeds
        return f"VITS character tokenizer rebuilt ({len(tokenizer.vocab)} characters, add_blank {tokenizer.add_blank})"
    vocab = tokenizer.backend.get_vocab_size()
    config_vocab = (metadata.get(rt.KEY_MODEL_CONFIG) or {}).get("vocab_size")
    if isinstance(config_vocab, int) and vocab > config_vocab:
        raise rt.MetadataValidationError(f"tokenizer has {vocab} tokens but the model config's vocab_size is {config_vocab}")
    if metadata.get(rt.KEY_PIPELINE_TASK) in rt.TASKS:
        rt.Runtime(path)  # builds the session and the task: graph inputs must match the tokenizer
    return f"tokenizer rebuilt ({vocab} tokens, max length {tokenizer.max_length})"


TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
# What text generation's decoding loop feeds itself (the runtime checks these graphs when it builds the task):
# positions, the legacy merged decoder's branch, past key values (Optimum's, onnxruntime's GPT-2's).
_LOOP_INPUTS = re.compile(r"position_ids|use_cache_branch|past_key_values\.\d+\.(key|value)|past_\d+")
# Tasks whose output the runtime reads as one score per label, and per vocabulary entry.
_LABEL_TASKS = ("text-classification", "zero-shot-classification", "audio-classification", "image-classification")
_VOCAB_TASKS = ("fill-mask",)


def _dims(value_info: Any) -> list[int | str | None]:
    """The dimensions of a graph input or output: an int, a symbolic name, or None when unknown."""
    if not value_info.type.HasField("tensor_type") or not value_info.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim]


def _nodes(graph: Any) -> Iterator[Any]:
    """The nodes of a graph and of its subgraphs (an encoder-decoder file's If branches)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(sub)


def _embedding_rows(graph: Any) -> tuple[str, int] | None:
    """The token embedding table: an initializer gathered by input_ids, as (name, number of rows)."""
    tables = {t.name: list(t.dims) for t in graph.initializer}
    for node in _nodes(graph):
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == "input_ids":
            dims = tables.get(node.input[0])
            if dims and len(dims) == 2:
                return node.input[0], dims[0]
    return None


@dataclass
class _Findings:
    """What the graph check found, step by step: failures, what fits, and what it could not compare."""

    failures: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


def _graph_check(path: str | os.PathLike[str], metadata: dict[str, Any]) -> str:
    """Metadata against the graph: tokenizer outputs vs inputs, vocabulary vs embedding table and logits,
    labels vs classifier width. A dimension that is symbolic is reported as not checkable."""
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for files it cannot parse
        raise rt.MetadataValidationError(f"onnx cannot parse the graph: {exc}") from None
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = {o.name: _dims(o) for o in graph.output}
    found = _Findings()
    layout = metadata.get(rt.KEY_GRAPH_LAYOUT)
    if layout is not None:  # an encoder-decoder in one file: the tokenizer feeds the encoder entry point
        inputs, outputs = _layout_check(graph, layout, outputs, found)
    _inputs_check(metadata, inputs, found)
    _vocabulary_check(metadata, graph, found)
    _width_check(metadata, outputs, found)
    if found.failures:
        raise rt.MetadataValidationError("; ".join(found.failures))
    message = "; ".join(found.checked) or "nothing to compare"
    return message + (f"; not checkable: {', '.join(found.unchecked)}" if found.unchecked else "")


def _layout_check(graph: Any, layout: dict[str, Any], outputs: dict[str, list[int | str | None]],
                  found: _Findings) -> tuple[list[str], dict[str, list[int | str | None]]]:
    """An encoder-decoder's hf_graph_layout against the graph's names; the inputs the processor feeds (the encoder
    entry point's) and the outputs a task reads (the decoder's)."""
    names = {i.name for i in graph.input}
    points = layout.get("entry_points", {})
    missing = sorted({n for point in points.values() for n in point.get("inputs", {}).values() if n not in names}
                     | {n for point in points.values() for n in point.get("outputs", {}).values() if n not in outputs})
    if missing:
        found.failures.append(f"{rt.KEY_GRAPH_LAYOUT} names {missing}, which the graph lacks")
    else:
        found.checked.append(f"{rt.KEY_GRAPH_LAYOUT}: {', '.join(points)} fit the graph")
    inputs = list(points.get("encoder", {}).get("inputs", {}).values())
    return inputs, {n: outputs[n] for n in points.get("decoder", {}).get("outputs", {}).values() if n in outputs}


def _inputs_check(metadata: dict[str, Any], inputs: list[str], found: _Findings) -> None:
    """The graph's inputs against what the processor makes: the feature extractor's first input, or the tokenizer's
    outputs (and what text generation's decoding loop feeds)."""
    tokenizer_config = metadata.get(rt.KEY_TOKENIZER_CONFIG) or {}
    extractor = rt.load_feature_extractor(metadata)
    if extractor is not None:
        main = extractor.model_input_names[0]
        if main not in inputs:
            found.failures.append(f"graph inputs {inputs} lack {main}, which the feature extractor makes")
        else:
            found.checked.append(f"input {main} comes from the feature extractor")
    elif metadata.get(rt.KEY_TOKENIZER_JSON) is not None or tokenizer_config:
        task = metadata.get(rt.KEY_PIPELINE_TASK)
        made = tokenizer_config.get("model_input_names") or list(TOKENIZER_OUTPUTS)
        if rt.KEY_IMAGE_PROCESSOR_CONFIG in metadata:  # CLIP: the image processor fills pixel_values
            made = [*made, "pixel_values"]
        if task == "text-to-audio":  # VITS: the runtime feeds the noise and its scales (authoring/vits.py)
            made = [*made, *VITS_INPUTS[2:]]
        if task == "document-question-answering":  # LayoutLM: the runtime feeds each token's box from word_boxes
            made = [*made, "bbox"]
        extra = [n for n in inputs if n not in made and not (task == "text-generation" and _LOOP_INPUTS.fullmatch(n))]
        if extra:
            found.failures.append(f"graph inputs {extra} are not among the tokenizer's outputs {list(made)}")
        elif "input_ids" not in inputs and "pixel_values" in inputs and rt.KEY_GRAPH_LAYOUT in metadata:
            # an image encoder-decoder (captioning, OCR): the tokenizer decodes what its decoder generates
            found.checked.append("input pixel_values comes from the image processor")
        elif "input_ids" not in inputs:
            found.failures.append(f"graph inputs {inputs} lack input_ids")
        else:
            fed = [n for n in inputs if n in made]
            looped = f" ({len(inputs) - len(fed)} more from the decoding loop)" if len(fed) < len(inputs) else ""
            found.checked.append(f"inputs {', '.join(fed)} come from the tokenizer{looped}")


def _vocabulary_check(metadata: dict[str, Any], graph: Any, found: _Findings) -> None:
    """tokenizer.json's vocabulary and the config's vocab_size against the rows of the embedding table."""
    config = metadata.get(rt.KEY_MODEL_CONFIG) or {}
    vocab_sizes: list[tuple[str, int, str]] = []
    if metadata.get(rt.KEY_TOKENIZER_JSON) is not None:
        from tokenizers import Tokenizer

        try:
            tokens = Tokenizer.from_str(metadata[rt.KEY_TOKENIZER_JSON]).get_vocab_size(with_added_tokens=True)
            vocab_sizes.append(("tokenizer.json", tokens, f"tokenizer.json has {tokens} tokens"))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception; the processor check reports it in full
            found.unchecked.append(f"tokenizer vocabulary ({str(exc)[:80]})")
    if isinstance(config.get("vocab_size"), int):
        vocab_sizes.append(("config vocab_size", config["vocab_size"], f"config vocab_size is {config['vocab_size']}"))
    table = _embedding_rows(graph)
    if table is None:
        if vocab_sizes:
            found.unchecked.append("vocabulary (no embedding table gathered by input_ids)")
        return
    name, rows = table
    for source, size, what in vocab_sizes:
        # a tokenizer may use fewer ids than the table has rows (tables padded to a multiple of 8), never more
        wrong = size > rows if source == "tokenizer.json" else size != rows
        if wrong:
            found.failures.append(f"{what} but the embedding table {name!r} has {rows} rows")
        else:
            found.checked.append(f"{source} {size} fits the embedding table ({rows} rows)")


def _width_check(metadata: dict[str, Any], outputs: dict[str, list[int | str | None]], found: _Findings) -> None:
    """The config's labels (classifiers) and vocab_size (fill-mask) against the width of the output read: logits,
    else the first."""
    config = metadata.get(rt.KEY_MODEL_CONFIG) or {}
    task = metadata.get(rt.KEY_PIPELINE_TASK)
    output = "logits" if "logits" in outputs else next(iter(outputs), None)
    width = outputs[output][-1] if output is not None and outputs[output] else None
    expectations = []
    if task in _LABEL_TASKS and isinstance(config.get("id2label"), dict):
        expectations.append(("labels", f"config id2label has {len(config['id2label'])} labels", len(config["id2label"])))
    if task in _VOCAB_TASKS and isinstance(config.get("vocab_size"), int):
        expectations.append(("vocabulary scores", f"config vocab_size is {config['vocab_size']}", config["vocab_size"]))
    for label, what, expected in expectations:
        if not isinstance(width, int) or width == 0:
            found.unchecked.append(f"{label} (output {output!r} has width {width!r})")
        elif width != expected:
            found.failures.append(f"{what} but output {output!r} has width {width}")
        else:
            found.checked.append(f"{label}: {expected} = width of output {output!r}")


def _external_check(path: str | os.PathLike[str]) -> str:
    files = check_data_files(path)
    if not files:
        return ""
    size = sum(os.path.getsize(os.path.join(os.path.dirname(os.fspath(path)), f)) for f in files)
    return f"{len(files)} data file{'s' if len(files) > 1 else ''} beside the model ({', '.join(files)}; {size:,} bytes)"


def validate(
    path: str | os.PathLike[str], *, check_metadata: bool = True, check_task: bool = True, check_processor: bool = True,
    check_graph: bool = True,
) -> list[Check]:
    """Run the chosen checks; each Check says what it verified or what is wrong.

    Reading the metadata verifies the digest, so a value changed after embedding fails the first check.
    """
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
    if check_graph:
        checks.append(_check("graph", lambda: _graph_check(path, metadata)))
    return checks


def checks_as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
