"""The authoring CLI as a function: main(argv) -> exit status."""

from __future__ import annotations

import json
import os

import onnxmeta_runtime as rt
from authoring.cli import main


def test_embed_inspect_validate(bert_classifier, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["embed", str(bert_classifier.onnx), str(bert_classifier.folder), "--output", str(out), "--include-vocab",
                 "--compress-threshold", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"into {out}" in printed and "task: text-classification, level: full" in printed
    assert "hf_tokenizer_json" in printed and "(gzip of" in printed

    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["task"] == "text-classification" and info["embedding_level"] == "full"
    assert info["labels"] == ["NEGATIVE", "NEUTRAL", "POSITIVE"]
    from transformers import AutoTokenizer

    limit = AutoTokenizer.from_pretrained(bert_classifier.folder).model_max_length  # int(1e30) for bert-base-uncased
    assert info["tokenizer"] == {"class": "BertTokenizer", "has_vocabulary": True, "model_max_length": limit}
    assert {e["key"] for e in info["entries"]} >= {rt.KEY_MODEL_CONFIG, rt.KEY_TOKENIZER_JSON, rt.KEY_DIGEST}
    assert info["metadata_bytes"] == sum(e["stored_bytes"] for e in info["entries"])

    assert main(["analyze", str(out), "--show-task", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "text-classification"}

    assert main(["inspect", str(out), "--show-processor", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert list(shown) == ["processor"]  # only what was asked for, as --show-task
    assert shown["processor"][rt.KEY_TOKENIZER_CONFIG]["tokenizer_class"] == "BertTokenizer"
    assert main(["inspect", str(out), "--show-processor"]) == 0
    assert capsys.readouterr().out.startswith("processor: {")

    assert main(["inspect", str(out), "--show-metadata"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("metadata: {") and "<tokenizer.json, " in printed
    assert main(["inspect", str(out), "--show-task", "--show-processor", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["processor", "task"]

    assert main(["validate", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ok   metadata: format 2.0, level full, digest verified"
    assert lines[1] == "ok   task: text-classification (runs in this runtime)"
    vocab = len(AutoTokenizer.from_pretrained(bert_classifier.folder))
    assert lines[2] == f"ok   processor: tokenizer rebuilt ({vocab} tokens, max length 128)"


def test_validate_failures_exit_non_zero(bert_classifier, tmp_path, capsys):
    essential = tmp_path / "essential.onnx"
    assert main(["embed", str(bert_classifier.onnx), str(bert_classifier.folder), "-o", str(essential)]) == 0
    capsys.readouterr()
    assert main(["validate", str(essential), "--check-processor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report == {"ok": False, "checks": [{"name": "processor", "ok": False,
                      "message": "no vocabulary embedded; re-embed with --include-vocab to tokenize"}]}
    assert main(["validate", str(bert_classifier.onnx)]) == 1
    assert "FAIL metadata: no onnxmeta metadata; embed it with python -m authoring embed" in capsys.readouterr().out


def test_validate_detects_tampering(bert_embedded, tmp_path, capsys):
    data = bytearray(bert_embedded.read_bytes())
    at = data.rfind(b'"NEUTRAL"')
    data[at:at + 9] = b'"NEWTRAL"'
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(bytes(data))
    assert main(["validate", str(tampered), "--check-metadata"]) == 1
    assert "FAIL metadata: tampered.onnx: metadata digest mismatch" in capsys.readouterr().out


def test_errors_are_one_line_on_stderr(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 1
    assert capsys.readouterr().err == f"error: no such file: {tmp_path / 'missing.onnx'}\n"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x08\x3a\x05ab")
    assert main(["inspect", str(bad)]) == 1
    assert capsys.readouterr().err == "error: bad.onnx is not a readable ONNX model: field 7 declares 5 bytes but only 2 remain (at byte 2)\n"


def test_include_vocab_conflicts_with_a_lower_level(bert_classifier, tmp_path, capsys):
    assert main(["embed", str(bert_classifier.onnx), str(bert_classifier.folder), "-o", str(tmp_path / "x.onnx"),
                 "--include-vocab", "--level", "minimal"]) == 1
    assert capsys.readouterr().err == "error: --include-vocab means --level full, not minimal\n"


def test_no_compress_and_threshold_flags(bert_classifier, tmp_path, capsys):
    plain, tiny = tmp_path / "plain.onnx", tmp_path / "tiny.onnx"
    assert main(["embed", str(bert_classifier.onnx), str(bert_classifier.folder), "-o", str(plain), "--include-vocab", "--no-compress"]) == 0
    assert main(["embed", str(bert_classifier.onnx), str(bert_classifier.folder), "-o", str(tiny), "--include-vocab", "--compress-threshold", "0"]) == 0
    assert not any(e.key.endswith(rt.COMPRESSED_SUFFIX) for e in rt.scan_model(plain).entries)
    assert all(e.key.endswith(rt.COMPRESSED_SUFFIX) for e in rt.scan_model(tiny).entries)


def test_inspect_a_file_without_metadata(bert_classifier, capsys):
    for argv in (["inspect", str(bert_classifier.onnx)], ["inspect", str(bert_classifier.onnx), "--json", "--show-task"]):
        assert main(argv, prog="onnxmeta") == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (f"error: {bert_classifier.onnx} has no onnxmeta metadata; embed it: "
                                f"onnxmeta embed {bert_classifier.onnx} <model> --include-vocab\n")


def test_usage_names_the_command_as_it_was_run(tmp_path):
    """python -m authoring says so; the console script says onnxmeta (its file name, argparse's default)."""
    import subprocess
    import sys

    from helpers import ROOT

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)])}
    module = subprocess.run([sys.executable, "-m", "authoring"], capture_output=True, text=True, env=env, check=False)
    assert module.returncode == 2 and module.stderr.startswith("usage: python -m authoring [-h]")
    script = tmp_path / "onnxmeta"
    script.write_text("import sys\nfrom authoring.cli import main\nsys.exit(main())\n")
    console = subprocess.run([sys.executable, str(script), "inspect"], capture_output=True, text=True, env=env, check=False)
    assert console.returncode == 2 and console.stderr.startswith("usage: onnxmeta inspect [-h]")


def test_human_output_escapes_control_characters(bert_embedded, tmp_path, capsys):
    import onnx

    model = onnx.load(bert_embedded)
    entry = model.metadata_props.add()
    entry.key, entry.value = "evil\x1b[2J", "x"
    onnx.save(model, tmp_path / "evil.onnx")
    assert main(["inspect", str(tmp_path / "evil.onnx")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and 'other_metadata_props: {"evil\\u001b[2J": "x"}' in out


def test_demo(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "detected task: text-classification" in out
    results = rt.Runtime(tmp_path / "demo" / "sentiment.onnx")(["I love this movie!", "This was a terrible waste of time."])
    assert [r["label"] for r in results] == ["POSITIVE", "NEGATIVE"]
    assert results[0]["score"] > 0.9 and results[1]["score"] > 0.9
