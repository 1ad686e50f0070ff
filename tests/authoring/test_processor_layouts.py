"""A model folder's processor in either layout: the separate files older transformers (and lone extractors) write
(preprocessor_config.json beside the tokenizer's files) and transformers 5's ONE processor_config.json with each part
nested ({"feature_extractor": {...}, "image_processor": {...}, "processor_class": ...}), as WhisperProcessor,
Wav2Vec2Processor or CLIPProcessor.save_pretrained writes it. Both embed to the same processor and the runtime gives
the same answers from both; where both files exist, the nested part wins, as in transformers 5's loaders.

Families without a Processor class in transformers (AST, ViT) are nested by hand, in the shape ProcessorMixin writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from audio_models import built, signal
from image_helpers import export_vision_onnx, synthetic, tiny_clip, tiny_vit
from runtime_under_test import rt

PARTS = {rt.KEY_FEATURE_EXTRACTOR_CONFIG: "feature_extractor", rt.KEY_IMAGE_PROCESSOR_CONFIG: "image_processor"}
SIGNALS = [signal(1.0, seed=1), signal(2.3, seed=2), signal(0.4, seed=3)]


def _separate(folder: Path, target: Path, part: Any, tokenizer: Any = None) -> Path:
    """The model's config and weights with the processor as separate files: preprocessor_config.json (+ tokenizer)."""
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(folder / name, target / name)
    part.save_pretrained(target)
    if tokenizer is not None:
        tokenizer.save_pretrained(target)
    assert (target / "preprocessor_config.json").is_file() and not (target / "processor_config.json").exists()
    return target


def _nested(separate: Path, target: Path, processor: Any = None, **parts: Any) -> Path:
    """The same model saved as transformers 5 saves a processor: one processor_config.json, no preprocessor_config.json.
    processor: a ProcessorMixin to save_pretrained; parts: written by hand where transformers has no Processor class."""
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(separate / name, target / name)
    if processor is not None:
        processor.save_pretrained(target)
    else:
        (target / "processor_config.json").write_text(json.dumps({k: v.to_dict() for k, v in parts.items()}, default=list))
    assert not (target / "preprocessor_config.json").exists()
    assert set(PARTS.values()) & set(json.loads((target / "processor_config.json").read_text()))
    return target


def _processor_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The embedded processor configs, less what says how it was saved (processor_class)."""
    return {key: {k: v for k, v in metadata[key].items() if k != "processor_class"} for key in PARTS if key in metadata}


def assert_same(separate: Path, nested: Path, plain: Path, tmp: Path, call: Any) -> None:
    """Both folders embed the same processor into the same graph, and the runtime answers alike from each."""
    from authoring import discover, embed_metadata

    first, second = discover(separate, level="full"), discover(nested, level="full")
    assert _processor_metadata(first) and _processor_metadata(first) == _processor_metadata(second)
    assert first[rt.KEY_FEATURE_ENGINEERING] == second[rt.KEY_FEATURE_ENGINEERING]
    answers = []
    for name, folder in (("separate", separate), ("nested", nested)):
        embed_metadata(plain, folder, tmp / f"{name}.onnx", include_vocab=True)
        answers.append(call(rt.Runtime(tmp / f"{name}.onnx")))
    assert answers[0] == answers[1]
    assert len({json.dumps(a, sort_keys=True, default=str) for a in answers[0]}) > 1  # varied answers, not one repeated


@pytest.mark.parametrize("name", ["wav2vec2_ctc", "hubert_ctc"])
def test_ctc(name, tmp_path_factory, tmp_path):
    """Wav2Vec2 with an attention mask (layer norms) and HuBERT without one (group norm), Wav2Vec2Processor's layout."""
    from transformers import AutoFeatureExtractor, AutoTokenizer, Wav2Vec2Processor

    model = built(name, tmp_path_factory)
    extractor = AutoFeatureExtractor.from_pretrained(model.folder)
    assert extractor.return_attention_mask is (name == "wav2vec2_ctc")
    tokenizer = AutoTokenizer.from_pretrained(model.folder)
    separate = _separate(model.folder, tmp_path / "separate", extractor, tokenizer)
    nested = _nested(separate, tmp_path / "nested", Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer))
    assert_same(separate, nested, model.plain, tmp_path, lambda runtime: runtime(SIGNALS))


@pytest.mark.parametrize("name", ["ast_classifier", "wav2vec2_classifier"])
def test_audio_classifiers(name, tmp_path_factory, tmp_path):
    from transformers import AutoFeatureExtractor

    model = built(name, tmp_path_factory)
    extractor = AutoFeatureExtractor.from_pretrained(model.folder)
    separate = _separate(model.folder, tmp_path / "separate", extractor)
    nested = _nested(separate, tmp_path / "nested", feature_extractor=extractor)
    assert_same(separate, nested, model.plain, tmp_path, lambda runtime: runtime(SIGNALS, top_k=3))


IMAGES = [synthetic(48, 40, seed=1), synthetic(100, 60, seed=2), synthetic(33, 90, seed=3)]


def test_vit(tmp_path):
    from transformers import ViTImageProcessorPil

    model = tiny_vit(tmp_path / "hf", "classification", seed=3)
    plain = export_vision_onnx(model, tmp_path / "plain.onnx", ["pixel_values"], ["logits"], 32)
    processor = ViTImageProcessorPil.from_pretrained(tmp_path / "hf")
    separate = _separate(tmp_path / "hf", tmp_path / "separate", processor)
    nested = _nested(separate, tmp_path / "nested", image_processor=processor)
    assert_same(separate, nested, plain, tmp_path, lambda runtime: runtime(IMAGES, top_k=3))


def test_clip(tmp_path):
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPProcessor

    model = tiny_clip(tmp_path / "hf", seed=0)
    plain = export_vision_onnx(model, tmp_path / "plain.onnx", ["input_ids", "pixel_values", "attention_mask"],
                               ["logits_per_image"], 32)
    processor = CLIPImageProcessorPil.from_pretrained(tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    separate = _separate(tmp_path / "hf", tmp_path / "separate", processor, tokenizer)
    nested = _nested(separate, tmp_path / "nested", CLIPProcessor(image_processor=processor, tokenizer=tokenizer))
    assert_same(separate, nested, plain, tmp_path,
                lambda runtime: runtime(IMAGES, candidate_labels=["a cat", "a dog", "a car"]))


def test_whisper_feature_extractor(tmp_path):
    """WhisperProcessor's layout (its transcripts from one file are test_parity_whisper's): the same features."""
    from transformers import AutoTokenizer, WhisperConfig, WhisperFeatureExtractor, WhisperProcessor
    from whisper_models import built_tokenizer

    from authoring import discover

    folder = tmp_path / "hf"
    built_tokenizer(folder)
    WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, num_mel_bins=128,
                  architectures=["WhisperForConditionalGeneration"]).save_pretrained(folder)
    extractor = WhisperFeatureExtractor(feature_size=128)
    extractor.save_pretrained(folder)
    nested = tmp_path / "nested"
    nested.mkdir()
    shutil.copyfile(folder / "config.json", nested / "config.json")
    WhisperProcessor(feature_extractor=extractor, tokenizer=AutoTokenizer.from_pretrained(folder)).save_pretrained(nested)
    assert not (nested / "preprocessor_config.json").exists()
    first, second = discover(folder, level="full"), discover(nested, level="full")
    assert _processor_metadata(first) == _processor_metadata(second)
    assert second[rt.KEY_FEATURE_ENGINEERING]["config"]["components"] == ["tokenizer", "feature_extractor"]
    audio = signal(3.0)
    features = [rt.load_feature_extractor(m)([audio])["input_features"] for m in (first, second)]
    np.testing.assert_array_equal(features[0], features[1])
    assert features[0].shape == (1, 128, 3000) and features[0].std() > 0.1


def test_nested_part_wins_as_in_transformers(tmp_path_factory, tmp_path):
    """Both files, disagreeing: transformers 5's AutoFeatureExtractor reads the nested part; so does discovery."""
    from transformers import AutoFeatureExtractor

    from authoring import discover

    model = built("wav2vec2_ctc", tmp_path_factory)
    folder = tmp_path / "both"
    shutil.copytree(model.folder, folder)
    nested = AutoFeatureExtractor.from_pretrained(folder).to_dict() | {"do_normalize": False, "padding_value": 0.5}
    (folder / "processor_config.json").write_text(json.dumps({"feature_extractor": nested,
                                                              "processor_class": "Wav2Vec2Processor"}))
    reference = AutoFeatureExtractor.from_pretrained(folder)
    assert reference.do_normalize is False and reference.padding_value == 0.5
    embedded = discover(folder, level="full")[rt.KEY_FEATURE_EXTRACTOR_CONFIG]
    assert embedded == nested
    loaded = rt.load_feature_extractor({rt.KEY_FEATURE_EXTRACTOR_CONFIG: embedded})
    audio = [signal(0.7, seed=1), signal(1.1, seed=2)]
    expected = reference(audio, sampling_rate=16000, padding=True, return_tensors="np")["input_values"]
    np.testing.assert_allclose(loaded(audio)["input_values"], expected, atol=1e-6, rtol=0)


def test_image_and_audio_parts_of_one_processor(tmp_path):
    """A processor_config.json nesting an image processor and a feature extractor (as multimodal processors do)
    embeds both; a legacy processor_config.json without nested parts leaves preprocessor_config.json in charge."""
    from authoring.discovery import _preprocessor_metadata

    image = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32}}
    audio = {"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "sampling_rate": 16000}
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": image, "audio_processor": audio}))
    assert _preprocessor_metadata(tmp_path) == {rt.KEY_IMAGE_PROCESSOR_CONFIG: image, rt.KEY_FEATURE_EXTRACTOR_CONFIG: audio}
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Wav2Vec2Processor"}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(audio))
    assert _preprocessor_metadata(tmp_path) == {rt.KEY_FEATURE_EXTRACTOR_CONFIG: audio}
