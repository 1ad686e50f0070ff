"""Fuzzing: whatever the bytes, read_metadata and Runtime raise only MetadataError (or succeed), in
bounded time and memory.

The default run is short (a few seconds). For a long run set ONNXMETA_FUZZ_EXAMPLES, the number of
examples per property (the default is 40):

    ONNXMETA_FUZZ_EXAMPLES=20000 python -m pytest tests/runtime/test_fuzz.py -q
"""

from __future__ import annotations

import base64
import gzip
import os
import random
import time
import tracemalloc
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_under_test import rt

CORPUS = Path(__file__).parents[1] / "corpus"
import make_corpus as corpus

EXAMPLES = int(os.environ.get("ONNXMETA_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 40, database=None,
                suppress_health_check=list(HealthCheck))
# A generous bound on one read: the scanner does a constant amount of work per field and per byte.
SECONDS_PER_READ = 5.0


def outcome(path: Path, *, run: bool = False, max_decompressed_size: int = 1 << 20) -> str:
    """Read (and with run, build and call a Runtime on) a file; 'ok' or the MetadataError's class.

    Anything else propagates and fails the test, which is the point.
    """
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rt.read_metadata(path, max_decompressed_size=max_decompressed_size)
            if run:
                rt.Runtime(path)(["i love this movie", ""])
            result = "ok"
        except rt.MetadataError as exc:
            result = type(exc).__name__
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_READ, f"{path.name} took {elapsed:.1f} s"
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -- arbitrary and structured bytes ------------------------------------------------------------------


def bounded_read(path: Path) -> None:
    """outcome() of a read, allocating no more than a few times the file plus a constant (256 KiB: JSON
    nested up to the recursion limit holds one frame per level before it is refused)."""
    tracemalloc.start()
    try:
        outcome(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024 + 8 * path.stat().st_size, peak


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes(workdir, data):
    path = workdir / "arbitrary.onnx"
    path.write_bytes(data)
    bounded_read(path)


def _field(number: int, wire: int, payload: bytes, lie: int) -> bytes:
    tag = corpus.varint(number << 3 | wire)
    if wire == 2:
        return tag + corpus.varint(max(0, len(payload) + lie)) + payload
    if wire == 0:
        return tag + payload[:10]
    return tag + payload


_KEYS = st.sampled_from(sorted(rt._KEYS) + ["author", "hf_x", "export_config"]).flatmap(
    lambda k: st.sampled_from([k, k + rt.COMPRESSED_SUFFIX]))
_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(['{"a":1}', "[1]", "None", "2.0", "3.0", "2.9", "{", "null", "\u00b2.0", "[" * 3000]),
    st.binary(max_size=40).map(lambda b: base64.b64encode(gzip.compress(b, mtime=0)).decode()),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
)
_ENTRY = st.builds(lambda k, v: corpus.entry(k, v), _KEYS, _VALUES)
_RAW_ENTRY = st.builds(lambda k, v: corpus.entry(k, v), st.binary(max_size=12), st.binary(max_size=24))
_FIELD = st.builds(_field, st.sampled_from([0, 1, 7, 8, 14, 20, 25, 2**29 - 1]), st.integers(0, 7),
                   st.binary(max_size=24), st.sampled_from([0, 0, 0, -1, 1, 2**40, 2**63]))


@FUZZ
@given(parts=st.lists(st.one_of(_ENTRY, _RAW_ENTRY, _FIELD, st.just(corpus.GRAPH), st.just(b"\xff" * 11)), max_size=12))
def test_structured_protobuf(workdir, parts):
    path = workdir / "structured.onnx"
    path.write_bytes(b"".join(parts))
    bounded_read(path)


# -- mutations of a real embedded model ---------------------------------------------------------------


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        at = rnd.randrange(len(out) or 1)
        kind = rnd.randrange(6)
        if kind == 0:
            out[at] ^= 1 << rnd.randrange(8)  # bit flip
        elif kind == 1:
            out[at] = rnd.randrange(256)
        elif kind == 2:
            out[at:at] = b"\xff" * 10 + b"\x01"  # an 11-byte varint
        elif kind == 3:
            out[at:at] = corpus.varint(rnd.choice([2**63 - 1, 2**64 - 1, len(out) + 1]))  # a length past EOF
        elif kind == 4:
            del out[at:at + rnd.randint(1, 16)]
        else:
            out[at:at] = out[rnd.randrange(len(out)):][:rnd.randint(1, 64)]  # duplicated bytes, e.g. an entry twice
    return bytes(out)


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_embedded_model_reads_and_runs(workdir, seed):
    """Mutations of runnable models anywhere in the file, through read_metadata, Runtime and a call."""
    rnd = random.Random(seed)
    # files without a digest too, so that mutated values reach JSON, the tokenizer and the task
    source = rnd.choice(["v2_0.onnx", "v1_0_older.onnx", "modelinsider_seed.onnx"])
    path = workdir / "mutated.onnx"
    path.write_bytes(_mutate((CORPUS / source).read_bytes(), rnd))
    outcome(path, run=True)


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_metadata_of_a_real_model(workdir, bert_embedded, seed):
    """Mutations confined to the metadata region of the exported BERT (its graph left intact)."""
    data = bert_embedded.read_bytes()
    start = rt.scan_model(bert_embedded).entries[0].field.start
    path = workdir / "bert_mutated.onnx"
    path.write_bytes(data[:start] + _mutate(data[start:], random.Random(seed)))
    outcome(path, run=True)


def test_truncation_at_every_offset(workdir):
    """Prefixes of a runnable embedded model: every offset of the header (the top-level fields before the
    metadata, and each entry's head), every 7th byte elsewhere. A read error, never anything else."""
    data = (CORPUS / "v2_0.onnx").read_bytes()
    scan = rt.scan_model(CORPUS / "v2_0.onnx")
    header = set(range(scan.entries[0].field.start + 8))
    header |= {e.field.start + i for e in scan.entries for i in range(-2, 8)}
    path = workdir / "cut.onnx"
    results = set()
    for cut in sorted(header | set(range(0, len(data), 7))):
        path.write_bytes(data[:cut])
        results.add(outcome(path, run=True))
    # a prefix ending on a field boundary is a valid protobuf; it lacks the digest or later keys
    assert results <= {"MetadataReadError", "MetadataValidationError", "ProcessorReconstructionError",
                       "TaskDetectionError"}, results
    assert "MetadataReadError" in results


# -- hostile values where the runtime reads configuration ---------------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 10**30) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=6)
_CONFIG_FIELDS = ["id2label", "label2id", "num_labels", "problem_type", "pad_token_id", "max_position_embeddings",
                  "model_type", "function_to_apply", "vocab_size"]
_TOKENIZER_FIELDS = ["model_max_length", "pad_token", "mask_token", "padding_side", "truncation_side",
                     "pad_token_type_id", "clean_up_tokenization_spaces", "tokenizer_class", "auto_map"]
_ST_FIELDS = ["pooling", "normalize", "do_lower_case", "prompts", "default_prompt_name", "modules", "max_seq_length"]


@FUZZ
@given(task=st.sampled_from(sorted(rt.TASKS)),
       config=st.dictionaries(st.sampled_from(_CONFIG_FIELDS), _JSON, max_size=3),
       tokenizer=st.dictionaries(st.sampled_from(_TOKENIZER_FIELDS), _JSON, max_size=3),
       sentence=st.dictionaries(st.sampled_from(_ST_FIELDS), _JSON, max_size=3))
def test_hostile_configuration_values(workdir, task, config, tokenizer, sentence):
    meta = corpus.metadata(**{
        rt.KEY_PIPELINE_TASK: task, rt.KEY_MODEL_CONFIG: {**corpus.CONFIG, **config},
        rt.KEY_TOKENIZER_CONFIG: {**corpus.TOKENIZER_CONFIG, **tokenizer}, rt.KEY_SENTENCE_TRANSFORMERS: sentence,
    })
    path = workdir / "hostile.onnx"
    # token-level tasks get a graph with a token axis, so that their whole path runs
    graph = {"fill-mask": corpus.token_graph_model(10), "feature-extraction": corpus.token_graph_model(),
             "token-classification": corpus.token_graph_model()}.get(task) or corpus.graph_model()
    path.write_bytes(graph + b"".join(corpus.entry(k, v) for k, v in rt.encode_metadata(meta)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            runtime = rt.Runtime(path)
            if task == "zero-shot-classification":
                runtime("i love this", candidate_labels=["a", "b"])
            elif task == "fill-mask":
                runtime(["i [MASK] this movie", "[MASK] [MASK]"], top_k=3)
                runtime("i [MASK] this", targets=["love", "hate"])
            elif task == "token-classification":
                runtime(["i love this movie", ""])
                runtime("i love this movie", aggregation_strategy="simple")
            elif task == "question-answering":
                runtime(question="what do i love", context="i love this movie")
            elif task == "feature-extraction":
                runtime(["i love this movie", ""])
                runtime.encode(["i love this movie", "hate"])
            else:
                runtime(["i love this movie", ""])
        except rt.MetadataError:
            pass


# -- bounded work and memory --------------------------------------------------------------------------


def test_work_is_linear_in_the_number_of_fields(workdir):
    """Many tiny fields or entries: one small read each, no quadratic step (4x the fields, about 4x the time)."""

    def seconds(data: bytes) -> float:
        path = workdir / "many.onnx"
        path.write_bytes(data)
        start = time.perf_counter()
        rt.read_metadata(path)
        return time.perf_counter() - start

    for unit in (b"\x08\x01", corpus.entry("k", "v")):
        small, large = seconds(corpus.GRAPH + unit * 25_000), seconds(corpus.GRAPH + unit * 100_000)
        assert large < 10 * small + 0.5, (unit, small, large)


@pytest.mark.parametrize("name", ["length_2_63.onnx", "length_past_eof.onnx", "varint_11_bytes.onnx"])
def test_declared_lengths_allocate_nothing(name):
    """A length of 2^63 is checked against the file before anything is read or allocated."""
    tracemalloc.start()
    try:
        with pytest.raises(rt.MetadataReadError):
            rt.read_metadata(CORPUS / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_reading_allocates_about_the_file_size(workdir):
    """Without compressed values a read holds the entries' bytes and their text: a few times the file."""
    path = workdir / "plain.onnx"
    path.write_bytes(corpus.written(corpus.metadata(**{rt.KEY_MODEL_CONFIG: {**corpus.CONFIG, "pad": "x" * 2_000_000}}),
                                   threshold=None))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        rt.read_metadata(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * size + 256 * 1024, (peak, size)
