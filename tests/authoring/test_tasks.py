"""Task detection: the design's five steps, in priority order."""

from __future__ import annotations

import json

import pytest

import onnxmeta_runtime as rt
from authoring._architectures import ARCHITECTURE_TASKS
from authoring.tasks import detect_task, resolve_task
from helpers import SHARED, real_files


@pytest.mark.parametrize("architecture, task", [
    ("BertForSequenceClassification", "text-classification"),
    ("DistilBertForSequenceClassification", "text-classification"),
    ("RobertaForTokenClassification", "token-classification"),
    ("BertForQuestionAnswering", "question-answering"),
    ("BertForMaskedLM", "fill-mask"),
    ("T5ForConditionalGeneration", "text2text-generation"),
    ("GPT2LMHeadModel", "text-generation"),
    ("WhisperForConditionalGeneration", "automatic-speech-recognition"),
    ("Wav2Vec2ForCTC", "automatic-speech-recognition"),
    ("ViTForImageClassification", "image-classification"),
    ("CLIPModel", "zero-shot-image-classification"),
    ("DetrForObjectDetection", "object-detection"),
    ("BertModel", "feature-extraction"),
    # architectures several mappings list: the pipeline transformers runs them with
    ("LlamaForCausalLM", "text-generation"),
    ("BartForConditionalGeneration", "text2text-generation"),  # also a masked LM
    ("MarianMTModel", "text2text-generation"),
    ("Wav2Vec2ForSequenceClassification", "audio-classification"),
    ("HubertForSequenceClassification", "audio-classification"),
    ("ViTModel", "image-feature-extraction"),  # vision backbones
    ("Dinov2Model", "image-feature-extraction"),
    ("Gemma3ForConditionalGeneration", "image-text-to-text"),  # also a causal LM
    ("LayoutLMv3ForQuestionAnswering", "document-question-answering"),
    # transformers 5 lists it for image-text-to-text, whose pipeline cannot run it: 4.57's image-to-text does
    ("VisionEncoderDecoderModel", "image-to-text"),
])
def test_step1_exact_architecture(architecture, task):
    assert architecture in ARCHITECTURE_TASKS
    assert detect_task({"architectures": [architecture]}) == task


def test_first_architecture_wins():
    assert detect_task({"architectures": ["BertForMaskedLM", "BertForSequenceClassification"]}) == "fill-mask"


@pytest.mark.parametrize("architecture, task", [
    ("MyCustomForSequenceClassification", "text-classification"),
    ("AcmeForTokenClassification", "token-classification"),
    ("FooLMHeadModel", "text-generation"),
])
def test_step2_patterns(architecture, task):
    assert architecture not in ARCHITECTURE_TASKS
    assert detect_task({"architectures": [architecture]}) == task


def test_step3_task_specific_params():
    assert detect_task({"task_specific_params": {"translation_en_to_de": {}}}) == "translation"
    assert detect_task({"task_specific_params": {"summarization": {"max_length": 200}}}) == "summarization"


T5_PARAMS = {"summarization": {"prefix": "summarize: "}, "translation_en_to_de": {"prefix": "translate English to German: "}}


@pytest.mark.parametrize("config, task", [
    # a generator's task_specific_params make it a translator or a summarizer, translation first (the seed's order)
    ({"architectures": ["T5ForConditionalGeneration"], "task_specific_params": T5_PARAMS}, "translation"),
    ({"architectures": ["BartForConditionalGeneration"], "task_specific_params": {"summarization": {"max_length": 142}}},
     "summarization"),
    ({"architectures": ["MyCustomForConditionalGeneration"], "task_specific_params": T5_PARAMS}, "translation"),
    ({"model_type": "t5", "task_specific_params": {"summarization": {}}}, "summarization"),
    # without them it stays a text-to-text generator
    ({"architectures": ["BartForConditionalGeneration"]}, "text2text-generation"),
    ({"architectures": ["T5ForConditionalGeneration"], "task_specific_params": {}}, "text2text-generation"),
    ({"architectures": ["T5ForConditionalGeneration"], "task_specific_params": {"text-generation": {"do_sample": True}}},
     "text2text-generation"),
    # other architectures keep their own task
    ({"architectures": ["BertForSequenceClassification"], "task_specific_params": T5_PARAMS}, "text-classification"),
    ({"architectures": ["GPT2LMHeadModel"], "task_specific_params": {"text-generation": {"max_length": 50}}},
     "text-generation"),
])
def test_step3_task_specific_params_of_an_encoder_decoder(config, task):
    assert detect_task(config) == task


def test_override_of_an_encoder_decoder():
    t5 = {"architectures": ["T5ForConditionalGeneration"], "task_specific_params": T5_PARAMS}
    assert resolve_task(t5, None) == "translation"
    assert resolve_task(t5, "translation_en_to_de") == "translation_en_to_de"
    assert resolve_task(t5, "translation_en_to_fr") == "translation_en_to_fr"  # the runtime says whether it has a prefix
    assert resolve_task(t5, "summarization") == "summarization"
    assert resolve_task(t5, "text2text-generation") == "text2text-generation"
    with pytest.raises(rt.TaskDetectionError, match="unknown task 'translation_en_de'"):
        resolve_task(t5, "translation_en_de")


def test_step4_model_type():
    assert detect_task({"model_type": "gpt2"}) == "text-generation"
    assert detect_task({"model_type": "whisper"}) == "automatic-speech-recognition"
    assert detect_task({"model_type": "vision-encoder-decoder"}) == "image-to-text"


def test_step5_labels():
    labels = {"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}}
    assert detect_task({"model_type": "mystery", **labels}) == "text-classification"
    assert detect_task({"model_type": "mystery", "image_size": 224, **labels}) == "image-classification"


def test_undetermined():
    assert detect_task({}) is None
    assert detect_task({"model_type": "mystery", "architectures": ["Mystery"]}) is None


def test_override():
    assert resolve_task({}, "sentiment-analysis") == "text-classification"
    assert resolve_task({}, "ner") == "token-classification"
    assert resolve_task({}, "image-text-to-text") == "image-to-text"  # the runtime answers both names alike
    assert resolve_task({"architectures": ["BertForSequenceClassification"]}, "zero-shot-classification") == "zero-shot-classification"
    with pytest.raises(rt.TaskDetectionError, match="unknown task 'nope'"):
        resolve_task({}, "nope")


@pytest.mark.parametrize("name, task", real_files([
    ("bert-base-uncased", "fill-mask"),
    ("distilbert-base-uncased-finetuned-sst-2-english", "text-classification"),
    ("dslim__bert-base-NER", "token-classification"),
    ("distilbert-base-uncased-distilled-squad", "question-answering"),
    ("deepset__roberta-base-squad2", "question-answering"),
    ("gpt2", "text-generation"),
    ("t5-small", "translation"),  # its task_specific_params name translation_en_to_de (and summarization)
    ("openai__whisper-large-v3", "automatic-speech-recognition"),
    ("google__vit-base-patch16-224", "image-classification"),
    ("sentence-transformers__all-MiniLM-L6-v2", "feature-extraction"),
]))
def test_real_configs(name, task):
    path = SHARED / name / "config.json"
    if not path.exists():
        pytest.skip(f"{path} is absent (real Hugging Face files live in ../shared/data)")
    assert detect_task(json.loads(path.read_text())) == task
