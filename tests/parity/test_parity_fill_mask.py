"""fill-mask parity: the runtime on ONNX vs transformers.pipeline("fill-mask") on the same PyTorch weights.

Tolerance: token ids, token_str and sequence identical; scores within 1e-4 (float32 ONNX vs PyTorch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import (assert_parity, bert_tokenizer_folder, export_onnx, families, hub_tokenizer_folder, tiny_model,
                     trained_bpe, trained_unigram)
from runtime_under_test import rt

TEXTS = [
    "Paris is the {mask} of France.",
    "It's a {mask}, isn't it ? Yes !",
    "{mask}",
    "Ünïcödé façade — naïve café {mask} 東京",
    "a " * 40 + "long text with a {mask} near the end",
]
MULTI = ["The {mask} sat on the {mask}.", "{mask} {mask} {mask}"]


def with_clean_up(tokenizer_folder_fn: Any) -> Any:
    """A tokenizer_folder_fn that saves the tokenizer with clean_up_tokenization_spaces=True, as older hub configs have it."""
    def build(folder: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer_folder_fn(folder)
        AutoTokenizer.from_pretrained(folder, clean_up_tokenization_spaces=True).save_pretrained(folder)

    return build


def sentencepiece_with_mask(folder: Path) -> None:
    """T5's SentencePiece Unigram tokenizer plus an XLM-R style <mask> (lstrip): a SentencePiece fill-mask family."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    hub_tokenizer_folder("t5-small", "T5Tokenizer")(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"mask_token": AddedToken("<mask>", lstrip=True, special=True)})
    tokenizer.save_pretrained(folder)


BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
FAMILIES = families({
    # WordPiece (bert-base-uncased's where ../shared is present, else trained); transformers 5 saves
    # clean_up_tokenization_spaces=False
    "bert": (bert_tokenizer_folder, "bert", BERT_INPUTS),
    # WordPiece with the clean-up on: " ," -> ",", " ' " -> "'"
    "bert-clean-up": (with_clean_up(bert_tokenizer_folder), "bert", BERT_INPUTS),
    # byte-level BPE, <mask> with lstrip; clean_up_tokenization_spaces=True, which transformers 5 ignores for BPE
    "bpe-trained": (with_clean_up(trained_bpe), "roberta", ["input_ids", "attention_mask"]),
    # SentencePiece-style Unigram ("▁" word starts, Metaspace decoder), XLM-RoBERTa's <mask>
    "unigram-trained": (with_clean_up(trained_unigram), "xlm-roberta", ["input_ids", "attention_mask"]),
}, {
    "roberta": (with_clean_up(hub_tokenizer_folder("roberta-base", "RobertaTokenizer")), "roberta",
                ["input_ids", "attention_mask"]),
    # T5's Unigram with an added <mask>
    "t5-unigram": (sentencepiece_with_mask, "bert", ["input_ids", "attention_mask"]),
})


class Pair:
    """A tokenizer family's runtime and transformers pipeline on the same weights, and its mask token."""

    def __init__(self, family: str, path: Path, runtime: Any, oracle: Any) -> None:
        self.family, self.path, self.runtime, self.oracle = family, path, runtime, oracle
        self.mask = oracle.tokenizer.mask_token

    def texts(self, texts: list[str]) -> list[str]:
        return [t.format(mask=self.mask) for t in texts]


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory) -> Pair:
    from authoring import embed_metadata
    from transformers import AutoTokenizer, pipeline

    tokenizer_folder_fn, model_type, inputs = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(f"fill_mask_{request.param}")
    model = tiny_model(root / "hf", "AutoModelForMaskedLM", tokenizer_folder_fn, model_type=model_type, seed=3)
    plain = export_onnx(model, root / "plain.onnx", inputs)
    metadata = embed_metadata(plain, root / "hf", root / "model.onnx", include_vocab=True)
    assert metadata[rt.KEY_PIPELINE_TASK] == "fill-mask"
    assert metadata[rt.KEY_TOKENIZER_CONFIG].get("clean_up_tokenization_spaces", False) == (request.param != "bert")
    oracle = pipeline("fill-mask", model=model, tokenizer=AutoTokenizer.from_pretrained(root / "hf"), device="cpu")
    return Pair(request.param, root / "model.onnx", rt.Runtime(root / "model.onnx"), oracle)


def test_outputs_are_not_degenerate(pair):
    results = pair.runtime(pair.texts(TEXTS))
    assert len({tuple(d["token"] for d in r) for r in results}) >= 4, results
    assert len({round(d["score"], 4) for d in results[0]}) == 5, results[0]


def test_single_mask(pair):
    for text in pair.texts(TEXTS):
        expected = pair.oracle(text)
        assert isinstance(expected, list) and len(expected) == 5 and isinstance(expected[0], dict)
        assert_parity(pair.runtime(text), expected)


@pytest.mark.parametrize("top_k", [1, 3, 12, None])
def test_top_k(pair, top_k):
    text = pair.texts(TEXTS)[0]
    assert_parity(pair.runtime(text, top_k=top_k), pair.oracle(text, top_k=top_k))


def test_multiple_masks_give_one_list_per_mask(pair):
    for text in pair.texts(MULTI):
        expected = pair.oracle(text, top_k=3)
        assert isinstance(expected[0], list)
        assert_parity(pair.runtime(text, top_k=3), expected)
    assert pair.mask in pair.runtime(pair.texts(MULTI)[0])[0][0]["sequence"]  # the other mask stays


def test_lists_keep_order_across_length_buckets(pair):
    texts = pair.texts(TEXTS + MULTI)
    runtime = rt.Runtime(pair.path, batch_size=2)
    assert_parity(runtime(texts), pair.oracle(texts))
    assert_parity(runtime(texts[:1]), pair.oracle(texts[:1]))  # a one-text list is unwrapped, as transformers does
    assert runtime([]) == []


def test_targets(pair):
    text = pair.texts(TEXTS)[0]
    vocabulary = pair.oracle.tokenizer.get_vocab()
    words = [w for w in ("the", "Ġthe", "▁the", "capital", "Ġcapital", "▁capital", "of", "Ġof", "▁of", "city", "▁is")
             if w in vocabulary]
    assert len(words) >= 3
    assert_parity(pair.runtime(text, targets=words), pair.oracle(text, targets=words))
    assert_parity(pair.runtime(text, targets=words[0]), pair.oracle(text, targets=words[0]))
    assert_parity(pair.runtime(text, targets=words, top_k=2), pair.oracle(text, targets=words, top_k=2))
    multi = pair.texts(MULTI)[0]
    assert_parity(pair.runtime(multi, targets=words), pair.oracle(multi, targets=words))
    padded = [pair.oracle.tokenizer.pad_token, words[0]]  # a pad token proposed is dropped from the sequence
    assert_parity(pair.runtime(multi, targets=padded), pair.oracle(multi, targets=padded))


def test_targets_outside_the_vocabulary(pair):
    text = pair.texts(TEXTS)[0]
    vocabulary = pair.oracle.tokenizer.get_vocab()
    targets = ["Xylophonequartz", "the"]
    assert targets[0] not in vocabulary
    with pytest.warns(UserWarning, match="target 'Xylophonequartz' is not in the vocabulary; using its first token"):
        actual = pair.runtime(text, targets=targets + ["", "the"])
    assert_parity(actual, pair.oracle(text, targets=targets + ["", "the"]))
    assert len(actual) == 2  # top_k capped to the distinct target tokens; "" has none
    with pytest.warns(UserWarning, match="target '' is not in the vocabulary and has no tokens; ignoring it"):
        with pytest.raises(rt.InvalidInputError) as info:
            pair.runtime(text, targets=[""])
    assert str(info.value) == "targets [''] give no token to score; pass words of the vocabulary"


def test_text_without_mask_token(pair):
    with pytest.raises(rt.InvalidInputError) as info:
        pair.runtime("Paris is nice.")
    assert str(info.value) == f"fill-mask input has no mask token {pair.mask}: 'Paris is nice.'"
    with pytest.raises(rt.InvalidInputError) as info:
        pair.runtime(pair.texts(TEXTS[:1]) + ["no mask here"])
    assert str(info.value) == f"fill-mask input has no mask token {pair.mask}: 'no mask here'"
    with pytest.raises(rt.InvalidInputError) as info:
        pair.runtime("word " * 200 + pair.mask)
    limit = pair.runtime.tokenizer.max_length
    assert str(info.value) == f"fill-mask input has no mask token {pair.mask} within its first {limit} tokens: " \
        f"{'word ' * 15 + 'wo...'!r}"


def test_bad_arguments(pair):
    text = pair.texts(TEXTS)[0]
    for message, call in [
        ("top_k must be a positive integer, got 0", lambda: pair.runtime(text, top_k=0)),
        ("targets must be a string or a list of strings, got 3", lambda: pair.runtime(text, targets=3)),
        ("fill-mask takes a string or a list of strings; got dict", lambda: pair.runtime({"text": text})),
        ("fill-mask does not take 'tokenizer_kwargs'; it takes top_k, targets",
         lambda: pair.runtime(text, tokenizer_kwargs={})),
    ]:
        with pytest.raises(rt.InvalidInputError) as info:
            call()
        assert str(info.value) == message


def test_clean_up_tokenization_spaces(pair):
    """transformers' clean-up runs on the decoded text when the config asks for it, except with BPE."""
    tokenizer = pair.runtime.tokenizer
    ids = tokenizer.encode(["It's a test, isn't it ? Yes !"])[0].ids
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == pair.oracle.tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == {
        "bert": "it ' s a test, isn ' t it? yes!",  # the WordPiece decoder cleans up within tokens only
        "bert-clean-up": "it's a test, isn't it? yes!",
        "roberta": "It's a test, isn't it ? Yes !",
        "bpe-trained": "It's a test, isn't it ? Yes !",
        "t5-unigram": "It's a test, isn't it? Yes!",  # Metaspace decoding, then the clean-up
        "unigram-trained": "It's a test, isn't it? Yes!",
    }[pair.family]


def test_tokenizer_without_mask_token(tmp_path):
    from authoring import embed
    from authoring.discovery import discover

    model = tiny_model(tmp_path / "hf", "AutoModelForMaskedLM", seed=4)
    plain = export_onnx(model, tmp_path / "plain.onnx", ["input_ids", "attention_mask"])
    metadata = discover(tmp_path / "hf", level="full")
    del metadata[rt.KEY_TOKENIZER_CONFIG]["mask_token"]
    embed(plain, metadata, tmp_path / "model.onnx")
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(tmp_path / "model.onnx")
    assert str(info.value) == ("fill-mask needs a mask token but the embedded tokenizer config has no mask_token; "
                               "re-embed from a tokenizer that defines one")


@pytest.mark.optimum
@pytest.mark.parametrize("pair", ["bert"], indirect=True)  # one family for the exporter; tokenizers are covered above
def test_optimum_export(pair, tmp_path):
    """Optimum's exporter on the same weights gives the same proposals."""
    from helpers import optimum_embedded

    runtime = rt.Runtime(optimum_embedded(pair.path.parent / "hf", tmp_path, "fill-mask"))
    texts = pair.texts(TEXTS + MULTI)
    assert_parity(runtime(texts, top_k=3), pair.oracle(texts, top_k=3))
