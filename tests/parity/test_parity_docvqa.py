"""document-question-answering parity: the runtime on ONE Donut file against transformers 5.25's
DocumentQuestionAnsweringPipeline on the same weights (the answer parsed from the same tokens), and Donut's image
processor step by step against transformers' (bit-equal pixels).

A tiny random Donut (image_to_text_models.build_donut: DonutSwin encoder, MBart decoder, Donut's image processor with
do_align_long_axis, XLM-RoBERTa Unigram tokenizer with the DocVQA tags) exported by onnxmeta's export (Optimum's
exporter, the parts merged into one file) and copied ALONE into an empty folder; a second one without the tags
(a CORD-style parser) for the refusal.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest
from image_helpers import synthetic
from runtime_under_test import rt

# (width, height, seed): portrait, landscape, tiny, square and thin documents
DOCUMENTS = ((50, 40, 0), (30, 90, 1), (100, 60, 2), (17, 33, 3), (64, 48, 4), (200, 7, 5))
QUESTIONS = ("what is the date?", "who signed it?", "How much is the total, in euros?")


# ------------------------------------------------------------------------------------------------------
# Donut's image processor, step by step (no Optimum needed)
# ------------------------------------------------------------------------------------------------------

PROCESSOR_CONFIGS = [
    {"size": {"height": 64, "width": 48}},  # thumbnail and centred padding
    {"size": [48, 64], "do_align_long_axis": True},  # [width, height], as Donut's configs have it; turned to portrait
    {"size": {"height": 40, "width": 60}, "do_align_long_axis": True, "resample": 0},  # landscape; the thumbnail bicubic
    {"size": {"height": 64, "width": 48}, "do_thumbnail": False, "do_pad": False},  # the shortest edge resize alone
    {"size": {"height": 64, "width": 48}, "do_resize": False},  # thumbnail and padding alone
    {"size": {"height": 64, "width": 48}, "do_align_long_axis": True, "do_resize": False, "do_thumbnail": False,
     "do_pad": False},  # the turn alone
]


@pytest.mark.parametrize("config", PROCESSOR_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_donut_image_processor_matches_transformers(config):
    from transformers import DonutImageProcessorPil

    reference = DonutImageProcessorPil(**config)
    mine = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {**config, "image_processor_type": "DonutImageProcessor"}})
    assert type(mine).__name__ == "_DonutImageProcessor"
    shapes = set()
    for width, height, seed in [*DOCUMENTS, (1, 1, 6), (48, 64, 7)]:
        image = synthetic(width, height, seed=seed)
        want = reference(image, return_tensors="np")["pixel_values"][0]
        got = mine.process(image)
        assert got.shape == want.shape and np.array_equal(got, want), (config, width, height)
        shapes.add(got.shape)
    if config.get("do_pad", True):
        height, width = (config["size"][1], config["size"][0]) if isinstance(config["size"], list) else \
            (config["size"]["height"], config["size"]["width"])
        assert shapes == {(3, height, width)} and mine.output_size == (height, width)


def test_the_turn_is_a_quarter_clockwise():
    """do_align_long_axis turns a landscape page to the portrait size as np.rot90(k=3) does."""
    processor = rt.load_image_processor({rt.KEY_IMAGE_PROCESSOR_CONFIG: {
        "image_processor_type": "DonutImageProcessor", "size": {"height": 6, "width": 4}, "do_align_long_axis": True,
        "do_resize": False, "do_thumbnail": False, "do_pad": False, "do_normalize": False, "do_rescale": False}})
    page = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)  # 6 wide, 4 high
    assert np.array_equal(processor.process(page), np.rot90(page, 3).transpose(2, 0, 1).astype(np.float32))


# ------------------------------------------------------------------------------------------------------
# The pipeline on Donut
# ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def donuts(tmp_path_factory) -> dict[str, Any]:
    from image_to_text_models import export_all

    root = tmp_path_factory.mktemp("docvqa")
    built = export_all(root, [], kinds=("donut", "donut-cord"))
    out = {}
    for kind, (folder, file, results) in built.items():
        alone = root / f"{kind}-alone" / "model.onnx"
        alone.parent.mkdir()
        shutil.copyfile(file, alone)
        out[kind] = {"model": alone, "folder": folder, **results}
    documents = root / "documents"
    documents.mkdir()
    out["documents"] = []
    for width, height, seed in DOCUMENTS:
        path = documents / f"document-{width}x{height}.png"
        synthetic(width, height, seed=seed).save(path)
        out["documents"].append(str(path))
    return out


@pytest.fixture(scope="module")
def reference(donuts) -> Any:
    from transformers import pipeline

    return pipeline("document-question-answering", model=str(donuts["donut"]["folder"]), device="cpu")


@pytest.fixture(scope="module")
def docvqa(donuts) -> Any:
    return rt.Runtime(donuts["donut"]["model"], task="document-question-answering")


@pytest.mark.optimum
def test_answers_equal_transformers_5(donuts, reference, docvqa):
    answers = []
    for document in donuts["documents"]:
        for question in QUESTIONS:
            want = reference(document, question)
            assert docvqa(document, question) == want, (document, question)
            answers.append(want[0]["answer"])
    # the tiny model answers some documents and not others, differently
    found = [a for a in answers if a is not None]
    assert found and len(found) < len(answers) and len(set(found)) >= 3, answers
    assert donuts["donut"]["exporter_task"] == "image-to-text-with-past"


@pytest.mark.optimum
def test_call_forms_and_batches(donuts, reference, docvqa):
    documents = donuts["documents"]
    pairs = [{"image": d, "question": q} for d in documents[:3] for q in QUESTIONS[:2]]
    want = [reference(p["image"], p["question"]) for p in pairs]
    assert docvqa(pairs) == want
    assert rt.Runtime(donuts["donut"]["model"], task="document-question-answering", batch_size=2)(pairs) == want
    assert docvqa(pairs[0]) == want[0]
    assert docvqa(image=pairs[0]["image"], question=pairs[0]["question"]) == want[0]
    assert docvqa(pairs[0]["image"], question=pairs[0]["question"], top_k=2) == want[0]


@pytest.mark.optimum
def test_refusals(donuts, docvqa, tmp_path):
    from authoring import embed

    document = donuts["documents"][0]
    with pytest.raises(rt.InvalidInputError):
        docvqa(b"not an image", "what is the date?")
    with pytest.raises(rt.InvalidInputError, match="word_boxes are for LayoutLM models"):
        docvqa(document, "what is the date?", word_boxes=[("total", [0, 0, 10, 10])])
    with pytest.raises(rt.InvalidInputError, match="each needs an image and a question"):
        docvqa([{"image": document}])
    # a Donut trained for another task (a CORD-style parser): no DocVQA prompt tokens
    with pytest.raises(rt.TaskDetectionError, match="not trained for document question answering: its tokenizer has no "
                                                    "<s_docvqa>, <s_question>, </s_question>, <s_answer>"):
        rt.Runtime(donuts["donut-cord"]["model"], task="document-question-answering")
    assert rt.read_metadata(donuts["donut-cord"]["model"])[rt.KEY_PIPELINE_TASK] == "image-to-text"
    # LayoutLMv2/v3 need image features: the same file told it is a LayoutLMv3 (LayoutLM v1: test_parity_layoutlm_docqa)
    metadata = dict(rt.read_metadata(donuts["donut"]["model"]))
    metadata[rt.KEY_MODEL_CONFIG] = {"model_type": "layoutlmv3", "architectures": ["LayoutLMv3ForQuestionAnswering"]}
    embed(donuts["donut"]["model"], metadata, tmp_path / "layoutlm.onnx")
    with pytest.raises(rt.TaskDetectionError, match=r"LayoutLMv2/v3 need image features \(and pytesseract OCR"):
        rt.Runtime(tmp_path / "layoutlm.onnx", task="document-question-answering")
