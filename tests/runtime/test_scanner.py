"""The pure-Python protobuf scanner: hostile bytes as literals, and agreement with onnx on real files."""

from __future__ import annotations

import pytest

from make_corpus import GRAPH, entry, varint
from runtime_under_test import rt


def write(tmp_path, data: bytes, name: str = "m.onnx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_error(tmp_path, data: bytes) -> str:
    with pytest.raises(rt.MetadataReadError) as info:
        rt.read_metadata(write(tmp_path, data))
    return str(info.value)


def test_minimal_model(tmp_path):
    path = write(tmp_path, b"\x08\x08" + GRAPH + entry(b"author", b"me") + entry(b"k", "é".encode()))
    assert rt.read_metadata(path) == {"author": "me", "k": "é"}
    scan = rt.scan_model(path)
    assert [f.number for f in scan.fields] == [1, 7, 14, 14]
    assert [(e.key, e.field.start) for e in scan.entries] == [("author", 4), ("k", 18)]


def test_entry_fields_in_any_order_and_unknown_fields_skipped(tmp_path):
    body = b"\x12\x01v" + b"\x18\x05" + b"\x0a\x01k"  # value, an unknown varint field 3, then key
    path = write(tmp_path, GRAPH + b"\x72" + varint(len(body)) + body + b"\xa5\x01\x00\x00\x00\x00")  # + fixed32 field 20
    assert rt.read_metadata(path) == {"k": "v"}


@pytest.mark.parametrize("data, message", [
    (GRAPH + b"\x72\x64\x0a", "field 14 declares 100 bytes but only 1 remain (at byte 2)"),
    (b"\x08" + b"\xff" * 10 + b"\x01" + GRAPH, "varint longer than 10 bytes (at byte 0)"),
    (GRAPH + b"\x72" + varint(2**63 - 1), "field 14 declares 9223372036854775807 bytes but only 0 remain (at byte 2)"),
    (GRAPH + b"\x72" + b"\xff" * 9 + b"\x7f", "varint overflows 64 bits (at byte 2)"),
    (GRAPH + b"\x08\xff\xff", "varint runs past the end of the data (at byte 2)"),
    (b"\x7b" + GRAPH, "unsupported wire type 3 in field 15 (at byte 0)"),
    (b"\x00" + GRAPH, "field number 0 (at byte 0)"),
    (GRAPH + b"\x3a\x10abc", "field 7 declares 16 bytes but only 3 remain (at byte 2)"),
    (GRAPH + b"\x09\x00\x00", "field 1 declares 8 bytes but only 2 remain (at byte 2)"),
    (GRAPH + b"\x70\x01", "metadata_props has wire type 0 (at byte 2)"),
    (GRAPH + b"\x72\x04\x0a\x05ab", "field 1 declares 5 bytes but only 2 remain (in the metadata_props entry at byte 2)"),
    (GRAPH + b"\x72\x02\x08\x01", "metadata_props field 1 has wire type 0, expected 2 (in the metadata_props entry at byte 2)"),
    (GRAPH + entry(b"\xff\xfe", b"v"), "metadata_props entry is not valid UTF-8 (in the metadata_props entry at byte 2)"),
])
def test_malformed_files_name_the_offset(tmp_path, data, message):
    assert read_error(tmp_path, data) == f"m.onnx is not a readable ONNX model: {message}"


@pytest.mark.parametrize("data", [b"", b"\x08\x08", b"\x12\x05torch"])
def test_files_without_a_graph_are_not_onnx(tmp_path, data):
    assert read_error(tmp_path, data) == "m.onnx is not an ONNX model: it has no graph (field 7)"


def test_text_file_is_not_onnx(tmp_path):
    assert read_error(tmp_path, b'{"a": 1}').startswith("m.onnx is not a readable ONNX model: unsupported wire type 3")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(rt.MetadataReadError, match="^no such file: .*nope.onnx$"):
        rt.read_metadata(tmp_path / "nope.onnx")
    with pytest.raises(rt.MetadataReadError, match="is a directory; pass the .onnx file inside it$"):
        rt.read_metadata(tmp_path)


def test_agrees_with_onnx_on_a_real_model(bert_embedded):
    import onnx

    model = onnx.load(bert_embedded)
    scan = rt.scan_model(bert_embedded)
    assert [(e.key, e.value) for e in scan.entries] == [(p.key, p.value) for p in model.metadata_props]
    info = rt.model_info(bert_embedded)
    assert info["ir_version"] == model.ir_version
    assert info["producer_name"] == model.producer_name == "pytorch"
    assert info["opset_import"] == {(o.domain or "ai.onnx"): o.version for o in model.opset_import}


def test_truncation_anywhere_raises_only_our_errors(bert_embedded, tmp_path):
    data = bert_embedded.read_bytes()
    scan = rt.scan_model(bert_embedded)
    graph = next(f for f in scan.fields if f.number == 7)
    header = range(0, graph.data_start + 64)
    metadata_region = range(scan.entries[0].field.start, len(data), 97)
    path = tmp_path / "cut.onnx"
    boundaries = {f.end for f in scan.fields}
    for cut in [*header, *metadata_region]:
        path.write_bytes(data[:cut])
        if cut in boundaries:
            try:
                rt.read_metadata(path)
            except rt.MetadataError:
                pass
            continue
        with pytest.raises(rt.MetadataReadError):
            rt.read_metadata(path)
