"""feature-extraction: raw token embeddings vs transformers.pipeline, sentence embeddings vs
SentenceTransformer.encode (within 1e-5) on the real all-MiniLM-L6-v2 weights and on tiny models with
every pooling mode."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import (bert_tokenizer_folder, export_onnx, families, hub_tokenizer_folder, shared, tiny_model, trained_bpe,
                     trained_unigram)
from runtime_under_test import rt

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The stock market fell sharply today.",
    "",
    "Ünïcödé façade — naïve café",
    "word " * 400,  # longer than max_seq_length (256): truncated the same way
]
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export_encoder(folder, path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    return model, export_onnx(model, path, INPUTS, output="last_hidden_state")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from authoring import embed_metadata

    root = tmp_path_factory.mktemp("minilm")
    folder = shutil.copytree(shared("sentence-transformers__all-MiniLM-L6-v2"), root / "hf",
                             ignore=shutil.ignore_patterns("onnx*"))
    model, plain = export_encoder(folder, root / "plain.onnx")
    embed_metadata(plain, folder, root / "model.onnx", include_vocab=True)
    return folder, model, root / "model.onnx"


def test_minilm_metadata(minilm):
    md = rt.read_metadata(minilm[2])
    assert md[rt.KEY_PIPELINE_TASK] == "feature-extraction"
    st = md[rt.KEY_SENTENCE_TRANSFORMERS]
    assert st["pooling"]["pooling_mode_mean_tokens"] is True
    assert st["normalize"] is True and st["max_seq_length"] == 256
    assert [m["type"] for m in st["modules"]] == ["sentence_transformers.models.Transformer",
                                                  "sentence_transformers.models.Pooling",
                                                  "sentence_transformers.models.Normalize"]
    assert rt.Runtime(minilm[2]).tokenizer.max_length == 256


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    folder, _, path = minilm
    expected = SentenceTransformer(str(folder), device="cpu").encode(SENTENCES)
    runtime = rt.Runtime(path, batch_size=4)
    actual = runtime.encode(SENTENCES)
    assert actual.dtype == np.float32 and actual.shape == expected.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)
    single = runtime.encode(SENTENCES[0])
    assert single.shape == (384,)
    np.testing.assert_allclose(single, expected[0], atol=1e-5, rtol=0)


def test_minilm_is_semantic(minilm):
    a, b, c = rt.Runtime(minilm[2]).encode(SENTENCES[:3])
    paraphrase, unrelated = float(a @ b), float(a @ c)
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)


def test_raw_feature_extraction_matches_the_pipeline(minilm):
    from transformers import AutoTokenizer, pipeline

    folder, model, path = minilm
    oracle = pipeline("feature-extraction", model=model, tokenizer=AutoTokenizer.from_pretrained(folder))
    runtime = rt.Runtime(path)
    texts = SENTENCES[:3]
    for text in texts:
        expected = np.array(oracle(text))
        actual = runtime(text)
        assert isinstance(actual, list) and np.array(actual).shape == expected.shape
        np.testing.assert_allclose(np.array(actual), expected, atol=1e-4, rtol=0)
    batch = runtime(texts)
    assert [np.array(r).shape for r in batch] == [np.array(oracle(t)).shape for t in texts]
    tensors = runtime(texts[0], return_tensors=True)
    assert isinstance(tensors, np.ndarray) and tensors.shape == np.array(oracle(texts[0])).shape


POOLINGS = {
    "cls": {"pooling_mode": "cls"},
    "max": {"pooling_mode": "max"},
    "lasttoken": {"pooling_mode": "lasttoken"},
    "weightedmean": {"pooling_mode": "weightedmean"},
    "mean_sqrt_len_tokens": {"pooling_mode": "mean_sqrt_len_tokens"},
    "mean+max, prompt excluded": {"pooling_mode": ["mean", "max"], "include_prompt": False},
}


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_modes_and_prompts(pooling, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel

    from authoring import embed_metadata

    folder = tmp_path / "hf"
    folder.mkdir()
    bert_tokenizer_folder(folder)
    torch.manual_seed(3)
    config = BertConfig(vocab_size=30522 if (folder / "vocab.txt").exists() else 300, hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, initializer_range=0.5)
    config.architectures = ["BertModel"]
    from transformers import AutoTokenizer

    config.vocab_size = len(AutoTokenizer.from_pretrained(folder))
    BertModel(config).eval().save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 32, **POOLINGS[pooling]}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "document": ""}, "default_prompt_name": None, "similarity_fn_name": "cosine"}))
    _, plain = export_encoder(folder, tmp_path / "plain.onnx")
    embed_metadata(plain, folder, tmp_path / "model.onnx", include_vocab=True)
    runtime = rt.Runtime(tmp_path / "model.onnx")
    oracle = SentenceTransformer(str(folder), device="cpu")
    texts = SENTENCES[:3] + ["short"]
    for kwargs in ({}, {"prompt_name": "query"}, {"prompt": "search: "}, {"normalize_embeddings": True}):
        expected = oracle.encode(texts, **kwargs)
        actual = runtime.encode(texts, **kwargs)
        # un-normalized tiny-model embeddings reach ~10: float32 kernels differ by ~1e-5 relative there
        np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5, err_msg=str(kwargs))
    assert not np.allclose(runtime.encode(texts[0]), runtime.encode(texts[2]), atol=1e-3)
    assert not np.allclose(runtime.encode(texts[0]), runtime.encode(texts[0], prompt_name="query"), atol=1e-5)


def test_encode_errors(minilm, bert_embedded):
    runtime = rt.Runtime(minilm[2])
    with pytest.raises(rt.InvalidInputError, match=r"prompt_name 'query' not found; the model has prompts \[\]"):
        runtime.encode("x", prompt_name="query")
    with pytest.raises(rt.InvalidInputError, match="feature-extraction takes a string or a list of strings; got int"):
        runtime.encode(["a", 3])
    with pytest.raises(rt.TaskDetectionError, match="encode\\(\\) needs a feature-extraction or image-feature-extraction model; "
                                                 "this one is text-classification"):
        rt.Runtime(bert_embedded).encode("x")
    assert runtime.encode([]).shape == (0,)


ENCODER_FAMILIES = families({
    "bpe-trained": (trained_bpe, "roberta", ["input_ids", "attention_mask"]),
    "unigram-trained": (trained_unigram, "xlm-roberta", ["input_ids", "attention_mask"]),
}, {
    "roberta-bpe": (hub_tokenizer_folder("roberta-base", "RobertaTokenizer"), "roberta", ["input_ids", "attention_mask"]),
    "t5-unigram": (hub_tokenizer_folder("t5-small", "T5Tokenizer"), "bert", ["input_ids", "attention_mask"]),
})


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_tokenizer_families(family, tmp_path):
    """Token embeddings as the pipeline gives them, and SentenceTransformer's default (mean pooling) of a plain
    transformers encoder, for byte-level BPE and SentencePiece tokenizers."""
    from authoring import embed_metadata
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, pipeline

    tokenizer_folder_fn, model_type, inputs = ENCODER_FAMILIES[family]
    model = tiny_model(tmp_path / "hf", "AutoModel", tokenizer_folder_fn, model_type=model_type, seed=6)
    plain = export_onnx(model, tmp_path / "plain.onnx", inputs, output="last_hidden_state")
    metadata = embed_metadata(plain, tmp_path / "hf", tmp_path / "model.onnx", include_vocab=True)
    assert metadata[rt.KEY_PIPELINE_TASK] == "feature-extraction"
    runtime = rt.Runtime(tmp_path / "model.onnx", batch_size=2)
    oracle = pipeline("feature-extraction", model=model, tokenizer=AutoTokenizer.from_pretrained(tmp_path / "hf"))
    texts = SENTENCES[:5]
    for actual, expected in zip(runtime(texts), oracle(texts)):
        assert np.array(actual).shape == np.array(expected).shape
        np.testing.assert_allclose(np.array(actual), np.array(expected), atol=1e-4, rtol=0)
    expected = SentenceTransformer(str(tmp_path / "hf"), device="cpu").encode(texts)
    actual = runtime.encode(texts)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
    assert len({round(float(v), 4) for v in actual[:, 0]}) == len(texts)


@pytest.mark.optimum
def test_optimum_export(tmp_path):
    """Optimum's feature-extraction export of a sentence-transformers folder: same sentence embeddings."""
    from sentence_transformers import SentenceTransformer

    from helpers import optimum_embedded

    folder = shutil.copytree(shared("sentence-transformers__all-MiniLM-L6-v2"), tmp_path / "hf",
                             ignore=shutil.ignore_patterns("onnx*"))
    runtime = rt.Runtime(optimum_embedded(folder, tmp_path, "feature-extraction"))
    expected = SentenceTransformer(str(folder), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(runtime.encode(SENTENCES), expected, atol=1e-5, rtol=0)
