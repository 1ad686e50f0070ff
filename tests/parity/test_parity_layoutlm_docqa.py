"""document-question-answering parity for LayoutLM (v1) on the caller's word_boxes: the runtime on ONE file made by
onnxmeta's export (torch.onnx, bbox an input) against transformers 5.25's DocumentQuestionAnsweringPipeline given the
same word_boxes, on the same weights. Tolerance: answers and start/end word indexes identical, scores within 1e-4.

A tiny random LayoutLMForQuestionAnswering with a WordPiece tokenizer trained in the test (helpers.trained_wordpiece);
large initial weights so that answers vary with the question and the words.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from helpers import assert_parity, trained_wordpiece
from runtime_under_test import rt

WORDS = ["Invoice", "number", "4711", "date", "March", "3,", "2024", "total", "due:", "125.50", "euros", "paid", "by",
         "Jane", "Doe", "at", "the", "Berlin", "office."]
# a long page: with max_seq_len 48 it needs several windows overlapping doc_stride tokens
LONG = [f"{w}{i}" if i % 3 == 0 else w for i in range(8) for w in WORDS]


def boxes(words: list[str], seed: int = 0) -> list[tuple[str, list[int]]]:
    """Each word with a box normalized to 0-1000, rows of five words down the page."""
    out = []
    for i, word in enumerate(words):
        x0, y0 = (i % 5) * 190 + (seed * 7) % 40, (i // 5) * 37 % 950
        out.append((word, [x0, y0, x0 + 20 + 9 * len(word) % 150, y0 + 25]))
    return out


QUESTIONS = ("what is the total?", "who paid the invoice?", "When was it dated?")
PAGE, PAGE_LONG = boxes(WORDS), boxes(LONG, seed=1)


@pytest.fixture(scope="module")
def layoutlm(tmp_path_factory):
    import torch
    from transformers import AutoModelForDocumentQuestionAnswering, AutoTokenizer, LayoutLMConfig, pipeline

    from authoring.export import export

    folder = tmp_path_factory.mktemp("layoutlm") / "model"
    folder.mkdir()
    trained_wordpiece(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LayoutLMConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=512, initializer_range=0.5,
                            pad_token_id=tokenizer.pad_token_id, type_vocab_size=2,
                            architectures=["LayoutLMForQuestionAnswering"])
    torch.manual_seed(0)
    model = AutoModelForDocumentQuestionAnswering.from_config(config).eval()
    assert type(model).__name__ == "LayoutLMForQuestionAnswering"
    model.save_pretrained(folder)
    exported = tmp_path_factory.mktemp("layoutlm-onnx") / "exported.onnx"
    report = export(folder, exported, task="document-question-answering")
    assert rt.read_metadata(exported)[rt.KEY_PIPELINE_TASK] == "document-question-answering"
    alone = tmp_path_factory.mktemp("layoutlm-alone") / "layoutlm.onnx"
    shutil.copy(exported, alone)
    oracle = pipeline("document-question-answering", model=str(folder), tokenizer=str(folder))
    return {"runtime": rt.Runtime(alone), "oracle": oracle, "report": report, "folder": folder}


CASES: list[tuple[str, dict[str, Any]]] = [
    ("positional", {"question": QUESTIONS[0], "word_boxes": PAGE}),
    ("top_k", {"question": QUESTIONS[1], "word_boxes": PAGE, "top_k": 4}),
    ("top_k-more", {"question": QUESTIONS[2], "word_boxes": PAGE, "top_k": 30}),
    ("max_answer_len", {"question": QUESTIONS[0], "word_boxes": PAGE, "top_k": 3, "max_answer_len": 2}),
    ("impossible", {"question": QUESTIONS[1], "word_boxes": PAGE, "top_k": 200, "handle_impossible_answer": True}),
    ("long-default", {"question": QUESTIONS[2], "word_boxes": PAGE_LONG, "top_k": 3}),
    ("long-windows", {"question": QUESTIONS[0], "word_boxes": PAGE_LONG, "top_k": 5, "max_seq_len": 48,
                      "doc_stride": 16}),
    ("long-windows-impossible", {"question": QUESTIONS[1], "word_boxes": PAGE_LONG, "top_k": 2, "max_seq_len": 40,
                                 "doc_stride": 8, "handle_impossible_answer": True}),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_layoutlm_word_boxes_parity(layoutlm, kwargs):
    want = layoutlm["oracle"](image=None, **kwargs)
    got = layoutlm["runtime"](None, **kwargs)
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in want]
    assert_parity(got, want)
    assert all(list(a) == ["score", "answer", "start", "end"] for a in got)


def test_layoutlm_answers_vary_and_forms(layoutlm):
    from image_helpers import synthetic

    answers = {layoutlm["runtime"](None, q, word_boxes=PAGE)[0]["answer"] for q in QUESTIONS}
    assert len(answers) > 1, answers
    # several windows: the long page really is cut
    runtime = layoutlm["runtime"]
    items = [{"image": None, "question": q, "word_boxes": PAGE} for q in QUESTIONS]
    want = layoutlm["oracle"](items, top_k=2)
    assert_parity(runtime(items, top_k=2), want)
    assert_parity(runtime(image=None, question=QUESTIONS[0], word_boxes=PAGE), layoutlm["oracle"](
        image=None, question=QUESTIONS[0], word_boxes=PAGE))
    # an image given beside the words: loaded, not read (LayoutLM v1 takes no pixels)
    image = synthetic(40, 30, seed=0)
    assert_parity(runtime(image, QUESTIONS[1], word_boxes=PAGE, top_k=2),
                  layoutlm["oracle"](image=image, question=QUESTIONS[1], word_boxes=PAGE, top_k=2))


def test_layoutlm_refusals(layoutlm):
    runtime = layoutlm["runtime"]
    for bad in ([("word", [0, 0, 10])], [("word",)], [(3, [0, 0, 1, 1])], "words", [], [("w", [0, 0, 1.5, 2])],
                [("w", [0, 0, 5000, 2])]):
        with pytest.raises(rt.InvalidInputError, match="word_boxes"):
            runtime(None, QUESTIONS[0], word_boxes=bad)
    with pytest.raises(rt.InvalidInputError, match=r"word_boxes=.*pytesseract"):
        runtime(b"\x89PNG not an image", QUESTIONS[0])
    with pytest.raises(rt.InvalidInputError, match="question"):
        runtime(None, "  ", word_boxes=PAGE)
    with pytest.raises(rt.InvalidInputError, match="top_k"):
        runtime(None, QUESTIONS[0], word_boxes=PAGE, top_k=0)
