"""The crafted files of tests/corpus: each gives exactly the outcome make_corpus.CASES records for it,
and the committed bytes are what make_corpus.py builds."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from runtime_under_test import rt

CORPUS = Path(__file__).parents[1] / "corpus"
import make_corpus


def test_committed_files_are_what_the_script_builds():
    built = make_corpus.build_all()
    on_disk = {p.name for p in CORPUS.iterdir() if p.suffix in (".onnx", ".md")}
    assert on_disk == set(built), "run python tests/corpus/make_corpus.py"
    for name, data in built.items():
        assert (CORPUS / name).read_bytes() == data, f"{name} is stale; run python tests/corpus/make_corpus.py"


def _outcome(call) -> str:
    """'ok', 'warn: <message>' or '<ErrorClass>: <message>' for a call."""
    rt.clear_metadata_cache()  # a cached read does not warn again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        except rt.MetadataError as exc:
            return f"{type(exc).__name__}: {exc}"
    if caught:
        return "warn: " + str(caught[0].message)
    return "ok"


@pytest.mark.parametrize("name", list(make_corpus.CASES))
def test_read_metadata(name):
    expected = make_corpus.CASES[name].expect
    actual = _outcome(lambda: rt.read_metadata(CORPUS / name, max_decompressed_size=1 << 20))
    assert actual.startswith(expected), (name, actual)


@pytest.mark.parametrize("name", [n for n, c in make_corpus.CASES.items() if c.runtime])
def test_runtime(name):
    expected = make_corpus.CASES[name].runtime
    results: list = []
    actual = _outcome(lambda: results.append(rt.Runtime(CORPUS / name)("i love this movie")))
    if expected.startswith("ok: "):
        assert actual in ("ok", "warn: " + make_corpus.CASES[name].expect.removeprefix("warn: ")), (name, actual)
        assert results[0][0]["label"] == expected.removeprefix("ok: ")
        assert results[0][0]["score"] == pytest.approx(0.98201376, abs=1e-6)  # softmax of (-2, 2)
    else:
        assert actual.startswith(expected), (name, actual)


def test_the_original_designs_file_reads_like_ours():
    """modelinsider_seed.onnx: values the original writer spelled differently decode to the same objects."""
    seed = rt.read_metadata(CORPUS / "modelinsider_seed.onnx")
    assert seed[rt.KEY_MODEL_CONFIG]["note"] == "naïve"  # json.dumps' ASCII escape undone
    assert seed[rt.KEY_MODEL_CONFIG]["id2label"] == make_corpus.CONFIG["id2label"]  # gzip with mtime, ':compressed'
    assert seed[rt.KEY_TOKENIZER_CONFIG] == make_corpus.TOKENIZER_CONFIG
    # str(None) for the Optional values: absent, as if never written
    for key in (rt.KEY_IMAGE_PROCESSOR_CONFIG, rt.KEY_FEATURE_EXTRACTOR_CONFIG, rt.KEY_PIPELINE_CONFIG, rt.KEY_EXPORT_CONFIG):
        assert key not in seed
    assert rt.KEY_DIGEST not in seed
    assert isinstance(rt.load_tokenizer(seed), rt.TokenizerProxy)


def test_foreign_entries_are_returned_unchanged():
    metadata = rt.read_metadata(CORPUS / "foreign_props.onnx")
    assert metadata["author"] == "someone" and metadata["notes:compressed"] == "not base64 at all"


def test_newer_minor_keeps_the_unknown_key():
    rt.clear_metadata_cache()
    with pytest.warns(UserWarning):
        assert rt.read_metadata(CORPUS / "v2_7_newer_minor.onnx")["hf_future_key"] == "kept"


def test_gzip_prefix_values_read_like_the_key_suffix():
    """An older writer's 'gzip:' value prefix gives the same metadata as this writer's ':compressed' keys."""
    prefixed = rt.scan_model(CORPUS / "gzip_prefix_value.onnx")
    assert any(e.value.startswith(rt._LEGACY_GZIP_PREFIX) for e in prefixed.entries)
    assert not any(e.key.endswith(rt.COMPRESSED_SUFFIX) for e in prefixed.entries)
    metadata = rt.read_metadata(CORPUS / "gzip_prefix_value.onnx")
    assert metadata == rt.read_metadata(CORPUS / "v2_0.onnx")
    assert metadata[rt.KEY_TOKENIZER_JSON].startswith("{")
