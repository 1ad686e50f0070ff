"""authoring.weights on hand-built graphs: tied weights stored once, int4/int8 block quantization with a tied table
packed once and shared by the lookup and the projection, Gemm with a bias, subgraphs, float16 with float32 inputs
and outputs but the past key values. Every quantized graph is run against its float32 twin."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from authoring import weights
from authoring.weights import Quantization

V, H = 1024, 64  # vocabulary and hidden size: a table large enough to be quantized (>= 65536 values)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def tied_lm(seed: int = 0, *, transposed_copy: bool = True, gemm_head: bool = False) -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMul(W1) -> logits = MatMul(., table^T stored again as its own initializer), as
    exporters write a tied language-model head; gemm_head: the head as Gemm(transB=1) on a copy of the table."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((V, H)).astype(np.float32)
    hidden = (rng.standard_normal((H, H)) / 8).astype(np.float32)
    inits = [numpy_helper.from_array(table, "embed.weight"), numpy_helper.from_array(hidden, "layer.weight")]
    nodes = [helper.make_node("Gather", ["embed.weight", "input_ids"], ["embedded"], name="embed"),
             helper.make_node("MatMul", ["embedded", "layer.weight"], ["hidden"], name="layer")]
    if gemm_head:
        inits.append(numpy_helper.from_array(table.copy(), "head.weight"))
        nodes += [helper.make_node("Reshape", ["hidden", "flat"], ["hidden2d"], name="flatten"),
                  helper.make_node("Gemm", ["hidden2d", "head.weight", "head.bias"], ["logits2d"], name="head", transB=1),
                  helper.make_node("Reshape", ["logits2d", "shape"], ["logits"], name="unflatten")]
        inits += [numpy_helper.from_array(np.array([-1, H], np.int64), "flat"),
                  numpy_helper.from_array(np.array([1, -1, V], np.int64), "shape"),
                  numpy_helper.from_array(rng.standard_normal(V).astype(np.float32), "head.bias")]
    else:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(table.T) if transposed_copy else table.T.copy(), "head.weight"))
        nodes.append(helper.make_node("MatMul", ["hidden", "head.weight"], ["logits"], name="head"))
    graph = helper.make_graph(nodes, "lm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, None, V])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


IDS = {"input_ids": np.array([[3, 17, 100, 1023, 0, 42, 250, 7]], dtype=np.int64)}


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def test_a_transposed_copy_is_stored_once():
    model = tied_lm()
    expected = _run(model, IDS)[0]
    before = _initializer_bytes(model)
    tied = weights.tie_weights(model)
    assert tied == [{"copy": "head.weight", "kept": "embed.weight", "transposed": True, "bytes": V * H * 4}]
    assert _initializer_bytes(model) == before - V * H * 4
    assert [n.op_type for n in model.graph.node][:1] == ["Transpose"]
    np.testing.assert_array_equal(_run(model, IDS)[0], expected)
    assert weights.tie_weights(model) == []  # nothing left to tie


def test_an_equal_copy_is_stored_once_and_unrelated_weights_stay():
    model = tied_lm(gemm_head=True)  # the head reads an equal copy of the table (transB=1)
    expected = _run(model, IDS)[0]
    tied = weights.tie_weights(model)
    assert [(t["copy"], t["kept"], t["transposed"]) for t in tied] == [("head.weight", "embed.weight", False)]
    np.testing.assert_array_equal(_run(model, IDS)[0], expected)
    other = tied_lm(seed=1)
    table = numpy_helper.to_array(other.graph.initializer[0])
    other.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(table.T + 1e-3), "head.weight"))
    assert weights.tie_weights(other) == []  # nearly the transpose is not the transpose


@pytest.mark.parametrize("bits", ["int4", "int8"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_a_tied_table_is_quantized_once_and_shared(bits, symmetric):
    model = tied_lm()
    expected = _run(model, IDS)[0]
    weights.tie_weights(model)
    report = weights.quantize_weights(model, Quantization(bits, block_size=32, symmetric=symmetric))
    ops = [n.op_type for n in model.graph.node]
    assert report["nodes"] == {"MatMulNBits": 2, "GatherBlockQuantized": 1} and report["lm_head"] == "head"
    assert ops.count("Transpose") == 0 and ops.count("Reshape") == 1  # the table read as the lookup's layout
    packed = [t for t in model.graph.initializer if t.name.startswith("embed.weight")]
    width = 4 if bits == "int4" else 8
    # the table once, in the projection's layout: V rows of H values of `width` bits, a scale per 32 (+ zero points)
    packed_dims = [list(t.dims) for t in packed if t.data_type == TensorProto.UINT8 and len(t.dims) == 3]
    assert packed_dims == [[V, H // 32, 32 * width // 8]]
    # float32 is 4 bytes a value: int4 half a byte and a 4-byte scale per 32 values (0.16x), int8 one byte (0.28x)
    assert _initializer_bytes(model) <= (V * H + H * H) * 4 * (0.17 if bits == "int4" else 0.3)
    got = _run(model, IDS)[0]
    # random weights: int4 keeps the ranking mostly, int8 nearly exactly
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < (0.15 if bits == "int4" else 0.02), error
    agreement = (got.argmax(-1) == expected.argmax(-1)).mean()
    assert agreement >= (0.6 if bits == "int4" else 1.0), agreement


def test_the_lm_head_in_int8():
    model = tied_lm()
    expected = _run(model, IDS)[0]
    weights.tie_weights(model)
    report = weights.quantize_weights(model, Quantization("int4", lm_head="int8"))
    assert report["lm_head_bits"] == 8
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node
            if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
    # the tied table is packed once in 8 bits: the lookup reads it in 8 bits too
    assert bits == {"layer_Q4": 4, "head_Q8": 8, "embed_Q8": 8}
    assert np.abs(_run(model, IDS)[0] - expected).max() / np.abs(expected).max() < 0.1


def test_gemm_with_a_bias():
    model = tied_lm(gemm_head=True)
    expected = _run(model, IDS)[0]
    weights.tie_weights(model)
    report = weights.quantize_weights(model, Quantization("int8"))
    assert report["nodes"]["MatMulNBits"] == 2 and "Gemm" not in [n.op_type for n in model.graph.node]
    head = next(n for n in model.graph.node if n.name == "head_Q8")
    assert list(head.input)[-1] == "head.bias"  # MatMulNBits' own bias input
    assert np.abs(_run(model, IDS)[0] - expected).max() / np.abs(expected).max() < 0.02


def test_small_tables_and_non_float_gathers_stay():
    rng = np.random.default_rng(0)
    positions = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "positions")
    ints = numpy_helper.from_array(np.arange(10, dtype=np.int64), "ints")
    nodes = [helper.make_node("Gather", ["positions", "i"], ["p"], name="p"),
             helper.make_node("Gather", ["ints", "i"], ["n"], name="n")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("n", TensorProto.INT64, None)], [positions, ints])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert weights.quantize_weights(model, Quantization("int4"))["nodes"] == {"MatMulNBits": 0, "GatherBlockQuantized": 0}
    assert [n.op_type for n in model.graph.node] == ["Gather", "Gather"]


def test_weights_inside_if_branches():
    """A legacy merged decoder keeps its weights in the outer graph and reads them in If branches."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((H, 256)).astype(np.float32), "w")

    def branch(name: str, scale: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], [f"{name}_y"], name=f"{name}_mm"),
             helper.make_node("Mul", [f"{name}_y", f"{name}_s"], [f"{name}_out"], name=f"{name}_mul")],
            name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s")])

    node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("a", 1.0), else_branch=branch("b", -1.0))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, H]),
                                            helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((3, H)).astype(np.float32), "c": np.array(False)}
    expected = _run(model, feeds)[0]
    assert weights.quantize_weights(model, Quantization("int8"))["nodes"]["MatMulNBits"] == 2
    assert [t.name for t in model.graph.initializer if t.name.startswith("w_")] == ["w_Q8", "w_scales"]  # packed once
    assert np.abs(_run(model, feeds)[0] - expected).max() / np.abs(expected).max() < 0.02


def test_float16_keeps_float32_inputs_and_outputs_but_the_past():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Concat", ["past_key_values.0.key", "y3"], ["present.0.key"], axis=1, name="cat"),
             helper.make_node("Unsqueeze", ["y", "axis"], ["y3"], name="unsq")]
    inits = [numpy_helper.from_array(rng.standard_normal((H, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1], np.int64), "axis")]
    past = helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, [2, None, 8])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, H]), past],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, None)], inits)
    model = weights.to_float16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types == {"x": TensorProto.FLOAT, "past_key_values.0.key": TensorProto.FLOAT16, "y": TensorProto.FLOAT,
                     "present.0.key": TensorProto.FLOAT16}
    x = rng.standard_normal((2, H)).astype(np.float32)
    y, present = _run(model, {"x": x, "past_key_values.0.key": np.zeros((2, 3, 8), np.float16)})
    assert present.dtype == np.float16 and present.shape == (2, 4, 8)
    np.testing.assert_allclose(y, x @ numpy_helper.to_array(inits[0]), atol=0.05, rtol=0.01)


def test_quantization_settings_are_checked():
    assert Quantization("dynamic-int8").mode == "int8"  # the old name
    for bad, message in [({"mode": "int3"}, "unknown quantization 'int3'; choose int4, int8, fp16, q4f16, dynamic-int8"),
                         ({"mode": "int4", "block_size": 48}, "--block-size must be one of 16, 32, 64, 128, 256, got 48"),
                         ({"mode": "int4", "lm_head": "fp16"}, "--lm-head must be int4 or int8, got 'fp16'"),
                         ({"mode": "int4", "accuracy_level": 7}, "--accuracy-level must be 0 to 4, got 7")]:
        with pytest.raises(weights.MetadataExtractionError) as info:
            Quantization(**bad)
        assert str(info.value) == message
    assert Quantization("int4").settings() == {
        "mode": "int4", "method": "weight-only", "bits": 4, "block_size": 32, "symmetric": True, "accuracy_level": 4,
        "op_types": ["MatMul", "Gather"], "format": "MatMulNBits", "lm_head_bits": 4}
    assert Quantization("q4f16").level == 0 and Quantization("int8").settings(dynamic=True) == {"mode": "int8",
                                                                                               "method": "dynamic"}


def test_nodes_sorted_for_an_if_branch():
    """onnxruntime sorts a main graph itself, not the If branches an encoder-decoder's merge makes of each part:
    float16's appended Casts must come before their readers, and a node before the If that reads it."""
    rng = np.random.default_rng(0)
    branch = helper.make_graph([helper.make_node("Add", ["a", "b"], ["z"], name="add")], "then", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch, else_branch=branch),
             helper.make_node("Relu", ["x"], ["b"], name="relu"),  # read by the branch, made after the If
             helper.make_node("Neg", ["b"], ["a"], name="neg"),
             helper.make_node("Identity", ["x"], ["u"], name="unrelated"),
             helper.make_node("Cast", ["flag"], ["c"], name="cast", to=TensorProto.BOOL)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                           helper.make_tensor_value_info("flag", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("u", TensorProto.FLOAT, None)])
    weights.sort_nodes(graph)
    assert [n.name for n in graph.node] == ["relu", "neg", "unrelated", "cast", "if"]
    value = rng.standard_normal((2, 4)).astype(np.float32)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    np.testing.assert_array_equal(_run(model, {"x": value, "flag": np.array(1)})[0], np.zeros((2, 4), np.float32))
