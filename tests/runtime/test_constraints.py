"""Constrained generation (the Constraints room): the regex engine against Python's re, JSON Schema patterns against
jsonschema (samples drawn from the automaton), generation under constraints with three real tokenizer kinds built
here (GPT-2's byte-level BPE, a SentencePiece Unigram without byte fallback, a Llama-style BPE with <0xNN> byte
fallback) over a random numpy "model": sampled texts all match and validate, greedy equals a brute-force reference that
decodes every token of the vocabulary at every step, beams and batches mixing free and constrained rows, hostile
constraints refused in bounded time, and the options end to end on a tiny GPT-2 ONNX model."""

from __future__ import annotations

import datetime
import itertools
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from generation_models import CORPUS, byte_level_bpe
from runtime_under_test import rt

jsonschema = pytest.importorskip("jsonschema")

# --- the regex engine ---------------------------------------------------------------------------------------------


def accepts(automaton: Any, text: str) -> bool:
    state = automaton.walk(0, text.encode("utf-8"))
    return state >= 0 and automaton.accepting[state]


PATTERNS = [r"abc", r"a|b|cd", r"[a-c]+x?", r"\d{2,3}", r"é+ü?", r"[^a]", r"(?:ab)*c", r"^a.c$", r"\w+@\w+\.com",
            r"x{,2}y", r"[\]a-]+", r"\x41\u00e9\n?", r"(a|bc)*d{1,2}", r"[^\W\d]+", r"\s?\S", r"a+?b??", r"(?P<n>a)(?#c)b",
            r"[.-]{2}", r"\\\[", r"[😀-😂]é"]
ALPHABET = ["a", "b", "c", "d", "x", "y", "é", "ü", "A", "1", "2", "\n", " ", "_", "@", ".", "-", "]", "\\", "[", "😀",
            "😁", "\t"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_regex_matches_as_python_re_fullmatch(pattern):
    """Over random strings (and the strings re's own examples give), the automaton accepts exactly what
    re.fullmatch(pattern, text, re.ASCII) does."""
    automaton = rt._regex_constraint(pattern)
    expected = re.compile(pattern, re.ASCII)
    rng = random.Random(pattern)
    texts = {"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6))) for _ in range(3000)}
    texts |= {"abc", "ababc", "12", "123", "éü", "a@b.com", "xxy", "]-a", "Aé\n", "bcd", "😀é", "\\[", "ab"}
    wrong = [t for t in texts if accepts(automaton, t) != bool(expected.fullmatch(t))]
    assert not wrong, wrong[:5]
    assert any(accepts(automaton, t) for t in texts)


@pytest.mark.parametrize(("pattern", "message"), [
    (r"(a)\1", r"regex: back-references (\1) are not supported: they are not regular (at position 5 of '(a)\\1')"),
    (r"(?P<x>a)(?P=x)", "regex: back-references ((?P=name)) are not supported"),
    (r"(?=a)b", "regex: look-around ((?=...)) is not supported (at position 1"),
    (r"(?<!a)b", "regex: look-around ((?<!...)) is not supported"),
    (r"a\b", r"regex: word boundaries (\b) are not supported"),
    (r"(?i)a", "regex: inline flags ((?i), (?s), ...) are not supported"),
    (r"a*+", "regex: possessive quantifiers (*+, ++, ?+) are not supported"),
    (r"(?>a)", "regex: atomic groups ((?>...)) are not supported"),
    (r"(a)(?(1)b)", "regex: conditional groups ((?(1)...)) are not supported"),
    (r"a^b", "regex: ^ is taken only at the start of the pattern"),
    (r"[a", "regex: unterminated character set"),
    (r"(a", "regex: missing ), unterminated subpattern"),
    (r"a)", "regex: unbalanced parenthesis"),
    (r"*a", "regex: nothing to repeat"),
    (r"a{5,2}", "regex: min repeat greater than max repeat"),
    (r"a{100000}", "regex: a repetition bound above 10000"),
    ("a{" + "9" * 5000 + "}", "regex: a repetition bound above 10000"),
    (r"[^\x00-\U0010ffff]", "regex matches no text at all; nothing can be generated under it"),
    (r"a\q", r"regex: bad escape \q"),
    ("(" * 500 + "a" + ")" * 500, "regex: groups nested more than 120 deep"),
])
def test_refused_patterns(pattern, message):
    with pytest.raises(rt.InvalidInputError) as caught:
        rt._regex_constraint(pattern)
    assert str(caught.value).startswith(message), str(caught.value)


def test_bounded_cost_of_hostile_patterns():
    """Huge patterns and exponential automata are refused or capped in bounded time."""
    started = time.perf_counter()
    with pytest.raises(rt.InvalidInputError, match="characters long, more than 200000"):
        rt._regex_constraint("a" * 300_000)
    with pytest.raises(rt.InvalidInputError, match="its automaton passes 300000 states"):
        rt._regex_constraint("(?:[a-z]{1000}){1000}")
    # (a|b)*a(a|b){20} has 2**21 DFA states: built lazily, the cap stops it
    automaton = rt._regex_constraint("(a|b)*a(a|b){20}")
    rng = random.Random(0)
    with pytest.raises(rt.InvalidInputError, match="needs more than 20000 automaton states"):
        state = 0
        for _ in range(100_000):
            state = automaton.step(state, automaton.byte_class[ord(rng.choice("ab"))])
    assert time.perf_counter() - started < 60


# --- JSON Schema -------------------------------------------------------------------------------------------------

SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 1, "maxItems": 3},
        "role": {"enum": ["admin", "user", "guest"]},
    }, "required": ["name", "age"]},
    "numbers": {"type": "object", "properties": {
        "ratio": {"type": "number", "minimum": -2.5, "maximum": 10},
        "count": {"type": "integer", "exclusiveMinimum": -7, "exclusiveMaximum": 1234},
        "free": {"type": "number"},
        "id": {"type": "string", "format": "uuid"},
    }, "required": ["ratio", "count", "free", "id"]},
    "refs": {"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                                 "required": ["x", "y"]}},
             "type": "object", "properties": {
                 "at": {"$ref": "#/$defs/point"},
                 "path": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 2},
                 "label": {"anyOf": [{"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2}$"}, {"type": "null"}]},
                 "when": {"type": "string", "format": "date-time"},
                 "kind": {"const": "pt"}, "ok": {"type": "boolean"},
             }, "required": ["at", "kind"]},
    "anything": {"type": "object", "properties": {"data": {}, "meta": {"type": "object"}}, "required": ["data"]},
    "optional-only": {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}},
}


def draw(automaton: Any, rng: random.Random, stop: float = 0.3, limit: int = 400) -> str | None:
    """A random text of the automaton's language: a random walk over live bytes, ending at accepting states with
    probability stop (None when it runs past limit bytes)."""
    state, out = 0, bytearray()
    for _ in range(limit):
        ending = all(automaton.step(state, c) < 0 for c in range(automaton.table.shape[1]))
        if automaton.accepting[state] and (ending or rng.random() < stop):
            return out.decode("utf-8")
        choices = [b for b in range(256) if automaton.step(state, automaton.byte_class[b]) >= 0]
        byte = rng.choice(choices)
        out.append(byte)
        state = automaton.step(state, automaton.byte_class[byte])
    return None


def valid(schema: dict[str, Any], text: str) -> None:
    value = json.loads(text)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    assert json.dumps(value, ensure_ascii=False) == text or any(c in text for c in (".", "e", "E", "\\", "-0"))
    if "when" in value:  # jsonschema checks date-time only with rfc3339-validator installed
        datetime.datetime.fromisoformat(value["when"])


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_texts_validate(name):
    """Hundreds of texts drawn from each schema's automaton parse and validate with jsonschema."""
    schema = SCHEMAS[name]
    pattern = rt._json_schema_regex(schema)
    automaton = rt._regex_constraint(pattern, "json_schema")
    rng = random.Random(name)
    drawn = [t for t in (draw(automaton, rng) for _ in range(300)) if t is not None]
    assert len(drawn) > 200
    for text in drawn:
        valid(schema, text)
        assert re.fullmatch(pattern, text)
    assert len(set(drawn)) > (5 if name == "optional-only" else 100)  # the first has 6 texts, all drawn


def test_schema_language_edges():
    def ok(schema: Any, value: Any) -> bool:
        return accepts(rt._regex_constraint(rt._json_schema_regex(schema)), json.dumps(value, ensure_ascii=False))

    person = SCHEMAS["person"]
    assert ok(person, {"name": "x", "age": 0}) and ok(person, {"name": "é", "age": 150, "role": "guest"})
    assert ok(person, {"name": "x", "age": 3, "tags": ["a", "b"], "role": "user"})
    assert not ok(person, {"age": 3}) and not ok(person, {"name": "x", "age": 151})
    assert not ok(person, {"age": 3, "name": "x"})  # properties in the schema's order
    assert not ok(person, {"name": "x", "age": 3, "tags": []})
    for low, high in [(0, 0), (3, 17), (-50, 7), (-1000, -3), (12, None), (None, -5), (5, 1234)]:
        schema = {"type": "integer", **({} if low is None else {"minimum": low}), **({} if high is None else {"maximum": high})}
        automaton = rt._regex_constraint(rt._json_schema_regex(schema))
        assert all(accepts(automaton, str(v)) == ((low is None or v >= low) and (high is None or v <= high))
                   for v in range(-1500, 1500))
        assert not accepts(automaton, "01") and not accepts(automaton, "-0")
    ratio = {"type": "number", "minimum": -2.5, "maximum": 10}
    assert all(ok(ratio, v) for v in (-2, -1.5, 0, 9.99, 10, 3))
    assert not any(ok(ratio, v) for v in (-3, 10.5, 11))
    # an untyped object nests containers _SCHEMA_ANY_DEPTH (2) deep, itself included
    assert ok({"type": "object"}, {"a": [1, "x"], "b": {"c": None}}) and not ok({"type": "object"}, {"a": [[1]]})
    assert ok(SCHEMAS["optional-only"], {}) and ok(SCHEMAS["optional-only"], {"b": None})


@pytest.mark.parametrize(("schema", "message"), [
    ({"$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"},
     "json_schema at /properties/next: $ref '#/$defs/node' is recursive"),
    ({"$ref": "#/$defs/missing"}, "json_schema at /: $ref '#/$defs/missing' points nowhere in the schema"),
    ({"type": "array", "uniqueItems": True}, "json_schema at /: uniqueItems is not supported"),
    ({"not": {"type": "string"}}, "json_schema at /: 'not' is not supported in constrained generation"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "json_schema at /: no number lies between its bounds"),
    ({"type": "string", "pattern": "(a)\\1"}, "json_schema at /: pattern: back-references"),
    ({"type": "number", "maximum": 1e300}, "json_schema at /: maximum must lie within +-10**15 here"),
    ({"type": "date"}, "json_schema at /: unknown type 'date'"),
    ({"enum": []}, "json_schema at /: enum must be a non-empty array"),
    (False, "json_schema at /: the schema false matches nothing"),
])
def test_refused_schemas(schema, message):
    with pytest.raises(rt.InvalidInputError) as caught:
        rt._regex_constraint(rt._json_schema_regex(schema), "json_schema")
    assert str(caught.value).startswith(message), str(caught.value)


def test_huge_enums_and_deep_schemas_are_refused_quickly():
    started = time.perf_counter()
    with pytest.raises(rt.InvalidInputError, match="characters long, more than 200000"):
        rt._regex_constraint(rt._json_schema_regex({"enum": [f"value number {i}" for i in range(50_000)]}), "json_schema")
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(200):
        deep = {"type": "array", "items": deep}
    with pytest.raises(rt.InvalidInputError, match="schemas nested more than 60 deep"):
        rt._json_schema_regex(deep)
    assert time.perf_counter() - started < 30


# --- tokenizers and a numpy "model" --------------------------------------------------------------------------------

JSON_CORPUS = [json.dumps(v, ensure_ascii=False) for v in (
    {"name": "Ann", "age": 42, "tags": ["x", "yz"], "role": "admin"}, {"ratio": -1.5, "count": 7, "free": 3.25e-3},
    {"at": {"x": 1, "y": -2}, "kind": "pt", "ok": True, "label": None, "when": "2024-05-06T07:08:09Z"},
    {"id": "123e4567-e89b-12d3-a456-426614174000", "email": "a.b@c.de", "data": [1, {"b": False}]})]


def gpt2_kind() -> Any:
    tokenizer = byte_level_bpe(["<|endoftext|>"], vocab_size=400)
    return rt.TextTokenizer(tokenizer.to_str(), {"eos_token": "<|endoftext|>"}, 512)


def unigram_kind() -> Any:
    """A SentencePiece-style Unigram (Metaspace ▁, no byte fallback: only the characters it learnt)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import Unigram

    tokenizer = Tokenizer(Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    alphabet = [chr(c) for c in range(32, 127)] + list("éüäöñ😀東京")
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      initial_alphabet=alphabet)
    tokenizer.train_from_iterator((CORPUS + JSON_CORPUS) * 10, trainer)
    return rt.TextTokenizer(tokenizer.to_str(), {"eos_token": "</s>", "pad_token": "<pad>"}, 512)


def llama_kind() -> Any:
    """A Llama-style BPE: Metaspace ▁, <0x00>..<0xFF> byte fallback, the decoder Llama's tokenizer.json has."""
    from tokenizers import Tokenizer, decoders, normalizers, trainers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator((CORPUS + JSON_CORPUS) * 10, trainer)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    data["model"]["byte_fallback"] = True
    data["decoder"] = json.loads(decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                                    decoders.Strip(" ", 1, 0)]).__getstate__())
    return rt.TextTokenizer(json.dumps(data), {"eos_token": "</s>"}, 512)


KINDS = {"gpt2": gpt2_kind, "unigram": unigram_kind, "llama": llama_kind}


@pytest.fixture(scope="module", params=list(KINDS))
def kind(request) -> tuple[str, Any]:
    return request.param, KINDS[request.param]()


class Model(rt._Step):
    """Random logits from the last token and the row's length (its padding left out): deterministic, so greedy runs
    can be replayed, and a row in a batch gets what it gets alone."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.table = (rng.normal(size=(vocab, vocab)) * 3).astype(np.float32)
        self.shift = (rng.normal(size=(7, vocab)) * 2).astype(np.float32)

    def logits(self, state: dict[str, Any]) -> np.ndarray:
        return self.table[state["last"]] + self.shift[state["length"] % 7]

    def prefill(self, ids, mask, use_cache, capacity=0):
        lengths = np.full(len(ids), ids.shape[1]) if mask is None else mask.sum(axis=1)
        state = {"last": ids[:, -1].copy(), "length": lengths}
        return state, self.logits(state)

    def advance(self, state, tokens):
        state["last"], state["length"] = np.asarray(tokens).copy(), state["length"] + 1
        return self.logits(state)

    def reorder(self, state, rows):
        state["last"], state["length"] = state["last"][rows], state["length"][rows]


class Task(rt._Generating):
    """The generating base over a tokenizer alone (no sessions): its search, constraints and texts."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.positions, self.model_generation, self.task_defaults = tokenizer, None, {}, {}


def run(task: Task, prompts: list[list[int]], model_seed: int = 0, constraints: Any = "same", **options: Any) -> tuple[Any, list]:
    tokenizer = task.tokenizer
    eos = tokenizer.token_id("eos_token")
    config = rt._generation_config({}, {"eos_token_id": eos, "pad_token_id": eos, **options}, {})
    search = task.search(Model(tokenizer.backend.get_vocab_size(), model_seed), prompts, config, eos)
    if constraints != "same":
        search.constraints = constraints
    return config, search.run()


def prompt_ids(tokenizer: Any, text: str = "Once upon a time") -> list[int]:
    return tokenizer.encode([text], add_special_tokens=False)[0].ids


# sampled from a random model, a text ends only where the pattern makes ending likely: no unbounded free text
SAMPLED_PERSON = {**SCHEMAS["person"], "properties": {k: v for k, v in SCHEMAS["person"]["properties"].items() if k != "email"}}
CONSTRAINTS = {
    "person": {"json_schema": SAMPLED_PERSON},
    "refs": {"json_schema": SCHEMAS["refs"]},
    "regex": {"regex": r"(?:yes|no|maybe), [0-9]{1,3} (?:cats|dogs)!"},
    "choices": {"choices": ["Paris", "Berlin", "the capital of France", "東京"]},
}


def check(name: str, text: str) -> None:
    if name in ("person", "refs"):
        valid(CONSTRAINTS[name]["json_schema"], text)
    elif name == "regex":
        assert re.fullmatch(CONSTRAINTS["regex"]["regex"], text), text
    else:
        assert text in CONSTRAINTS["choices"]["choices"], text


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_sampled_texts_match(kind, name):
    """Seeded samples under each constraint (several per call, several calls) all complete, match and validate."""
    family, tokenizer = kind
    task = Task(tokenizer)
    prompt = prompt_ids(tokenizer)
    texts = []
    for seed in range(12):
        # hot sampling (the warpers run after the mask): the random model is peaked
        config, sequences = run(task, [prompt], do_sample=True, num_return_sequences=5, max_new_tokens=300, top_k=40,
                                temperature=2.5, seed=seed, **CONSTRAINTS[name])
        for sequence in sequences:
            text, truncated = task.constrained(config, sequence)
            assert not truncated, (family, text)
            check(name, text)
            texts.append(text)
    assert len(set(texts)) > (2 if name == "choices" else 8), texts


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each token's bytes, found here apart from the runtime: GPT-2's byte alphabet, or ▁ as a space and <0xNN> as a
    byte; special tokens None."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    backend = tokenizer.backend
    special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    unicode_bytes = {c: b for b, c in bytes_to_unicode().items()}
    out: list[bytes | None] = []
    for i in range(backend.get_vocab_size()):
        token = backend.id_to_token(i)
        if i in special:
            out.append(None)
        elif "ByteLevel" in str(backend.decoder.__getstate__()):
            out.append(bytes(unicode_bytes[c] for c in token))
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", token):
            out.append(bytes([int(token[3:5], 16)]))
        else:
            out.append(token.replace("▁", " ").encode())
    return out


def language(name: str) -> list[bytes]:
    """The whole (finite) language of the brute-force cases."""
    if name == "choices":
        return [c.encode() for c in CONSTRAINTS["choices"]["choices"]]
    texts = []
    for a, b, c in itertools.product(["red", "green", "é"], [None, *range(31)], [None, True, False]):
        value = {"a": a, **({} if b is None else {"b": b}), **({} if c is None else {"c": c})}
        texts.append(json.dumps(value, ensure_ascii=False).encode())
    return texts


FINITE = {"choices": CONSTRAINTS["choices"],
          "small-schema": {"json_schema": {"type": "object", "properties": {
              "a": {"enum": ["red", "green", "é"]}, "b": {"type": "integer", "minimum": 0, "maximum": 30},
              "c": {"type": "boolean"}}, "required": ["a"]}}}


@pytest.mark.parametrize("name", list(FINITE))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_brute_force(kind, name, seed):
    """Greedy decoding under the constraint equals a reference that, at every step, decodes every token of the
    vocabulary and keeps those that leave the text a prefix of a word of the (finite) language; eos where it is one."""
    family, tokenizer = kind
    task = Task(tokenizer)
    prompt = prompt_ids(tokenizer, "Paris is")
    config, (sequence,) = run(task, [prompt], model_seed=seed, max_new_tokens=80, **FINITE[name])
    words = language("choices" if name == "choices" else "schema")
    pieces = token_bytes(tokenizer)
    eos = tokenizer.token_id("eos_token")
    model = Model(len(pieces), seed)
    state, logits = model.prefill(np.array([prompt]), None, True)
    text, expected = b"", []
    for _ in range(80):
        allowed = [i for i, piece in enumerate(pieces) if piece and any(w.startswith(text + piece) for w in words)]
        if text in words:
            allowed.append(eos)
        token = max(allowed, key=lambda i: (logits[0, i], -i))
        expected.append(token)
        if token == eos:
            break
        text += pieces[token]
        logits = model.advance(state, np.array([token]))
    assert [int(t) for t in sequence] == expected, (family, name, seed)
    assert task.constrained(config, sequence) == (text.decode(), False)


def test_beams_respect_the_constraint(kind):
    family, tokenizer = kind
    task = Task(tokenizer)
    prompt = prompt_ids(tokenizer)
    for name in ("person", "regex", "choices"):
        for beam_sample in (False, True):
            config, sequences = run(task, [prompt, prompt_ids(tokenizer, "The")], num_beams=4, num_return_sequences=3,
                                    max_new_tokens=300, do_sample=beam_sample, seed=3, **CONSTRAINTS[name])
            assert len(sequences) == 6
            for sequence in sequences:
                if not len(sequence):  # fewer complete texts than beams (choices: several end alike)
                    continue
                text, truncated = task.constrained(config, sequence)
                assert not truncated, (family, name, text)
                check(name, text)


def test_batches_mix_free_and_constrained_rows(kind):
    """A free row in a batch with a constrained one generates what it generates alone; the constrained one matches."""
    _, tokenizer = kind
    task = Task(tokenizer)
    prompts = [prompt_ids(tokenizer), prompt_ids(tokenizer, "The quick brown fox")]
    options = {"max_new_tokens": 40, **CONSTRAINTS["regex"]}
    config = rt._generation_config({}, {"eos_token_id": tokenizer.token_id("eos_token"), **options}, {})
    index = task.constraint(config)
    _, (constrained, free) = run(task, prompts, constraints=[index, None], **options)
    _, (alone,) = run(task, prompts[1:], constraints=None, **options)
    assert free.tolist() == alone.tolist()
    check("regex", task.constrained(config, constrained)[0])
    assert task.constrained(config, free)[0] != task.constrained(config, constrained)[0]


def test_truncated_when_max_new_tokens_cuts(kind):
    _, tokenizer = kind
    task = Task(tokenizer)
    config, (sequence,) = run(task, [prompt_ids(tokenizer)], max_new_tokens=3, **CONSTRAINTS["person"])
    text, truncated = task.constrained(config, sequence)
    assert truncated and text.startswith("{") and len(sequence) == 3
    automaton = task.constraint(config).automaton
    assert automaton.walk(0, text.encode()) >= 0  # a prefix of a valid text


def test_option_checks_and_errors():
    tokenizer = gpt2_kind()
    task = Task(tokenizer)
    with pytest.raises(rt.InvalidInputError, match="regex and choices cannot be combined; pass one constraint"):
        run(task, [[1]], regex="a", choices=["b"])
    with pytest.raises(rt.InvalidInputError, match="json_schema must be a JSON Schema"):
        rt._generation_config({}, {"json_schema": [1, 2]}, {})
    with pytest.raises(rt.InvalidInputError, match="json_schema must be a JSON Schema, which holds JSON values only"):
        rt._generation_config({}, {"json_schema": {"const": object()}}, {})
    with pytest.raises(rt.InvalidInputError, match="choices must be a non-empty list of non-empty strings"):
        rt._generation_config({}, {"choices": []}, {})
    with pytest.raises(rt.InvalidInputError, match="regex needs an eos token"):
        task.search(Model(10), [[1]], rt._generation_config({}, {"regex": "a"}, {}), 0)
    # the options are the caller's: a model's generation config does not set them
    with pytest.warns(UserWarning, match="the generation config sets regex, which this runtime does not apply"):
        assert rt._model_generation_defaults({"regex": "a", "top_k": 3}, {}) == {"top_k": 3}
    config = rt._generation_config({}, {"json_schema": json.dumps(SCHEMAS["person"])}, {})
    assert hash(config) == hash(rt._generation_config({}, {"json_schema": SCHEMAS["person"]}, {}))
    # compiled once per task: the same constraint in another call reuses its automaton and masks
    config = rt._generation_config({}, {"regex": "ab+", "eos_token_id": 0}, {})
    assert task.constraint(config) is task.constraint(config._replace(max_new_tokens=5))


# --- end to end on a tiny GPT-2 ONNX model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory) -> Path:
    from generation_models import build_model, embedded, export_without_cache

    root = tmp_path_factory.mktemp("constrained-gpt2")
    model = build_model("gpt2", root / "hf")
    return embedded(export_without_cache(model, root / "graph.onnx"), root / "hf", root / "model.onnx")


def test_text_generation_options_end_to_end(gpt2_file):
    runtime = rt.Runtime(gpt2_file, intra_op_num_threads=1)
    schema = SAMPLED_PERSON
    results = runtime(["Once upon a time", "Hello"], json_schema=schema, do_sample=True, seed=5, num_return_sequences=3,
                      max_new_tokens=200, return_full_text=False)
    for records in results:
        for record in records:
            assert record["truncated"] is False
            valid(schema, record["generated_text"])
    [record] = runtime("Paris is", choices=["Paris", "Berlin"], do_sample=False, max_new_tokens=10)
    assert record["generated_text"] in ("Paris isParis", "Paris isBerlin") and record["truncated"] is False
    [record] = runtime("The", regex=r"[a-z]{80}", do_sample=False, max_new_tokens=4)
    assert record["truncated"] is True and re.fullmatch(r"The[a-z]+", record["generated_text"])
    [record] = runtime("The", json_object=True, do_sample=False, max_new_tokens=120, num_beams=3)
    text = record["generated_text"][3:]  # a random model seldom closes a free string: a cut text is a prefix
    if record["truncated"]:
        pattern = rt._constraint_pattern(rt._generation_config({}, {"json_object": True}, {}))[1]
        assert text.startswith("{") and rt._regex_constraint(pattern).walk(0, text.encode()) >= 0
    else:
        assert isinstance(json.loads(text), dict)
    assert "truncated" not in runtime("The", do_sample=False, max_new_tokens=3)[0]


def test_the_mask_comes_after_the_other_processors_and_before_the_warpers():
    """As a logits_processor given to generate(): the warpers (temperature, top-k, top-p) choose among allowed tokens."""
    task = Task(gpt2_kind())
    config = rt._generation_config({}, {"regex": "ab", "eos_token_id": 0, "do_sample": True, "top_k": 5, "top_p": 0.9,
                                        "temperature": 0.5, "repetition_penalty": 1.2}, {})
    prompts = rt._prompts([[1, 2]], config, 0, None)
    names = [type(p).__name__ for p in rt._logits_processors(config, prompts, np.arange(1), task.constraints(config, 1))]
    assert names == ["_RepetitionPenalty", "_Constrained", "_Temperature", "_TopK", "_TopP"]
    assert "_Constrained" not in [type(p).__name__ for p in rt._logits_processors(config, prompts, np.arange(1), [None])]
