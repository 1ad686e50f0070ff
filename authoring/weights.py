"""Smaller graphs: tied weights stored once, and weight quantization (int4, int8, fp16, q4f16).

Everything here works on ONE graph file (a one-graph export, or each part of an encoder-decoder before the
merge) loaded with onnx, and writes a new file; onnxruntime's own kernels do the numeric work
(``MatMulNBits``/``GatherBlockQuantized`` weights from its weight-only quantizer, float16 from its converter).

* Tied weights: exporters write a tied output projection as a second, transposed copy of the embedding table
  (GPT-2's ``lm_head``, Whisper's ``proj_out``, T5's and BART's ``lm_head``). ``tie_weights`` finds initializers
  equal to another one, or to its transpose, and keeps one: the projection reads ``Transpose(table)``, which
  onnxruntime folds when the session loads (the file stores the table once).
* int4: every MatMul (and Gemm) with a constant weight becomes ``MatMulNBits`` (blocks along the reduced axis,
  symmetric by default, ``accuracy_level`` 4: int8 compute, the fast CPU kernels) and token embedding tables (looked
  up by the graph's input_ids; position tables stay float) ``GatherBlockQuantized``; a tied table is quantized once
  and shared by the lookup and the projection, as onnxruntime-genai's builder shares it (``shared_embeddings``).
  ``lm_head="int8"`` keeps the projection in 8 bits.
* int8: the same in 8 bits (weight-only ``MatMulNBits``) for generating graphs; export quantizes the others with
  onnxruntime's dynamic quantization instead (``export.quantize_graph``), which measured faster there.
* fp16: weights and compute in float16, the graph's inputs and outputs kept float32 except the past key values
  (the runtime feeds float16 pasts); onnxruntime inserts casts where its CPU kernels have no float16 version.
  q4f16: fp16, then int4 weights with float16 scales (for GPUs).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataExtractionError

if TYPE_CHECKING:
    import numpy as np
    import onnx

logger = logging.getLogger("onnxmeta")

QUANTIZE_MODES = ("int4", "int8", "fp16", "q4f16")
"""--quantize's modes: int4 weights (MatMulNBits), int8 (weight-only MatMulNBits for generating graphs, onnxruntime's
dynamic quantization for the others: each where it measured faster), float16, int4 weights with float16 compute."""
QUANTIZE_ALIASES = {"dynamic-int8": "int8"}
BLOCK_SIZES = (16, 32, 64, 128, 256)
LM_HEAD_BITS = ("int4", "int8")
_MIN_TABLE = 1 << 10  # copies of matrices smaller than this are not looked for: nothing to gain
_MIN_ROWS = 256  # a token embedding has a vocabulary's rows; a token-type table's few stay float
_EXTERNAL_LIMIT = 1_800_000_000  # protobuf's 2 GB, with room for the graph: larger models keep external data


@dataclass(frozen=True)
class Quantization:
    """What ``--quantize`` asks for: the mode and, for the weight-only modes, their settings."""

    mode: str
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int | None = None
    """MatMulNBits' compute type: 4 = int8 (onnxruntime-genai's CPU default), 0 = the input's type; None = the mode's."""
    lm_head: str = "int4"
    """The output projection's bits in int4 mode: int4, or int8 (onnxruntime-genai's int8 last MatMul)."""

    def __post_init__(self) -> None:
        if self.mode in QUANTIZE_ALIASES:
            object.__setattr__(self, "mode", QUANTIZE_ALIASES[self.mode])
        if self.mode not in QUANTIZE_MODES:
            choices = ", ".join([*QUANTIZE_MODES, *QUANTIZE_ALIASES])
            raise MetadataExtractionError(f"unknown quantization {self.mode!r}; choose {choices}")
        if self.block_size not in BLOCK_SIZES:
            raise MetadataExtractionError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                                          f"got {self.block_size}")
        if self.lm_head not in LM_HEAD_BITS:
            raise MetadataExtractionError(f"--lm-head must be {' or '.join(LM_HEAD_BITS)}, got {self.lm_head!r}")
        if self.accuracy_level is not None and self.accuracy_level not in range(5):
            raise MetadataExtractionError(f"--accuracy-level must be 0 to 4, got {self.accuracy_level}")

    @property
    def bits(self) -> int:
        return 8 if self.mode == "int8" else 4

    @property
    def level(self) -> int:
        """The accuracy level written into MatMulNBits: int8 compute on CPU unless the weights are float16's."""
        if self.accuracy_level is not None:
            return self.accuracy_level
        return 0 if self.mode == "q4f16" else 4

    def settings(self, dynamic: bool = False) -> dict[str, Any]:
        """What export_config records; dynamic: int8 as onnxruntime's dynamic quantization."""
        out: dict[str, Any] = {"mode": self.mode}
        if dynamic:
            out["method"] = "dynamic"
        elif self.mode in ("int4", "int8", "q4f16"):
            out["method"] = "weight-only"
            out.update(bits=self.bits, block_size=self.block_size, symmetric=self.symmetric, accuracy_level=self.level,
                       op_types=["MatMul", "Gather"], format="MatMulNBits")
            if self.mode != "int8":
                out["lm_head_bits"] = 8 if self.lm_head == "int8" else 4
        if self.mode in ("fp16", "q4f16"):
            out["float16"] = "weights and compute; float32 inputs and outputs but the past key values"
        return out


# ------------------------------------------------------------------------------------------------------
# Loading and saving one graph
# ------------------------------------------------------------------------------------------------------

def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The graph with its external data (if any) in memory."""
    import onnx

    return onnx.load(os.fspath(path), load_external_data=True)


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write the graph: one file when it fits protobuf's 2 GB, else with its tensors in path + ".data"."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > _EXTERNAL_LIMIT
    onnx.save_model(model, os.fspath(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=f"{path.name}.data" if large else None, size_threshold=1024)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph in it (If branches, Loop bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graphs(sub)


def _uses(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Every (node, input index) that reads each value, subgraphs included."""
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            for index, name in enumerate(node.input):
                out.setdefault(name, []).append((node, index))
    return out


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def _is_float(tensor: onnx.TensorProto) -> bool:
    import onnx

    return tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def _unique_names(model: onnx.ModelProto) -> None:
    """Name the nodes that have none (the quantizers name their replacements after the node)."""
    taken = {node.name for graph in _graphs(model.graph) for node in graph.node}
    count = 0
    for graph in _graphs(model.graph):
        for node in graph.node:
            if not node.name:
                while f"{node.op_type}_{count}" in taken:
                    count += 1
                node.name = f"{node.op_type}_{count}"
                taken.add(node.name)


# ------------------------------------------------------------------------------------------------------
# Tied weights stored once
# ------------------------------------------------------------------------------------------------------

def _digest(array: np.ndarray) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _remove_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    kept = [t for t in graph.initializer if t.name not in names]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in names]
    graph.ClearField("input")
    graph.input.extend(inputs)


def tie_weights(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Store once what an exporter stored twice: initializers equal to another (readers read the first), and a
    projection's weight equal to an embedding table's transpose (the projection reads ``Transpose(table)``, which
    onnxruntime folds when the session loads). Returns what was tied."""
    import onnx

    graph = model.graph
    uses = _uses(model)
    arrays = {t.name: _array(t) for t in graph.initializer
              if _is_float(t) and len(t.dims) == 2 and t.dims[0] * t.dims[1] >= _MIN_TABLE}
    tied: list[dict[str, Any]] = []
    first: dict[tuple[str, str, tuple[int, ...]], str] = {}
    for name, array in arrays.items():
        kept = first.setdefault((_digest(array), str(array.dtype), array.shape), name)
        if kept != name:
            for node, index in uses.get(name, []):
                node.input[index] = kept
            tied.append({"copy": name, "kept": kept, "transposed": False, "bytes": int(array.nbytes)})
    remaining = {name: arrays[name] for name in first.values()}
    uses = _uses(model)  # the copies' readers now read the kept ones
    tables = {(_digest(array), str(array.dtype), array.shape): name for name, array in remaining.items()
              if any(node.op_type == "Gather" and index == 0 for node, index in uses.get(name, []))}
    table_shapes = {shape for _, _, shape in tables}
    for name, array in remaining.items():
        readers = uses.get(name, [])
        if array.T.shape not in table_shapes or not readers or any(
                (node.op_type, index) not in (("MatMul", 1),) for node, index in readers):
            continue
        table = tables.get((_digest(array.T), str(array.dtype), array.T.shape))
        if table is None:
            continue
        source = f"{table}_transposed"
        if not any(source in node.output for node in graph.node):
            graph.node.insert(0, onnx.helper.make_node("Transpose", [table], [source], name=source, perm=[1, 0]))
        for node, index in readers:
            node.input[index] = source
        tied.append({"copy": name, "kept": table, "transposed": True, "bytes": int(array.nbytes)})
    _remove_initializers(graph, {t["copy"] for t in tied})
    return tied


# ------------------------------------------------------------------------------------------------------
# Weight-only quantization: MatMulNBits and GatherBlockQuantized
# ------------------------------------------------------------------------------------------------------

class _Packed:
    """One weight quantized in blocks along its reduced axis, as MatMulNBits stores it: data [N, blocks, blob]
    (uint8), scales [N, blocks], zero points (asymmetric only); an embedding table is its transpose's packing."""

    def __init__(self, prefix: str, k: int, n: int, bits: int, has_zero_points: bool) -> None:
        self.data, self.scales = f"{prefix}_Q{bits}", f"{prefix}_scales"
        self.zero_points = f"{prefix}_zero_points" if has_zero_points else None
        self.k, self.n, self.bits = k, n, bits

    def inputs(self) -> list[str]:
        return [self.scales, *([self.zero_points] if self.zero_points else [])]


class _WeightQuantizer:
    """Replaces the float MatMuls and Gathers of a graph by their block-quantized forms, each weight packed once
    however many nodes read it (a tied table: the lookup and the output projection)."""

    def __init__(self, model: onnx.ModelProto, q: Quantization) -> None:
        self.model, self.q = model, q
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        # Transpose(initializer) outputs: what tie_weights gives a tied projection to read
        self.transposed = {n.output[0]: n.input[0] for n in self.graph.node if n.op_type == "Transpose"
                           and n.input[0] in self.initializers and _perm(n) in (None, [1, 0])}
        self.inputs = {i.name for i in self.graph.input} - set(self.initializers)
        # tables a MatMul reads transposed: tied to a projection (tie_weights)
        self.tied = {self.transposed[n.input[1]] for g in _graphs(self.graph) for n in g.node
                     if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in self.transposed}
        self.producers = {o: n for g in _graphs(self.graph) for n in g.node for o in n.output}
        self.packed: dict[tuple[str, int], _Packed] = {}
        self.shapes: dict[str, str] = {}
        self.prefix: list[onnx.NodeProto] = []  # nodes the main graph starts with: the Reshapes of packed tables
        self.counts = {"MatMulNBits": 0, "GatherBlockQuantized": 0}
        projection = _output_projection(model)
        self.head = projection.name if projection is not None else None
        self.head_bits = 8 if q.lm_head == "int8" or q.bits == 8 else q.bits
        # a table read by the projection (tied) is packed once, in the projection's bits
        head_weight = self._weight(projection) if projection is not None else None
        self.table_bits = {head_weight[0]: self.head_bits} if head_weight is not None and head_weight[1] else {}

    def _weight(self, node: onnx.NodeProto) -> tuple[str, bool] | None:
        """A MatMul's constant 2D float weight: (initializer, read transposed), or None."""
        name = node.input[1] if len(node.input) > 1 else ""
        source, transposed = (self.transposed[name], True) if name in self.transposed else (name, False)
        tensor = self.initializers.get(source)
        if tensor is None or not _is_float(tensor) or len(tensor.dims) != 2:
            return None
        return source, transposed

    def pack(self, name: str, bits: int) -> _Packed:
        """The packing of initializer name read as a [K, N] weight transposed from its [N, K] storage, or as is."""
        import numpy as np
        from onnx import numpy_helper
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            DefaultWeightOnlyQuantizer,
        )

        key = (name, bits)
        if key in self.packed:
            return self.packed[key]
        weight = _array(self.initializers[name])
        dtype = weight.dtype
        matrix = np.ascontiguousarray(weight.astype(np.float32))
        config = DefaultWeightOnlyQuantConfig(block_size=self.q.block_size, is_symmetric=self.q.symmetric, bits=bits)
        data, scales, zero_points = DefaultWeightOnlyQuantizer(config).qbits_block_quant(matrix)
        packed = _Packed(name, matrix.shape[0], matrix.shape[1], bits, not self.q.symmetric)
        self.graph.initializer.extend([numpy_helper.from_array(data, packed.data),
                                       numpy_helper.from_array(scales.astype(dtype), packed.scales)])
        if packed.zero_points:
            self.graph.initializer.append(numpy_helper.from_array(zero_points, packed.zero_points))
        self.packed[key] = packed
        return packed

    def matmul(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        import onnx

        found = self._weight(node)
        if found is None:
            return None
        name, transposed = found
        bits = self.head_bits if node.name == self.head else self.table_bits.get(name, self.q.bits)
        packed = self.pack_as_matmul(name, transposed, bits)
        self.counts["MatMulNBits"] += 1
        return [onnx.helper.make_node(
            "MatMulNBits", [node.input[0], packed.data, *packed.inputs()], list(node.output), name=f"{node.name}_Q{bits}",
            domain="com.microsoft", K=packed.k, N=packed.n, bits=bits, block_size=self.q.block_size,
            accuracy_level=self.q.level)]

    def gemm(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """Gemm(A, B, C) as exporters write a Linear of 2D inputs (GPT-2's Conv1D): MatMulNBits with C as its bias."""
        import onnx

        if (_attribute(node, "alpha", 1.0) != 1.0 or _attribute(node, "beta", 1.0) != 1.0
                or _attribute(node, "transA", 0) != 0 or len(node.input) < 2):
            return None
        name = node.input[1]
        tensor = self.initializers.get(name)
        if tensor is None or not _is_float(tensor) or len(tensor.dims) != 2:
            return None
        transposed = bool(_attribute(node, "transB", 0))
        bits = self.head_bits if node.name == self.head else self.q.bits
        packed = self.pack_as_matmul(name, transposed, bits)
        bias = node.input[2] if len(node.input) > 2 else ""
        bias_tensor = self.initializers.get(bias)
        one_d = bias and bias_tensor is not None and list(bias_tensor.dims) == [packed.n]
        inputs = [node.input[0], packed.data, packed.scales, packed.zero_points or "", "", bias if one_d else ""]
        output = node.output[0] if not bias or one_d else f"{node.output[0]}_unbiased"
        self.counts["MatMulNBits"] += 1
        nodes = [onnx.helper.make_node(
            "MatMulNBits", inputs[:3] + (inputs[3:] if any(inputs[3:]) else []), [output],
            name=f"{node.name}_Q{bits}", domain="com.microsoft", K=packed.k, N=packed.n, bits=bits,
            block_size=self.q.block_size, accuracy_level=self.q.level)]
        if bias and not one_d:
            nodes.append(onnx.helper.make_node("Add", [output, bias], list(node.output), name=f"{node.name}_bias"))
        return nodes

    def pack_as_matmul(self, name: str, transposed: bool, bits: int) -> _Packed:
        """A MatMul weight [K, N]: stored as is, or the transpose of a table [N, K] (packed as the table is)."""
        if transposed:
            return self.pack_table(name, bits)
        return self.pack(name, bits)

    def pack_table(self, name: str, bits: int) -> _Packed:
        """An embedding table [V, H], packed as the [H, V] projection that reads its transpose: data [V, blocks, blob]."""
        import numpy as np
        from onnx import numpy_helper

        key = (f"{name}^T", bits)
        if key in self.packed:
            return self.packed[key]
        tensor = self.initializers[name]
        transposed_name = f"{name}_T"
        if transposed_name not in self.initializers:
            self.initializers[transposed_name] = numpy_helper.from_array(np.ascontiguousarray(_array(tensor).T),
                                                                         transposed_name)
        packed = self.pack(transposed_name, bits)
        self.packed[key] = packed
        return packed

    def gather(self, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """A token embedding: a float table looked up by token ids the graph takes (input_ids), not a position
        table (a Range) nor a shape's element, or a table tied to a projection (packed for it anyway); whole blocks
        along its width."""
        import onnx

        tensor = self.initializers.get(node.input[0])
        if (tensor is None or not _is_float(tensor) or len(tensor.dims) != 2 or tensor.dims[0] < _MIN_ROWS
                or tensor.dims[1] % self.q.block_size or _attribute(node, "axis", 0) != 0
                or (self.token_ids(node.input[1]) is None and tensor.name not in self.tied)):
            return None
        bits = self.table_bits.get(tensor.name, self.q.bits)
        packed = self.pack_table(tensor.name, bits)
        rows, width = int(tensor.dims[0]), int(tensor.dims[1]) * bits // 8
        shape = self.shapes.get(packed.data)
        if shape is None:  # MatMulNBits' [V, blocks, blob] read as GatherBlockQuantized's [V, H * bits / 8]
            shape = self.shapes[packed.data] = f"{packed.data}_rows"
            self.graph.initializer.append(onnx.numpy_helper.from_array(_int64([rows, width]), f"{shape}_shape"))
            self.prefix.append(onnx.helper.make_node("Reshape", [packed.data, f"{shape}_shape"], [shape],
                                                     name=f"{shape}_Reshape"))
        self.counts["GatherBlockQuantized"] += 1
        return [onnx.helper.make_node(
            "GatherBlockQuantized", [shape, node.input[1], *packed.inputs()], list(node.output), name=f"{node.name}_Q{bits}",
            domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=self.q.block_size, bits=bits)]

    def token_ids(self, name: str) -> str | None:
        """The graph input a Gather's indices are (through casts and reshapes), or None."""
        for _ in range(6):
            if name in self.inputs:
                return name
            producer = self.producers.get(name)
            if producer is None or producer.op_type not in ("Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"):
                return None
            name = producer.input[0]
        return None

    def run(self) -> dict[str, Any]:
        import onnx

        # subgraphs first: rebuilding a graph's node list copies its nodes, and their subgraphs with them
        graphs = list(_graphs(self.graph))
        for index in reversed(range(len(graphs))):
            graph = graphs[index]
            nodes: list[onnx.NodeProto] = []
            for node in graph.node:
                replaced = self.matmul(node) if node.op_type == "MatMul" else self.gemm(node) if node.op_type == "Gemm" \
                    else self.gather(node) if node.op_type == "Gather" else None
                nodes.extend(replaced if replaced is not None else [node])
            graph.ClearField("node")
            graph.node.extend([*self.prefix, *nodes] if index == 0 else nodes)
        _drop_unused(self.model)
        if not any(o.domain == "com.microsoft" for o in self.model.opset_import):
            self.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        return {"nodes": dict(self.counts), "lm_head": self.head, "lm_head_bits": self.head_bits if self.head else None}


def _perm(node: onnx.NodeProto) -> list[int] | None:
    value = _attribute(node, "perm", None)
    return list(value) if value is not None else None


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _int64(values: list[int]) -> np.ndarray:
    import numpy as np

    return np.array(values, dtype=np.int64)


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove the initializers nothing reads any more, and the Transposes of tied tables nothing reads."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = set(_uses(model)) | outputs
        dead = [n for n in model.graph.node if n.op_type in ("Transpose", "Reshape") and not set(n.output) & read
                and all(i in {t.name for t in model.graph.initializer} for i in n.input)]
        if not dead:
            break
        kept = [n for n in model.graph.node if n not in dead]
        model.graph.ClearField("node")
        model.graph.node.extend(kept)
    read = set(_uses(model)) | outputs
    _remove_initializers(model.graph, {t.name for t in model.graph.initializer if t.name not in read})


def _output_projection(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The MatMul that computes the logits output (the language-model head), through the elementwise and shape
    nodes after it; None when the graph has no logits."""
    producer = {o: n for n in model.graph.node for o in n.output}
    initializers = {t.name for t in model.graph.initializer}
    name = next((o.name for o in model.graph.output if o.name == "logits"), None)
    for _ in range(8):
        node = producer.get(name or "")
        if node is None:
            return None
        if node.op_type == "MatMul":
            return node
        name = next((i for i in node.input if i and i not in initializers), None)
    return None


def token_tables(model: onnx.ModelProto) -> set[str]:
    """The tables a graph looks up by the token ids it takes (its input_ids, through casts and reshapes)."""
    finder = _WeightQuantizer(model, Quantization("int4"))
    return {n.input[0] for g in _graphs(model.graph) for n in g.node
            if n.op_type == "Gather" and n.input[0] in finder.initializers and finder.token_ids(n.input[1]) is not None}


def quantize_weights(model: onnx.ModelProto, q: Quantization) -> dict[str, Any]:
    """int4 / int8 weight-only quantization of the graph in place (tie_weights first, so that a tied table is packed
    once); returns what was replaced."""
    _unique_names(model)
    return _WeightQuantizer(model, q).run()


# ------------------------------------------------------------------------------------------------------
# float16
# ------------------------------------------------------------------------------------------------------

def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and compute in float16 (onnxruntime's converter), the float inputs and outputs kept float32 but the
    past key values (the runtime feeds float16 pasts as the graph declares them)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep = [v.name for v in [*model.graph.input, *model.graph.output]
            if not (rt.is_past_input(v.name) or rt.is_present_output(v.name))]
    large = model.ByteSize() > _EXTERNAL_LIMIT  # onnx's in-memory shape inference stops at 2 GB
    converted: onnx.ModelProto = convert_float_to_float16(model, keep_io_types=keep, disable_shape_infer=large)
    return converted


# ------------------------------------------------------------------------------------------------------
# One file in, one file out
# ------------------------------------------------------------------------------------------------------

def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """The values a subgraph reads from the graphs around it (not made inside it)."""
    made = {o for sub in _graphs(graph) for n in sub.node for o in n.output} | {i.name for i in graph.input} | {
        t.name for sub in _graphs(graph) for t in sub.initializer}
    return {name for sub in _graphs(graph) for n in sub.node for name in n.input if name and name not in made}


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the nodes so that each comes after the nodes that make its inputs (its subgraphs' outer reads
    included): onnxruntime sorts a main graph itself, but not an If branch, which an encoder-decoder's merge makes of
    each part; onnxruntime's float16 converter appends the Casts it inserts."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    needs: list[set[int]] = []
    for node in nodes:
        reads = set(node.input) | {r for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)
                                    for r in _outer_reads(g)}
        needs.append({producer[r] for r in reads if r in producer})
    waiting = [len(n) for n in needs]
    readers: list[list[int]] = [[] for _ in nodes]
    for i, need in enumerate(needs):
        for j in need:
            readers[j].append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)  # Kahn's algorithm, the original order among the nodes that are ready
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in readers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):  # a cycle (an invalid graph): leave it as it was
        return
    graph.ClearField("node")
    graph.node.extend(nodes[i] for i in order)


def shrink(src: str | os.PathLike[str], dst: str | os.PathLike[str], quantization: Quantization | None) -> dict[str, Any]:
    """Tie the weights of the graph in src, quantize it (int4, weight-only int8, fp16, q4f16; dynamic int8 is
    export.quantize_graph's), write dst; returns what export_config records."""
    model = load(src)
    tied = tie_weights(model)
    out: dict[str, Any] = {"tied": tied}
    if quantization is not None and quantization.mode in ("fp16", "q4f16"):
        model = to_float16(model)
    if quantization is not None and quantization.mode in ("int4", "int8", "q4f16"):
        out["quantized"] = quantize_weights(model, quantization)
    sort_nodes(model.graph)
    save(model, dst)
    return out
