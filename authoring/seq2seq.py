"""Encoder-decoder exports (T5, BART, Whisper...) as ONE ONNX file.

An exporter writes an encoder-decoder model as several graphs: ``encoder_model.onnx``,
``decoder_model.onnx`` (the first step: no past), ``decoder_with_past_model.onnx`` (every later step)
and/or ``decoder_model_merged.onnx`` (both decoders behind an ``If`` on ``use_cache_branch``).
``merge_export`` writes them as one graph: a scalar int64 input ``phase`` picks the entry point through
``If`` nodes whose branches are the parts' graphs; every weight is stored once, in the outer graph, and
every input but ``phase`` has an empty default, so a call feeds only its entry point's inputs. The
layout (entry points, their inputs and outputs, the past/present pairs) is embedded as
``hf_graph_layout``; see docs/FORMAT.md.

The runtime recognises the same layout from graph names alone (a folder of separate files, or a single
file without the key): ``graph_layout``, ``session_signature`` and the naming rules are its public names,
re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxmeta_runtime as rt
from onnxmeta_runtime import (
    DECODER_FILE,
    DECODER_MERGED_FILE,
    DECODER_WITH_PAST_FILE,
    ENCODER_FILE,
    KEY_GRAPH_LAYOUT,
    MERGED_BRANCH_INPUT,
    PHASE_INPUT,
    PHASES,
    MetadataEmbeddingError,
    check_fit,
    graph_layout,
    is_cross_attention,
    is_decoder_input,
    is_past_input,
    is_present_output,
    past_pairs,
    session_signature,
)

from . import fileio
from .external import check_data_files

if TYPE_CHECKING:
    import onnx

DEFAULT_OUTPUT_NAME = "model.onnx"

logger = logging.getLogger("onnxmeta")


# ######################################################################################################
# Layouts of files and folders (recognised by the runtime's graph_layout)
# ######################################################################################################

def describe_layout(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The layout of an encoder-decoder folder or file: the embedded hf_graph_layout, else from its graph names."""
    import onnxruntime as ort

    path = Path(path)
    if path.is_dir():
        files = [path / n for n in (ENCODER_FILE, DECODER_FILE, DECODER_WITH_PAST_FILE, DECODER_MERGED_FILE)
                 if (path / n).is_file()]
    else:
        layout = rt.read_metadata(path).get(KEY_GRAPH_LAYOUT)
        if layout is not None:
            return dict(layout)
        files = [path]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    signatures = {}
    for file in files:
        session = ort.InferenceSession(os.fspath(file), options, providers=["CPUExecutionProvider"])
        signatures[file.name] = session_signature(session)
    return graph_layout(signatures)


_GRAPH, _GRAPH_INPUT, _GRAPH_OUTPUT, _VALUE_NAME = 7, 11, 12, 1  # ModelProto.graph, GraphProto.input/output, .name


def graph_io_names(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """The names of a model's graph inputs and outputs, read by walking field heads: the weights are seeked past."""
    scan = rt.scan_model(path)
    names: dict[int, list[str]] = {_GRAPH_INPUT: [], _GRAPH_OUTPUT: []}
    with open(path, "rb") as f:
        for graph in (fl for fl in scan.fields if fl.number == _GRAPH and fl.wire_type == rt.WIRE_LEN):
            for field in rt.iter_fields(f, graph.data_start, graph.end):
                if field.number not in names or field.wire_type != rt.WIRE_LEN:
                    continue
                for inner in rt.iter_fields(f, field.data_start, field.end):
                    if inner.number == _VALUE_NAME and inner.wire_type == rt.WIRE_LEN:
                        f.seek(inner.data_start)
                        names[field.number].append(f.read(inner.end - inner.data_start).decode("utf-8", "replace"))
    return names[_GRAPH_INPUT], names[_GRAPH_OUTPUT]


def file_layout(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The layout of a one-file encoder-decoder from its graph names (None for any other graph), without onnxruntime."""
    inputs, outputs = graph_io_names(path)
    if PHASE_INPUT not in inputs:
        return None
    return graph_layout({Path(path).name: {"inputs": [(n, "", []) for n in inputs], "outputs": [(n, "", []) for n in outputs]}})


def is_seq2seq_export(folder: str | os.PathLike[str]) -> bool:
    """Whether a folder holds an encoder-decoder export: Optimum's file names, and a decoder among them that
    takes the encoder's output or a past."""
    folder = Path(folder)
    decoders = [folder / n for n in (DECODER_FILE, DECODER_WITH_PAST_FILE, DECODER_MERGED_FILE) if (folder / n).is_file()]
    return (folder / ENCODER_FILE).is_file() and any(
        name == "encoder_hidden_states" or is_past_input(name) for path in decoders for name in graph_io_names(path)[0])


# ######################################################################################################
# Merging an export folder into one file (onnx)
# ######################################################################################################

_ALIGN = 4096  # external data offsets: onnxruntime maps aligned tensors straight from the file
_INLINE_MAX = 1024  # smaller tensors stay in the graph even when the weights go to a data file
# Above this many bytes of weights the file uses external data: a ModelProto cannot exceed 2 GiB.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**27


@dataclass
class _Weight:
    """A tensor of a part as stored there (inline, or an external reference into its folder)."""

    tensor: onnx.TensorProto
    folder: Path
    key: tuple[int, tuple[int, ...], str]
    nbytes: int
    constant: bool = False
    """A Constant node's value, made a weight by the merge (not counted as the export's weights)."""

    @property
    def external(self) -> bool:
        return self.tensor.data_location == 1  # TensorProto.EXTERNAL


@dataclass
class _Part:
    """One entry point's graph, as the file (or the merged decoder's branch) holds it."""

    entry: str
    file: str
    nodes: list[onnx.NodeProto]
    inputs: list[onnx.ValueInfoProto]
    outputs: list[tuple[str, onnx.ValueInfoProto]]  # (value in this graph, the output as the part names it)
    value_info: list[onnx.ValueInfoProto]
    weights: dict[str, _Weight]
    opsets: dict[str, int]
    ir_version: int
    functions: list[onnx.FunctionProto] = field(default_factory=list)


def _external_fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _payload_chunks(tensor: onnx.TensorProto, folder: Path) -> Iterator[bytes]:
    """The bytes of a tensor's data: raw_data, or read from its external data file in chunks."""
    if tensor.data_location != 1:
        yield tensor.raw_data
        return
    ext = _external_fields(tensor)
    path = folder / ext["location"]
    offset = int(ext.get("offset", 0))
    length = int(ext["length"]) if "length" in ext else os.path.getsize(path) - offset
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            chunk = f.read(min(length, 1 << 24))
            if not chunk:
                raise MetadataEmbeddingError(f"external data {ext['location']!r} of tensor {tensor.name!r} is shorter "
                                             f"than its graph says")
            length -= len(chunk)
            yield chunk


def _weight(tensor: onnx.TensorProto, folder: Path) -> _Weight:
    """A weight with its content key: data type, dims and SHA-256 of its data."""
    h = hashlib.sha256()
    nbytes = 0
    if tensor.data_location == 1 or tensor.HasField("raw_data"):
        for chunk in _payload_chunks(tensor, folder):
            h.update(chunk)
            nbytes += len(chunk)
    else:  # typed fields (float_data, int64_data, string_data...): hash their serialization
        import onnx

        clone = onnx.TensorProto()
        clone.CopyFrom(tensor)
        clone.ClearField("name")
        data = clone.SerializeToString()
        h.update(b"typed\0" + data)
        nbytes = len(data)
    return _Weight(tensor, folder, (tensor.data_type, tuple(tensor.dims), h.hexdigest()), nbytes)


def _load(path: Path) -> onnx.ModelProto:
    """A part's model, its external data checked to lie in its folder but not loaded."""
    import onnx
    from google.protobuf.message import DecodeError

    check_data_files(path)
    try:
        return onnx.load(os.fspath(path), load_external_data=False)
    except (DecodeError, ValueError) as exc:
        raise MetadataEmbeddingError(f"{path.name} is not a readable ONNX model: {exc}") from None


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def _read(nodes: Sequence[onnx.NodeProto]) -> set[str]:
    """Every name the nodes, and the nodes of their subgraphs, read."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        for sub in _subgraphs(node):
            names |= _read(sub.node)
    return names


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {o.domain or "ai.onnx": o.version for o in model.opset_import}


def _part_from_model(entry: str, path: Path, model: onnx.ModelProto) -> _Part:
    g = model.graph
    weights = {t.name: _weight(t, path.parent) for t in g.initializer}
    return _Part(entry, path.name, list(g.node), [i for i in g.input if i.name not in weights], [(o.name, o) for o in g.output],
                 list(g.value_info), weights, _opsets(model), model.ir_version, list(model.functions))


def _parts_from_merged(path: Path, model: onnx.ModelProto) -> list[_Part]:
    """The two decoders of Optimum's decoder_model_merged.onnx: the branches of its If on use_cache_branch."""
    g = model.graph
    node = g.node[0] if len(g.node) == 1 else None
    if node is None or node.op_type != "If" or list(node.input) != [MERGED_BRANCH_INPUT]:
        raise MetadataEmbeddingError(f"{path.name} is not a merged decoder: expected one If node on {MERGED_BRANCH_INPUT}")
    weights = {t.name: _weight(t, path.parent) for t in g.initializer}
    outputs = {o.name: o for o in g.output}
    parts = []
    for entry, branch_name in (("decoder", "else_branch"), ("decoder_with_past", "then_branch")):
        branch = next(a.g for a in node.attribute if a.name == branch_name)
        used = _read(branch.node)
        kept = [(b.name, outputs.get(name, b)) for b, name in zip(branch.output, node.output)]
        if entry == "decoder_with_past":  # its cross-attention presents are empty placeholders
            kept = [(v, o) for v, o in kept if not (is_present_output(o.name) and is_cross_attention(o.name))]
        own = {t.name: _weight(t, path.parent) for t in branch.initializer}
        parts.append(_Part(
            entry, path.name, list(branch.node),
            [i for i in g.input if i.name in used and i.name != MERGED_BRANCH_INPUT and i.name not in weights],
            kept, list(branch.value_info), {**{n: w for n, w in weights.items() if n in used}, **own},
            _opsets(model), model.ir_version, list(model.functions),
        ))
    return parts


def _hoist_constants(part: _Part) -> None:
    """Turn the part's Constant nodes into weights, shared by content with every other part's.

    onnxruntime shares equal constants (then merges the nodes that use them) only in the main graph;
    in an If branch a T5 decoder keeps ~30 duplicate shape nodes (Unsqueeze, Concat) per call otherwise.
    """
    kept = []
    for node in part.nodes:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None or len(node.attribute) != 1:
            kept.append(node)
            continue
        value.name = node.output[0]
        part.weights[value.name] = _weight(value, Path())
        part.weights[value.name].constant = True
    part.nodes = kept


def _load_parts(folder: Path) -> list[_Part]:
    """The parts of an export folder in entry-point order; separate decoder files are preferred to the merged one."""
    if not is_seq2seq_export(folder):
        found = sorted(p.name for p in folder.glob("*.onnx"))
        raise MetadataEmbeddingError(
            f"{folder} is not an encoder-decoder export: expected {ENCODER_FILE} with {DECODER_FILE}, "
            f"{DECODER_WITH_PAST_FILE} or {DECODER_MERGED_FILE} taking encoder_hidden_states or past_key_values; "
            f"found {', '.join(found) or 'no .onnx files'}"
        )
    parts = [_part_from_model("encoder", folder / ENCODER_FILE, _load(folder / ENCODER_FILE))]
    if (folder / DECODER_FILE).is_file():
        parts.append(_part_from_model("decoder", folder / DECODER_FILE, _load(folder / DECODER_FILE)))
        if (folder / DECODER_WITH_PAST_FILE).is_file():
            parts.append(_part_from_model("decoder_with_past", folder / DECODER_WITH_PAST_FILE,
                                          _load(folder / DECODER_WITH_PAST_FILE)))
    elif (folder / DECODER_MERGED_FILE).is_file():
        parts += _parts_from_merged(folder / DECODER_MERGED_FILE, _load(folder / DECODER_MERGED_FILE))
    else:
        raise MetadataEmbeddingError(
            f"{folder} has {DECODER_WITH_PAST_FILE} but no {DECODER_FILE}: the first decoder step (which computes "
            "the cross-attention past) is missing; export again with Optimum"
        )
    for part in parts:
        _hoist_constants(part)
    return parts


def _dims(value: onnx.ValueInfoProto) -> list[int | str] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]


def _check_fit(parts: Sequence[_Part]) -> None:
    """Refuse parts that do not belong together, naming the files and what does not match: the runtime's check of
    widths and past shapes (check_fit), then what only the files show, opsets and shared weights."""
    check_fit({p.entry: ({i.name: _dims(i) for i in p.inputs}, {o.name: _dims(o) for _, o in p.outputs}) for p in parts},
              {p.entry: p.file for p in parts}, MetadataEmbeddingError)
    by_entry = {p.entry: p for p in parts}
    enc, dec, past = by_entry["encoder"], by_entry.get("decoder"), by_entry.get("decoder_with_past")

    def refuse(a: _Part, b: _Part, what: str) -> MetadataEmbeddingError:
        names = a.file if a.file == b.file else f"{a.file} and {b.file}"
        return MetadataEmbeddingError(f"{names} do not fit together: {what}; are they from the same export?")

    for one, other in ((enc, dec), (enc, past), (dec, past)):
        if one is None or other is None:
            continue
        for domain in sorted(one.opsets.keys() & other.opsets.keys()):
            if one.opsets[domain] != other.opsets[domain]:
                raise refuse(one, other, f"opset {domain} {one.opsets[domain]} in {one.file}, "
                                         f"{other.opsets[domain]} in {other.file}")
    if dec is None or past is None:
        return
    # The two decoders of one export are the same weights; a decoder of another model of the same shape is not.
    shared = {w.key for w in dec.weights.values()}
    total = sum(w.nbytes for w in past.weights.values())
    found = sum(w.nbytes for w in past.weights.values() if w.key in shared)
    if total and found < total / 2:
        raise refuse(dec, past, f"{past.file} shares {found / total:.0%} of its weights with {dec.file} (the decoders of "
                                "one export share them all)")


class _Names:
    """Unique names in one scope: a wanted name, or it with a suffix when taken."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def add(self, name: str, prefix: str = "") -> str:
        candidate, n = name, 0
        while candidate in self.taken:
            n += 1
            candidate = f"{prefix}{name}" if n == 1 and prefix else f"{prefix}{name}~{n}"
        self.taken.add(candidate)
        return candidate


def _defined(graph_nodes: Sequence[onnx.NodeProto]) -> list[str]:
    """Names the nodes (and their subgraphs: inputs, initializers, nodes) define, in order."""
    out: list[str] = []
    for node in graph_nodes:
        out += [n for n in node.output if n]
        for sub in _subgraphs(node):
            out += [i.name for i in sub.input] + [t.name for t in sub.initializer] + _defined(sub.node)
    return out


def _rename_graph_nodes(nodes: Sequence[onnx.NodeProto], names: Mapping[str, str]) -> None:
    """Rename value references in place, subgraphs included."""
    for node in nodes:
        node.input[:] = [names.get(n, n) if n else n for n in node.input]
        node.output[:] = [names.get(n, n) if n else n for n in node.output]
        for sub in _subgraphs(node):
            for value in [*sub.input, *sub.output, *sub.value_info]:
                value.name = names.get(value.name, value.name)
            for tensor in sub.initializer:
                tensor.name = names.get(tensor.name, tensor.name)
            _rename_graph_nodes(sub.node, names)


def _value(name: str, elem_type: int, dims: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, None if dims is None else list(dims))


def _merge_dims(a: Sequence[int | str] | None, b: Sequence[int | str] | None, name: str) -> list[int | str] | None:
    """One declared shape for a value two parts declare: equal dims kept, others symbolic."""
    if a is None or b is None or len(a) != len(b):
        return None
    return [x if x == y else (x if isinstance(x, str) and x else f"{name}_dim{i}") for i, (x, y) in enumerate(zip(a, b))]


def _empty_dims(dims: Sequence[int | str] | None) -> list[int]:
    """The shape of an empty value of a declared shape: symbolic dims 0, fixed ones kept."""
    if not dims:
        return [0]
    return [d if isinstance(d, int) and d > 0 else 0 for d in dims]


@dataclass
class _Built:
    model: onnx.ModelProto
    weights: list[tuple[str, _Weight]]  # (name in the file, weight), unique by content
    layout: dict[str, Any]


def _build(parts: Sequence[_Part]) -> _Built:
    """The one graph: outer inputs with empty defaults, the weights once, If nodes on phase over the parts."""
    from onnx import TensorProto, helper

    scope = _Names()
    scope.taken.add(PHASE_INPUT)
    inputs, input_names = _merged_inputs(parts, scope)
    outputs = _merged_outputs(parts, scope)
    weights, weight_names = _unique_weights(parts, scope)
    conditions = {part.entry: (scope.add(f"{PHASE_INPUT}/{part.entry}"), scope.add(f"{PHASE_INPUT}/is_{part.entry}"))
                  for part in parts}

    # One If per entry point, side by side in the outer graph: its then branch is the part's graph, its
    # else branch empty tensors. A part nested in another If runs up to 2x slower: onnxruntime prepacks
    # (and optimizes with) only the weights of the graph or of its direct parent (docs/FORMAT.md).
    nodes: list[onnx.NodeProto] = []
    for part in parts:
        then_branch, else_branch = _branches(part, {**input_names[part.entry], **weight_names[part.entry]},
                                             outputs[part.entry], scope)
        phase, condition = conditions[part.entry]
        nodes.append(helper.make_node("Constant", [], [phase], value=helper.make_tensor(
            phase, TensorProto.INT64, [], [PHASES[part.entry]])))
        nodes.append(helper.make_node("Equal", [PHASE_INPUT, phase], [condition]))
        nodes.append(helper.make_node("If", [condition], [o.name for o in outputs[part.entry].values()], name=part.entry,
                                      then_branch=then_branch, else_branch=else_branch))
    return _Built(_model(parts, nodes, inputs, outputs), weights, _layout(parts, input_names, outputs))


def _merged_inputs(parts: Sequence[_Part], scope: _Names) -> tuple[dict[str, onnx.ValueInfoProto], dict[str, dict[str, str]]]:
    """The outer inputs: the parts' inputs, one for a name two parts take (their dims merged); a decoder's prefixed
    with decoder_ unless its name says it is a decoder's (decoder_*, encoder_*, past_key_values.*), as transformers
    names them: decoder_input_ids. Returns them by name, and each part's names for its inputs."""
    from onnx import helper

    inputs: dict[str, onnx.ValueInfoProto] = {}
    input_names: dict[str, dict[str, str]] = {}
    for part in parts:
        names = input_names[part.entry] = {}
        for value in part.inputs:
            encoder = part.entry == "encoder"
            name = value.name if encoder or is_decoder_input(value.name) else "decoder_" + value.name
            if encoder and is_decoder_input(name):
                raise MetadataEmbeddingError(f"{part.file} takes {name!r}, a decoder's name (decoder_*, encoder_*, "
                                             "past_key_values.*) in this format; it cannot be the encoder of one file")
            names[value.name] = name
            t = value.type.tensor_type
            if name in inputs:
                known = inputs[name].type.tensor_type
                if known.elem_type != t.elem_type:
                    raise MetadataEmbeddingError(
                        f"{part.file} takes {value.name} as {helper.tensor_dtype_to_np_dtype(t.elem_type)}, the other "
                        f"decoder as {helper.tensor_dtype_to_np_dtype(known.elem_type)}; are they from the same export?")
                inputs[name] = _value(name, t.elem_type, _merge_dims(_dims(inputs[name]), _dims(value), name))
            else:
                if name in scope.taken:
                    raise MetadataEmbeddingError(f"{part.file} has an input named {name!r}, which this format reserves")
                scope.taken.add(name)
                inputs[name] = _value(name, t.elem_type, _dims(value))
    return inputs, input_names


def _merged_outputs(parts: Sequence[_Part], scope: _Names) -> dict[str, dict[str, onnx.ValueInfoProto]]:
    """The outer outputs, by entry point and the name the part gives each: every entry point its own (one node
    defines a graph output). decoder_with_past's are prefixed with its name (decoder_with_past.logits), as is any
    other name an earlier entry point already gives."""
    outputs: dict[str, dict[str, onnx.ValueInfoProto]] = {}
    for part in parts:
        own = outputs[part.entry] = {}
        for _, value in part.outputs:
            prefix = f"{part.entry}."
            name = scope.add(prefix + value.name if part.entry == "decoder_with_past" else value.name, prefix=prefix)
            own[value.name] = _value(name, value.type.tensor_type.elem_type, _dims(value))
    return outputs


def _unique_weights(parts: Sequence[_Part],
                    scope: _Names) -> tuple[list[tuple[str, _Weight]], dict[str, dict[str, str]]]:
    """The weights, once per content, named as their first part names them; those no node reads are dropped.
    Returns them with their names, and each part's names for its weights."""
    unique: dict[tuple[int, tuple[int, ...], str], str] = {}
    weights: list[tuple[str, _Weight]] = []
    weight_names: dict[str, dict[str, str]] = {}
    for part in parts:
        names = weight_names[part.entry] = {}
        read = _read(part.nodes) | {v for v, _ in part.outputs}
        for old, weight in part.weights.items():
            if old not in read:
                continue
            if weight.key not in unique:
                unique[weight.key] = scope.add(old, prefix=f"{part.entry}/")
                weights.append((unique[weight.key], weight))
            names[old] = unique[weight.key]
    return weights, weight_names


def _branches(part: _Part, outer: Mapping[str, str], outputs: Mapping[str, onnx.ValueInfoProto],
              scope: _Names) -> tuple[onnx.GraphProto, onnx.GraphProto]:
    """The If branches of a part's entry point: then the part's graph, every value it defines named uniquely in the
    scope; else empty tensors for its outputs. outer: the part's names for its inputs and weights; outputs: the
    entry point's outer outputs."""
    from onnx import helper

    names = dict(outer)
    for old in _defined(part.nodes):
        if old not in names:
            names[old] = scope.add(old, prefix=f"{part.entry}/") if old in scope.taken else old
    _rename_graph_nodes(part.nodes, names)
    defined = {n for node in part.nodes for n in node.output}
    branch_nodes, branch_outputs, empty_nodes, empty_outputs = list(part.nodes), [], [], []
    for produced, declared in part.outputs:
        source, out = names.get(produced, produced), outputs[declared.name]
        elem = declared.type.tensor_type.elem_type
        if source not in defined:  # a branch output must be a value the branch defines, once
            copy = scope.add(f"{part.entry}/{declared.name}")
            branch_nodes.append(helper.make_node("Identity", [source], [copy]))
            source = copy
        defined.discard(source)
        branch_outputs.append(_value(source, elem, _dims(declared)))
        empty = scope.add(f"{part.entry}/empty/{declared.name}")
        dims = _empty_dims(_dims(out))
        empty_nodes.append(helper.make_node("Constant", [], [empty], value=helper.make_tensor(empty, elem, dims, vals=[])))
        empty_outputs.append(_value(empty, elem, dims))
    value_info = []
    for value in part.value_info:
        if value.name in names and value.name not in outer:
            value.name = names[value.name]
            value_info.append(value)
    return (helper.make_graph(branch_nodes, part.entry, [], branch_outputs, value_info=value_info),
            helper.make_graph(empty_nodes, f"not_{part.entry}", [], empty_outputs))


def _model(parts: Sequence[_Part], nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, onnx.ValueInfoProto],
           outputs: Mapping[str, Mapping[str, onnx.ValueInfoProto]]) -> onnx.ModelProto:
    """The model of the outer graph (phase and the inputs with empty defaults, every entry point's outputs), with
    the parts' opsets and functions and the newest IR version among them."""
    from onnx import TensorProto, helper

    defaults = [helper.make_tensor(name, value.type.tensor_type.elem_type, _empty_dims(_dims(value)), vals=[])
                for name, value in inputs.items()]
    graph = helper.make_graph(
        nodes, "encoder-decoder", [_value(PHASE_INPUT, TensorProto.INT64, []), *inputs.values()],
        [value for part in parts for value in outputs[part.entry].values()],
        initializer=defaults,
    )
    opsets: dict[str, int] = {}
    for part in parts:
        opsets.update(part.opsets)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in sorted(opsets.items())],
        functions=_functions(parts),
    )
    model.ir_version = max(p.ir_version for p in parts)
    return model


def _functions(parts: Sequence[_Part]) -> list[onnx.FunctionProto]:
    """The parts' model-local functions, each once; parts that define one differently cannot share a file."""
    functions: dict[tuple[str, str, str], onnx.FunctionProto] = {}
    for part in parts:
        for function in part.functions:
            key = (function.domain, function.name, function.overload)
            if key in functions and functions[key].SerializeToString() != function.SerializeToString():
                raise MetadataEmbeddingError(f"{part.file} defines function {function.domain}:{function.name} unlike "
                                             "another part does; the parts cannot share one file")
            functions[key] = function
    return list(functions.values())


def _layout(parts: Sequence[_Part], input_names: Mapping[str, Mapping[str, str]],
            outputs: Mapping[str, Mapping[str, onnx.ValueInfoProto]]) -> dict[str, Any]:
    """hf_graph_layout: each entry point's inputs and outputs (the part's names -> the file's) and phase, and the
    past/present pairs of decoder_with_past."""
    past = next((p for p in parts if p.entry == "decoder_with_past"), None)
    return {
        "phase_input": PHASE_INPUT,
        "entry_points": {part.entry: {"inputs": input_names[part.entry],
                                      "outputs": {r: v.name for r, v in outputs[part.entry].items()},
                                      "phase": PHASES[part.entry]} for part in parts},
        "past": past_pairs([v.name for v in past.inputs if is_past_input(v.name)] if past else []),
    }


@dataclass
class MergeReport:
    """What merge_export wrote."""

    output_path: str
    data_file: str | None
    """The external data file beside the output (relative name), or None when the weights are in the file."""
    layout: dict[str, Any]
    unique_weight_bytes: int
    """The export's weights counted once by content: the floor for any one-file form."""
    file_bytes: int
    """The output's size, its data file included."""
    export_bytes: int
    """The size of the export's graph files (and their data files) that were merged."""


def _export_config(model: onnx.ModelProto) -> dict[str, Any]:
    """model_info's facts of a model not yet written: what rt.model_info will read from the file."""
    info: dict[str, Any] = {"ir_version": model.ir_version, "opset_import": _opsets(model)}
    for name in ("producer_name", "producer_version"):
        if model.HasField(name):
            info[name] = getattr(model, name)
    return info


def _write_data(path: Path, weights: Sequence[tuple[_Weight, int]], mode_from: Path) -> None:
    """Write the external data file: each weight's bytes at its offset, atomically."""

    def write(fd: int, tmp: str) -> None:
        for weight, offset in weights:
            pos = offset
            for chunk in _data_chunks(weight):
                fileio.pwrite_all(fd, chunk, pos)
                pos += len(chunk)

    fileio.atomic_write(path, write, mode_from)


def _data_chunks(weight: _Weight) -> Iterator[bytes]:
    """A weight's bytes as external data holds them: raw, whether stored raw, external or in typed fields."""
    if weight.external or weight.tensor.HasField("raw_data"):
        yield from _payload_chunks(weight.tensor, weight.folder)
    else:
        from onnx import numpy_helper

        yield numpy_helper.to_array(weight.tensor).tobytes()


def merge_export(
    folder: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    metadata: Mapping[str, Any],
    *,
    compress_threshold: int | None = rt.DEFAULT_COMPRESS_THRESHOLD,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> MergeReport:
    """Merge an encoder-decoder export folder into ONE ONNX file with metadata (as discovered) embedded.

    output defaults to ``<folder>/model.onnx``. Weights go to ``<output name>_data`` beside it when they
    exceed external_data_threshold bytes (a ModelProto cannot exceed 2 GiB). The file is written to a
    temp file, fsynced and renamed over output (its data file first), so output is always whole.
    """
    folder = Path(folder)
    dst = Path(output) if output is not None else folder / DEFAULT_OUTPUT_NAME
    parts = _load_parts(folder)
    _check_fit(parts)
    export_bytes = _export_bytes(folder, parts)
    built = _build(parts)
    unique_bytes = sum(w.nbytes for _, w in built.weights if not w.constant)
    data_name = f"{dst.name}_data" if sum(w.nbytes for _, w in built.weights) > external_data_threshold else None
    to_data = _store_weights(built, data_name)
    encoder = folder / next(p for p in parts if p.entry == "encoder").file
    data = _serialized(built, encoder, metadata, compress_threshold)

    for name in fileio.remove_stale_temps(dst):
        logger.info("removed %s, left by a merge that was killed", name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if data_name is not None:
        # Before the model: a model never points at missing data.
        _write_data(dst.parent / data_name, to_data, encoder)

    def write(fd: int, tmp: str) -> None:
        fileio.pwrite_all(fd, data, 0)
        if os.path.getsize(tmp) != len(data):
            raise MetadataEmbeddingError(f"wrote {os.path.getsize(tmp)} bytes of {len(data)}; nothing was replaced")
        written = rt.read_metadata(tmp, verify=True)
        if written.get(KEY_GRAPH_LAYOUT) != built.layout:
            raise MetadataEmbeddingError("the written file does not read back its layout; nothing was replaced")

    fileio.atomic_write(dst, write, encoder)
    size = dst.stat().st_size + ((dst.parent / data_name).stat().st_size if data_name else 0)
    return MergeReport(os.fspath(dst), data_name, built.layout, unique_bytes, size, export_bytes)


def _export_bytes(folder: Path, parts: Sequence[_Part]) -> int:
    """The size of the export's graph files that are merged and of the data files their weights are in."""
    sources = {folder / p.file for p in parts}
    return sum(p.stat().st_size for p in sources) + sum(
        (folder / loc).stat().st_size for loc in {_external_fields(w.tensor)["location"] for p in parts
                                                  for w in p.weights.values() if w.external})


def _store_weights(built: _Built, data_name: str | None) -> list[tuple[_Weight, int]]:
    """Add the weights to the model's initializers: in the graph, or (with a data file named data_name) those over
    _INLINE_MAX bytes as references into it at aligned offsets. Returns the weights to write there, with their offsets."""
    import onnx

    to_data: list[tuple[_Weight, int]] = []
    offset = 0
    for name, weight in built.weights:
        tensor = built.model.graph.initializer.add()
        if data_name is not None and weight.nbytes > _INLINE_MAX and weight.tensor.data_type != onnx.TensorProto.STRING:
            tensor.name, tensor.data_type = name, weight.tensor.data_type
            tensor.dims[:] = weight.tensor.dims
            offset = -(-offset // _ALIGN) * _ALIGN
            length = sum(len(chunk) for chunk in _data_chunks(weight)) if not weight.external else weight.nbytes
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            to_data.append((weight, offset))
            offset += length
        else:
            tensor.CopyFrom(weight.tensor)
            weight.tensor.ClearField("raw_data")  # the copy is the one kept: at most one copy of the weights in memory
            tensor.name = name
            if weight.external:
                tensor.raw_data = b"".join(_payload_chunks(weight.tensor, weight.folder))
                tensor.ClearField("external_data")
                tensor.ClearField("data_location")
    return to_data


def _serialized(built: _Built, encoder: Path, metadata: Mapping[str, Any], compress_threshold: int | None) -> bytes:
    """The merged model's bytes: the producer of the encoder's file, and the metadata with the layout and
    export_config embedded."""
    import onnx

    model = built.model
    source = onnx.load(os.fspath(encoder), load_external_data=False)
    if source.producer_name:
        model.producer_name, model.producer_version = source.producer_name, source.producer_version
    del source
    full = {**metadata, KEY_GRAPH_LAYOUT: built.layout, rt.KEY_EXPORT_CONFIG: _export_config(model)}
    for key, value in rt.encode_metadata(full, compress_threshold=compress_threshold):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()
