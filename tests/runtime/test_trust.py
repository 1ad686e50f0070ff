"""Trust: decompression bombs are capped, and nothing in a file can make the runtime or the authoring
tool import or execute code."""

from __future__ import annotations

import ast
import base64
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
from runtime_under_test import rt

ROOT = Path(__file__).resolve().parents[2]
import make_corpus as corpus

GIB = 1 << 30


def gzip_of_zeros(size: int) -> bytes:
    """A valid gzip member of size zero bytes, built from one repeated deflate block (1 KB per MiB)."""
    chunk = b"\0" * (1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    # After a full flush the compressor forgets its history, so every 1 MiB block compresses the same.
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * (size >> 20) + compressor.flush()
            + struct.pack("<II", crc, size & 0xFFFFFFFF))


def test_the_bomb_is_a_real_gigabyte():
    data = gzip_of_zeros(GIB)
    assert len(data) < 1_100_000
    decompressor = zlib.decompressobj(31)
    total = 0
    while data:  # stream it: 1 GiB of output, never held at once
        total += len(decompressor.decompress(data, 64 << 20))
        data = decompressor.unconsumed_tail
    assert total == GIB and decompressor.eof


def test_a_gigabyte_bomb_is_refused_at_the_default_limit(tmp_path):
    path = tmp_path / "bomb.onnx"
    value = base64.b64encode(gzip_of_zeros(GIB)).decode("ascii")
    path.write_bytes(corpus.graph_model() + corpus.entry(rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX, value))
    tracemalloc.start()
    try:
        with pytest.raises(rt.MetadataReadError) as info:
            rt.read_metadata(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == (
        "bomb.onnx: compressed value 'hf_tokenizer_json' expands past the 268435456-byte limit (max_decompressed_size), "
        "a guard against decompression bombs; if the file is trusted, raise it: read_metadata(path, "
        "max_decompressed_size=...) or Runtime(path, max_decompressed_size=...)")
    # What a bomb can cost: the limit, plus the eighth a bytearray over-allocates as it grows, plus a few
    # copies of the file. (Inflating in one call with max_length held twice the limit: 540 MB here.)
    assert peak < 1.25 * rt.MAX_DECOMPRESSED_SIZE + 8 * path.stat().st_size, peak
    with pytest.raises(rt.MetadataReadError, match="expands past the 1048576-byte limit"):
        rt.Runtime(path, max_decompressed_size=1 << 20)


def test_a_trusted_large_value_reads_when_the_limit_is_raised(tmp_path):
    path = tmp_path / "big.onnx"
    value = base64.b64encode(gzip_of_zeros(8 << 20)).decode("ascii")
    path.write_bytes(corpus.graph_model() + corpus.entry(rt.KEY_TOKENIZER_JSON + rt.COMPRESSED_SUFFIX, value))
    with pytest.raises(rt.MetadataReadError, match="expands past the 4194304-byte limit"):
        rt.read_metadata(path, max_decompressed_size=4 << 20)
    assert rt.read_metadata(path, max_decompressed_size=8 << 20)[rt.KEY_TOKENIZER_JSON] == "\0" * (8 << 20)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None, "10"])
def test_the_limit_must_be_a_positive_integer(bad):
    with pytest.raises(rt.InvalidInputError, match="max_decompressed_size must be a positive number of bytes"):
        rt.decode_metadata([], max_decompressed_size=bad)


# -- no code execution --------------------------------------------------------------------------------

# Calls and modules through which data could become code.
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "getattr", "globals", "locals", "vars", "breakpoint"}
_FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "importlib", "imp", "runpy", "dill", "joblib",
                      "subprocess", "ctypes", "code", "codeop"}


def _code_paths(tree: ast.AST) -> list[str]:
    modules = {(a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               for a in n.names}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_CALLS:
            # getattr is dynamic class selection only when it looks a computed name up in a module
            # (getattr(tokenizers, config["tokenizer_class"])); on an object or with a literal name it is not
            if node.func.id == "getattr" and not (
                    isinstance(node.args[0], ast.Name) and node.args[0].id in modules
                    and not isinstance(node.args[1], ast.Constant)):
                continue
            found.append(f"{node.func.id}() at line {node.lineno}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"import {n} at line {node.lineno}" for n in names if n.split(".")[0] in _FORBIDDEN_MODULES]
        elif isinstance(node, ast.Attribute) and node.attr in ("from_pretrained", "load_module", "exec_module"):
            found.append(f".{node.attr} at line {node.lineno}")
    return found


def test_the_runtime_has_no_way_to_run_code_from_data():
    source = (ROOT / "runtime" / "onnxmeta_runtime.py").read_text()
    tree = ast.parse(source)
    # the lazy numpy proxy looks up the attribute this file's own code reads (np.float32): names from code, not data
    proxy = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Numpy")
    assert [path.split(" at ")[0] for path in _code_paths(proxy)] == ["getattr()"]
    assert "return getattr(numpy, name)" in ast.get_source_segment(source, proxy)
    tree.body.remove(proxy)
    assert _code_paths(tree) == []
    # Every import names a fixed module: the tokenizer and session come from tokenizers.Tokenizer.from_str
    # (a JSON document) and onnxruntime, never from a class named in the metadata.
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # jinja2 renders chat templates, in its sandbox, as transformers does
    assert imported <= {"__future__", "argparse", "base64", "binascii", "collections", "copy", "hashlib", "json", "os",
                        "re", "stat", "sys", "threading", "time", "warnings", "zlib", "typing", "unicodedata", "numpy",
                        "onnxruntime", "tokenizers", "jinja2", "io", "math", "PIL", "soundfile",
                        # the server's: HTTP, multipart forms, the API key's constant-time check, SIGTERM, failures logged
                        "http", "email", "hmac", "signal", "traceback", "queue",
                        # text-to-audio's WAV files, written with the standard library
                        "wave"}, imported
    # read only for a type check, a repr, and translation's refusal of language-code tokenizers (the name is compared
    # with a fixed set, never looked up)
    allowed = ('"tokenizer_class": (str,)', "get('tokenizer_class', 'tokenizer')", '.get("tokenizer_class")',
               "tokenizer_class = str(", "if tokenizer_class.removesuffix(", "translation with {tokenizer_class}")
    rest = source
    for text in allowed:
        rest = rest.replace(text, "")
    assert "tokenizer_class" not in rest
    assert ".removesuffix(\"Fast\") in _LANGUAGE_CODE_TOKENIZERS" in source


def test_the_checker_catches_what_it_looks_for():
    bad = ast.parse("import pickle\nimport importlib.util\neval(x)\n__import__(name)\ngetattr(pickle, name)\n"
                    "AutoTokenizer.from_pretrained(p)\ngetattr(pickle, 'fixed')\ngetattr(obj, name)\n")
    assert _code_paths(bad) == ["import pickle at line 1", "import importlib.util at line 2", "eval() at line 3",
                                "__import__() at line 4", "getattr() at line 5", ".from_pretrained at line 6"]


def test_authoring_loads_hugging_face_files_without_remote_code():
    """Every from_pretrained in the authoring package passes trust_remote_code=False explicitly."""
    calls = []
    for path in sorted((ROOT / "authoring").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                trust = [k.value for k in node.keywords if k.arg == "trust_remote_code"]
                calls.append((path.name, node.lineno, [getattr(t, "value", t) for t in trust]))
    assert calls, "no from_pretrained found: update this test"
    assert all(trust == [False] for _, _, trust in calls), calls


def _evil_module(folder: Path, marker: Path) -> None:
    """A module that, if ever imported, writes marker."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus_evil.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nclass EvilTokenizer: pass\n")
    (folder / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nfrom transformers import BertTokenizerFast\n"
        "class EvilTokenizer(BertTokenizerFast): pass\n")


def test_auto_map_in_an_embedded_tokenizer_config_imports_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    _evil_module(tmp_path / "code", marker)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))  # importable, if anything tried
    monkeypatch.chdir(tmp_path / "code")
    path = Path(__file__).parents[1] / "corpus" / "auto_map_tokenizer.onnx"
    metadata = rt.read_metadata(path)
    assert metadata[rt.KEY_TOKENIZER_CONFIG]["auto_map"] == {"AutoTokenizer": ["corpus_evil.EvilTokenizer", None]}
    runtime = rt.Runtime(path)
    assert runtime("i love this movie")[0]["label"] == "POSITIVE"
    assert rt.ONNXAutoProcessor.from_model(path).backend.get_vocab_size() == 10
    from authoring import describe, validate

    assert describe(path)["tokenizer"]["class"] == "corpus_evil.EvilTokenizer"
    validate(path)
    assert not marker.exists() and "corpus_evil" not in sys.modules


def test_embedding_a_folder_with_remote_code_runs_none_of_it(bert_classifier, tmp_path):
    """A model folder whose tokenizer_config asks for its own Python class: the authoring tool does not
    run it (trust_remote_code=False); it falls back to the minimal level or fails, clearly."""
    import json
    import shutil

    from authoring import discover

    folder = tmp_path / "remote"
    shutil.copytree(bert_classifier.folder, folder)
    marker = tmp_path / "executed"
    _evil_module(folder, marker)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    config_path.write_text(json.dumps(config))
    try:
        metadata = discover(folder, level="full")
    except rt.MetadataError as exc:
        assert "trust_remote_code" in str(exc) or "cannot be loaded" in str(exc)
    else:
        assert metadata[rt.KEY_EMBEDDING_LEVEL] in ("minimal", "full")
    assert not marker.exists()
    assert "tokenization_evil" not in sys.modules
