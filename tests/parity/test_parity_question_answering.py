"""question-answering parity: the runtime on ONNX vs transformers 4.57's QuestionAnsweringPipeline (transformers 5
removed it) on the same weights, for WordPiece, byte-level BPE and SentencePiece Unigram tokenizers: trained in the
test, and the real ones (SQuAD's WordPiece, RoBERTa, T5) where ../shared is present.

The oracle runs in the Optimum environment (transformers 4.57; created on first use by
helpers.optimum_python()) through tests/oracles/question_answering.py; its answers are computed on each run,
never checked in. Tolerance: answers and character offsets identical, scores within 1e-4.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers import (ROOT, assert_parity, export_onnx, families, for_transformers_4, hub_tokenizer_folder, limited,
                     optimum_python, tiny_model, trained_bpe, trained_unigram, trained_wordpiece)
from runtime_under_test import rt


CONTEXT = ("My name is Wolfgang and I live in Berlin. Berlin is the capital of Germany and has about "
           "3.7 million inhabitants; its river is the Spree.")
QUESTIONS = ["Where do I live?", "What is my name?", "How many people live in Berlin?"]
LONG = " ".join(f"Paragraph {i}: the museum number {i} opened in {1900 + 7 * i} near the old harbour of Hamburg."
                for i in range(20))
UNICODE = "Der Kölner Dom wurde 1248 begonnen — 東京 ist weit weg, naïve Gäste trinken Café crème."

CASES: list[dict[str, Any]] = [
    {"kwargs": {"question": QUESTIONS[0], "context": CONTEXT}},
    {"args": [QUESTIONS[1], CONTEXT]},
    {"args": [{"question": QUESTIONS[2], "context": CONTEXT}]},
    {"args": [[{"question": q, "context": CONTEXT} for q in QUESTIONS]]},
    {"kwargs": {"question": QUESTIONS, "context": CONTEXT}},
    {"kwargs": {"question": QUESTIONS[:2], "context": [CONTEXT, UNICODE]}},
    {"kwargs": {"question": QUESTIONS[0], "context": CONTEXT, "top_k": 3}},
    {"kwargs": {"question": QUESTIONS[0], "context": CONTEXT, "top_k": 12}},
    {"kwargs": {"question": QUESTIONS[0], "context": CONTEXT, "max_answer_len": 1, "top_k": 2}},
    {"kwargs": {"question": QUESTIONS[2], "context": CONTEXT, "max_answer_len": 4, "top_k": 5}},
    {"kwargs": {"question": QUESTIONS[0], "context": CONTEXT, "handle_impossible_answer": True, "top_k": 3}},
    {"kwargs": {"question": QUESTIONS[0], "context": CONTEXT, "handle_impossible_answer": True}},
    {"kwargs": {"question": QUESTIONS[0], "context": CONTEXT, "align_to_words": False, "top_k": 4}},
    {"kwargs": {"question": "When did museum 17 open?", "context": LONG, "top_k": 3}},
    {"kwargs": {"question": "When did museum 17 open?", "context": LONG, "max_seq_len": 48, "doc_stride": 16, "top_k": 5}},
    {"kwargs": {"question": "When did museum 3 open?", "context": LONG, "max_seq_len": 40, "doc_stride": 8,
                "handle_impossible_answer": True, "top_k": 2}},
    {"kwargs": {"question": "Wann wurde der Dom begonnen?", "context": UNICODE, "top_k": 3}},
]

def left_padding(tokenizer_folder_fn: Any) -> Any:
    def build(folder: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer_folder_fn(folder)
        AutoTokenizer.from_pretrained(folder, padding_side="left").save_pretrained(folder)

    return build


BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
FAMILIES = families({
    # WordPiece; [CLS] stays a possible (impossible-answer) position
    "wordpiece-trained": (trained_wordpiece, "bert", BERT_INPUTS),
    # padding on the left: transformers puts the context first and truncates it as the first sequence
    "wordpiece-left-padding": (left_padding(trained_wordpiece), "bert", BERT_INPUTS),
    # byte-level BPE: answers start after a leading space, pair template <s> q </s></s> c </s>
    "bpe-trained": (trained_bpe, "roberta", ["input_ids", "attention_mask"]),
    # SentencePiece-style Unigram: words start with "▁"
    "unigram-trained": (trained_unigram, "xlm-roberta", ["input_ids", "attention_mask"]),
}, {
    "bert-wordpiece": (hub_tokenizer_folder("distilbert-base-uncased-distilled-squad", "DistilBertTokenizer"), "bert",
                       BERT_INPUTS),
    "roberta-bpe": (hub_tokenizer_folder("roberta-base", "RobertaTokenizer"), "roberta", ["input_ids", "attention_mask"]),
    # T5's Unigram: no [CLS] at all
    "t5-unigram": (hub_tokenizer_folder("t5-small", "T5Tokenizer"), "bert", ["input_ids", "attention_mask"]),
})
WORDPIECE = "bert-wordpiece" if "bert-wordpiece" in FAMILIES else "wordpiece-trained"


def oracle_answers(folders: list[Path], cases: list[dict[str, Any]]) -> list[list[Any]]:
    """What transformers 4.57's pipeline answers for each case, for each folder, from the Optimum environment."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(optimum_python()), str(ROOT / "tests" / "oracles" / "question_answering.py"),
         *(str(for_transformers_4(folder)) for folder in folders)],
        input=json.dumps(cases), capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"},
    )
    if result.returncode != 0:
        pytest.fail(f"question-answering oracle failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


class Family:
    """A QA model folder, its embedded ONNX export, and the oracle's answers to CASES."""

    def __init__(self, name: str, folder: Path, path: Path, oracle: Oracle) -> None:
        self.name, self.folder, self.path, self.oracle = name, folder, path, oracle
        self.runtime = rt.Runtime(path)

    @property
    def expected(self) -> list[Any]:
        return self.oracle.answers[self.name]


class Oracle:
    """The oracle's answers for every family, asked for on first use (only the tests marked optimum need the
    Optimum environment), in one process."""

    def __init__(self) -> None:
        self.folders: dict[str, Path] = {}

    @functools.cached_property
    def answers(self) -> dict[str, list[Any]]:
        return dict(zip(self.folders, oracle_answers(list(self.folders.values()), CASES)))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Family]:
    """Every family's model, built once: the oracle answers for all of them in one process."""
    from authoring import embed_metadata

    oracle, families = Oracle(), {}
    for name, (tokenizer_folder_fn, model_type, inputs) in FAMILIES.items():
        root = tmp_path_factory.mktemp(f"qa_{name}")
        model = tiny_model(root / "hf", "AutoModelForQuestionAnswering", limited(tokenizer_folder_fn), model_type=model_type,
                           seed=5)
        plain = export_onnx(model, root / "plain.onnx", inputs, output=("start_logits", "end_logits"))
        metadata = embed_metadata(plain, root / "hf", root / "model.onnx", include_vocab=True)
        assert metadata[rt.KEY_PIPELINE_TASK] == "question-answering"
        oracle.folders[name] = root / "hf"
        families[name] = Family(name, root / "hf", root / "model.onnx", oracle)
    return families


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, built) -> Family:
    return built[request.param]


def call(runtime: Any, case: dict[str, Any]) -> Any:
    return runtime(*case.get("args", []), **case.get("kwargs", {}))


@pytest.mark.optimum  # the oracle lives in the Optimum environment
def test_oracle_answers_are_not_degenerate(family):
    assert not any(isinstance(e, dict) and "error" in e for e in family.expected), family.expected
    answers = {json.dumps(e, sort_keys=True) for e in family.expected}
    assert len(answers) >= 10
    assert isinstance(family.expected[6], list) and len(family.expected[6]) == 3
    assert {a["answer"] for a in family.expected[6]} != {family.expected[0]["answer"]}


@pytest.mark.optimum  # the oracle lives in the Optimum environment
@pytest.mark.parametrize("index", range(len(CASES)))
def test_case(family, index):
    assert_parity(call(family.runtime, CASES[index]), family.expected[index])


@pytest.mark.optimum  # the oracle lives in the Optimum environment
def test_answers_come_from_the_context(family):
    for case, expected in zip(CASES, family.expected):
        answers = expected if isinstance(expected, list) else [expected]
        context = case.get("kwargs", {}).get("context", CONTEXT)
        if isinstance(context, str):
            for answer in answers:
                assert context[answer["start"]:answer["end"]] == answer["answer"]


def test_windows_cover_a_long_context(family):
    tokens = family.runtime.tokenizer.encode([LONG])[0]
    assert len(tokens.ids) == 128 and tokens.overflowing  # LONG needs several windows
    question = "When did museum 17 open?"
    late = family.runtime(question=question, context=LONG, max_seq_len=48, doc_stride=16, top_k=20)
    # answers past the end of the first 48-token window come from later windows
    context_first = family.runtime.tokenizer.padding_side == "left"  # transformers' order then
    pair, strategy = ((LONG, question), "only_first") if context_first else ((question, LONG), "only_second")
    first = family.runtime.tokenizer.with_truncation(strategy, window=48, stride=16).encode([pair])[0]
    first_end = max(end for (_, end), seq in zip(first.offsets, first.sequence_ids) if seq == (0 if context_first else 1))
    assert max(a["start"] for a in late) >= first_end


@pytest.mark.optimum  # the oracle lives in the Optimum environment
def test_batches_across_buckets(family):
    runtime = rt.Runtime(family.path, batch_size=2)
    for index in (3, 5, 14):
        assert_parity(call(runtime, CASES[index]), family.expected[index])


def test_bad_inputs(family):
    runtime = family.runtime
    with pytest.raises(rt.InvalidInputError, match="needs a question and a context.*the context is missing"):
        runtime(question="Where?")
    with pytest.raises(rt.InvalidInputError, match="needs a question and a context"):
        runtime("Where do I live?")
    with pytest.raises(rt.InvalidInputError, match="needs a question and a context"):
        runtime()
    with pytest.raises(rt.InvalidInputError, match="question-answering context is empty"):
        runtime(question="Where?", context="")
    with pytest.raises(rt.InvalidInputError, match="question-answering question is missing"):
        runtime({"context": CONTEXT})
    with pytest.raises(rt.InvalidInputError, match="2 questions but 1 contexts"):
        runtime(question=QUESTIONS[:2], context=[CONTEXT])
    with pytest.raises(rt.InvalidInputError, match="top_k must be a positive integer"):
        runtime(question="Where?", context=CONTEXT, top_k=0)
    with pytest.raises(rt.InvalidInputError, match=r"doc_stride \(50\) is larger than max_seq_len \(40\)"):
        runtime(question="Where?", context=CONTEXT, max_seq_len=40, doc_stride=50)
    with pytest.raises(rt.InvalidInputError, match=r"max_seq_len \(512\) is longer than the model takes \(128\)"):
        runtime(question="Where?", context=CONTEXT, max_seq_len=512)
    with pytest.raises(rt.InvalidInputError, match="shorten the question or raise max_seq_len"):
        runtime(question="why " * 60, context=CONTEXT, max_seq_len=40, doc_stride=8)
    with pytest.raises(rt.InvalidInputError, match="does not take 'candidate_labels'"):
        runtime(question="Where?", context=CONTEXT, candidate_labels=["a"])


@pytest.mark.optimum  # the oracle lives in the Optimum environment
@pytest.mark.parametrize("family", [WORDPIECE], indirect=True)  # one family for the exporter; tokenizers are covered above
def test_optimum_export(family, tmp_path):
    """Optimum's exporter on the same weights gives the same answers."""
    from authoring import embed_metadata

    from helpers import optimum_export

    exported = optimum_export(family.folder, tmp_path / "optimum", "question-answering")
    embed_metadata(exported / "model.onnx", exported, tmp_path / "model.onnx", include_vocab=True)
    runtime = rt.Runtime(tmp_path / "model.onnx")
    assert [o.name for o in runtime.session.get_outputs()] == ["start_logits", "end_logits"]
    for index in (0, 4, 10, 15):
        assert_parity(call(runtime, CASES[index]), family.expected[index])


def test_runtime_cli(family, capsys):
    assert rt._main([str(family.path), QUESTIONS[0], CONTEXT, "--options", '{"top_k": 2}']) == 0
    assert json.loads(capsys.readouterr().out) == family.runtime(question=QUESTIONS[0], context=CONTEXT, top_k=2)
    assert rt._main([str(family.path), QUESTIONS[0]]) == 1
    assert "question-answering takes two inputs, a question and a context" in capsys.readouterr().err
