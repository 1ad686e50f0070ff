"""The runtime's command line: texts, JSON lines on stdin for shell pipelines, --inspect without onnxruntime."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_under_test import rt


def test_json_lines_round_trip(bert_embedded, monkeypatch, capsys):
    runtime = rt.Runtime(bert_embedded)
    inputs = ["I love this", {"text": "a premise", "text_pair": "a hypothesis"}, ["two", "texts"]]
    stdin = "\n".join(json.dumps(x) for x in inputs) + "\n\n"  # a blank line is skipped
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert rt._main([str(bert_embedded), "-", "--options", '{"top_k": 2}']) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in out] == [runtime(x, top_k=2) for x in inputs]


def test_json_lines_report_each_bad_line_and_go_on(bert_embedded, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO('"fine"\nnot json\n3\n"also fine"\n'))
    assert rt._main([str(bert_embedded)]) == 1  # no inputs and stdin a pipe: JSON lines
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    runtime = rt.Runtime(bert_embedded)
    assert out[0] == runtime("fine") and out[3] == runtime("also fine")
    assert out[1] == {"error": "line 2 is not JSON (Expecting value: line 1 column 1 (char 0))"}
    assert out[2] == {"error": "text-classification takes a string, a {'text': ..., 'text_pair': ...} dict, or a list of "
                               "those; got int"}
    assert len(out) == 4


def test_no_inputs_from_a_terminal_is_a_usage_error(bert_embedded, monkeypatch, capsys):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(""))
    with pytest.raises(SystemExit) as info:
        rt._main([str(bert_embedded)])
    assert info.value.code == 2
    assert "pass the inputs after the model, '-' to read JSON lines from stdin, or --inspect" in capsys.readouterr().err


def test_inspect_needs_no_onnxruntime(bert_embedded):
    code = ("import sys, onnxmeta_runtime as rt; code = rt._main([sys.argv[1], '--inspect']); "
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'tokenizers') if m in sys.modules)); sys.exit(code)")
    runtime_dir = Path(rt.__file__).parent
    out = subprocess.run([sys.executable, "-c", code, str(bert_embedded)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(runtime_dir)})
    lines = out.stdout.splitlines()
    assert lines[0].startswith("model.onnx: onnxmeta format 2.0, level full, ")
    assert lines[1:5] == ["  task: text-classification", "  model: BertForSequenceClassification (bert)",
                          "  labels: 3: NEGATIVE, NEUTRAL, POSITIVE", "  processors: tokenizer"]
    assert lines[-1] == "[]"


def test_inspect_of_a_file_without_metadata(tmp_path, capsys):
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(b"\x3a\x00")  # an empty graph, no metadata_props
    assert rt._main([str(plain), "--inspect"]) == 0
    assert capsys.readouterr().out == f"plain.onnx: no onnxmeta metadata; embed it: python -m authoring embed {plain} <model>\n"
