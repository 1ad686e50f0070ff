"""Authoring audio models: feature extractor configs, Wav2Vec2CTCTokenizer folders (read without transformers'
tokenizer classes), Whisper's folder (feature extractor, tokenizer, generation config), task detection."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from audio_models import CTC_LETTERS, signal
from helpers import shared
from runtime_under_test import rt

# A hub Wav2Vec2 folder as facebook/wav2vec2-base-960h publishes it: no tokenizer_class, no added_tokens_decoder,
# the special tokens in special_tokens_map.json.
HUB_TOKENIZER_CONFIG = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                        "do_lower_case": False, "return_attention_mask": False, "do_normalize": True}
HUB_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


@pytest.fixture
def hub_ctc_folder(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    folder = tmp_path / "wav2vec2-base-960h"
    config = Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            architectures=["Wav2Vec2ForCTC"])
    config.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(CTC_LETTERS)}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer_config.json").write_text(json.dumps(HUB_TOKENIZER_CONFIG))
    (folder / "special_tokens_map.json").write_text(json.dumps(HUB_SPECIAL_TOKENS))
    return folder


def test_ctc_tokenizer_folder(hub_ctc_folder, monkeypatch):
    from transformers import AutoTokenizer

    from authoring import discovery

    def no_transformers(*args, **kwargs):
        raise AssertionError("a Wav2Vec2CTCTokenizer folder is read from its JSON files")

    monkeypatch.setattr(discovery, "_tokenizer_metadata", no_transformers)
    full = discovery.discover(hub_ctc_folder, level="full")
    assert full[rt.KEY_EMBEDDING_LEVEL] == "full" and full[rt.KEY_PIPELINE_TASK] == "automatic-speech-recognition"
    config = full[rt.KEY_TOKENIZER_CONFIG]
    assert config["tokenizer_class"] == "Wav2Vec2CTCTokenizer" and config["word_delimiter_token"] == "|"
    assert config["vocab"] == json.loads((hub_ctc_folder / "vocab.json").read_text())
    assert full[rt.KEY_FEATURE_EXTRACTOR_CONFIG]["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert full[rt.KEY_FEATURE_ENGINEERING] == {"type": "processor", "config": {
        "components": ["tokenizer", "feature_extractor"], "tokenizer_class": "Wav2Vec2CTCTokenizer",
        "vocabulary": "hf_tokenizer_config.vocab"}}
    essential = discovery.discover(hub_ctc_folder)
    assert essential[rt.KEY_EMBEDDING_LEVEL] == "essential" and "vocab" not in essential[rt.KEY_TOKENIZER_CONFIG]
    assert essential[rt.KEY_FEATURE_ENGINEERING]["config"]["vocabulary"] is None
    # the runtime decodes as transformers' tokenizer loaded from the same folder
    decoder = rt.CTCDecoder(json.loads(rt.canonical_json(config)))
    tokenizer = AutoTokenizer.from_pretrained(hub_ctc_folder)
    ids = np.repeat(np.random.RandomState(0).randint(0, 34, 300), 2).tolist()
    assert decoder.decode(ids) == tokenizer.decode(ids)


def test_audio_classifier_has_no_tokenizer(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor

    from authoring import discover

    ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3,
              architectures=["ASTForAudioClassification"]).save_pretrained(tmp_path)
    ASTFeatureExtractor().save_pretrained(tmp_path)
    metadata = discover(tmp_path, level="full")
    assert metadata[rt.KEY_PIPELINE_TASK] == "audio-classification" and rt.KEY_TOKENIZER_CONFIG not in metadata
    assert metadata[rt.KEY_FEATURE_ENGINEERING]["type"] == "feature_extractor"
    assert isinstance(rt.load_feature_extractor(metadata), rt.ASTFeatureExtractor)


@pytest.mark.parametrize("architecture", ["Wav2Vec2ForCTC", "HubertForCTC", "WavLMForCTC", "Data2VecAudioForCTC",
                                          "WhisperForConditionalGeneration", "Wav2Vec2ForSequenceClassification",
                                          "ASTForAudioClassification", "WhisperForAudioClassification"])
def test_task_detection(architecture):
    from authoring.tasks import detect_task

    expected = "audio-classification" if "Classification" in architecture else "automatic-speech-recognition"
    assert detect_task({"architectures": [architecture]}) == expected


def whisper_features_match(metadata, folder):
    """The feature extractor rebuilt from the embedded config against transformers' built from the folder."""
    from transformers import WhisperFeatureExtractor

    ours = rt.load_feature_extractor(metadata)
    reference = WhisperFeatureExtractor.from_pretrained(folder)
    assert isinstance(ours, rt.WhisperFeatureExtractor) and ours.feature_size == reference.feature_size
    for audio in (signal(3.0), signal(31.0, seed=1)):
        expected = reference(audio, sampling_rate=16000, return_tensors="np")["input_features"]
        np.testing.assert_allclose(ours([audio])["input_features"], expected, atol=1e-4, rtol=0)


def test_whisper_large_v3_folder(tmp_path):
    """openai/whisper-large-v3's files: feature extractor config (128 bins), tokenizer with its vocabulary, and the
    generation config when the folder has one (../shared has none: one is written here, as the hub publishes it)."""
    from authoring import discover

    folder = tmp_path / "whisper-large-v3"
    shutil.copytree(shared("openai__whisper-large-v3"), folder)
    metadata = discover(folder, level="full")
    assert metadata[rt.KEY_PIPELINE_TASK] == "automatic-speech-recognition"
    assert rt.KEY_GENERATION_CONFIG not in metadata
    assert metadata[rt.KEY_FEATURE_EXTRACTOR_CONFIG] == json.loads((folder / "preprocessor_config.json").read_text())
    assert metadata[rt.KEY_TOKENIZER_JSON] and metadata[rt.KEY_TOKENIZER_CONFIG]["tokenizer_class"].startswith("Whisper")
    assert metadata[rt.KEY_FEATURE_ENGINEERING]["type"] == "processor"
    assert metadata[rt.KEY_FEATURE_ENGINEERING]["config"]["components"] == ["tokenizer", "feature_extractor"]
    whisper_features_match(metadata, folder)
    generation = {"decoder_start_token_id": 50258, "no_timestamps_token_id": 50364, "is_multilingual": True,
                  "lang_to_id": {"<|en|>": 50259}, "task_to_id": {"transcribe": 50360, "translate": 50359},
                  "begin_suppress_tokens": [220, 50257], "suppress_tokens": [1, 2, 7]}
    (folder / "generation_config.json").write_text(json.dumps(generation))
    assert discover(folder, level="full")[rt.KEY_GENERATION_CONFIG] == generation


def test_whisper_feature_extractor_of_a_bare_folder(tmp_path):
    """A clone without ../shared: a Whisper folder written by transformers (128 bins, large-v3's settings)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor

    from authoring import discover

    WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, num_mel_bins=128,
                  architectures=["WhisperForConditionalGeneration"]).save_pretrained(tmp_path)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp_path)
    metadata = discover(tmp_path)
    assert metadata[rt.KEY_FEATURE_ENGINEERING]["type"] == "feature_extractor"
    whisper_features_match(metadata, tmp_path)
