"""Pipeline task detection from a model config: the design's five-step algorithm."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from onnxmeta_runtime import TASK_ALIASES, TaskDetectionError

# transformers' auto-model mappings, in priority order: an architecture listed in several takes the
# first task. Built from transformers itself, so every architecture it ships is covered.
_MAPPING_TASKS = (
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "text-classification"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "token-classification"),
    ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "question-answering"),
    ("MODEL_FOR_TABLE_QUESTION_ANSWERING_MAPPING_NAMES", "table-question-answering"),
    # before fill-mask: transformers lists BART-style *ForConditionalGeneration as mask fillers too, and an
    # encoder-decoder is a generator first
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "text2text-generation"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "fill-mask"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "text-generation"),
    ("MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "automatic-speech-recognition"),
    ("MODEL_FOR_CTC_MAPPING_NAMES", "automatic-speech-recognition"),
    ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", "audio-classification"),
    ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "image-classification"),
    ("MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES", "zero-shot-image-classification"),
    ("MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES", "object-detection"),
    ("MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES", "zero-shot-object-detection"),
    ("MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES", "image-segmentation"),
    ("MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES", "image-segmentation"),
    ("MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES", "image-segmentation"),
    ("MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES", "depth-estimation"),
    ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "image-text-to-text"),
    ("MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES", "video-classification"),
    ("MODEL_FOR_DOCUMENT_QUESTION_ANSWERING_MAPPING_NAMES", "document-question-answering"),
    ("MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES", "visual-question-answering"),
    ("MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES", "text-to-audio"),
    ("MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES", "text-to-audio"),
    ("MODEL_FOR_MASK_GENERATION_MAPPING_NAMES", "mask-generation"),
    ("MODEL_FOR_IMAGE_TO_IMAGE_MAPPING_NAMES", "image-to-image"),
    ("MODEL_MAPPING_NAMES", "feature-extraction"),
)

# Step 2: substrings of a lower-cased architecture name, for classes transformers does not list
# (custom heads, renamed forks).
ARCHITECTURE_PATTERNS = (
    ("forsequenceclassification", "text-classification"),
    ("fortokenclassification", "token-classification"),
    ("forquestionanswering", "question-answering"),
    ("formaskedlm", "fill-mask"),
    ("forconditionalgeneration", "text2text-generation"),
    ("forcausallm", "text-generation"),
    ("lmheadmodel", "text-generation"),
    ("forspeechseq2seq", "automatic-speech-recognition"),
    ("forctc", "automatic-speech-recognition"),
    ("foraudioclassification", "audio-classification"),
    ("forimageclassification", "image-classification"),
    ("forobjectdetection", "object-detection"),
    ("forsemanticsegmentation", "image-segmentation"),
    ("fordepthestimation", "depth-estimation"),
)

# Step 4: families whose bare config (no architectures) has one obvious task.
MODEL_TYPE_TASK_MAP = {
    **dict.fromkeys(("gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "phi", "qwen2", "opt", "bloom"),
                    "text-generation"),
    **dict.fromkeys(("t5", "mt5", "bart", "mbart", "marian", "pegasus", "m2m_100"), "text2text-generation"),
    **dict.fromkeys(("whisper", "wav2vec2", "hubert"), "automatic-speech-recognition"),
    **dict.fromkeys(("vit", "deit", "convnext", "resnet", "swin", "beit"), "image-classification"),
    **dict.fromkeys(("clip", "siglip"), "zero-shot-image-classification"),
}

# Tasks transformers pipelines know (including those transformers 5 removed but users still run).
PIPELINE_TASKS = frozenset(
    {task for _, task in _MAPPING_TASKS}
    | {"sentiment-analysis", "summarization", "translation", "zero-shot-classification", "image-feature-extraction"}
)


@functools.lru_cache(maxsize=1)
def architecture_task_map() -> dict[str, str]:
    """Architecture class name -> pipeline task, from transformers' auto mappings."""
    from transformers.models.auto import modeling_auto

    table: dict[str, str] = {}
    for mapping_name, task in _MAPPING_TASKS:
        for classes in getattr(modeling_auto, mapping_name, {}).values():
            for cls in (classes,) if isinstance(classes, str) else classes:
                table.setdefault(cls, task)
    return table


def detect_task(config: Mapping[str, Any]) -> str | None:
    """The pipeline task for a model config, or None when undetermined.

    1. architecture exact match; 2. architecture name patterns; 3. task_specific_params (which also make a
    text2text-generation model, T5 or BART, a translation or summarization one); 4. model_type; 5. labels.
    """
    architectures = config.get("architectures") or []
    params = config.get("task_specific_params")
    hint = next((h for h in ("translation", "summarization") if isinstance(params, dict)
                 and any(str(k).startswith(h) for k in params)), None)
    if architectures and isinstance(architectures[0], str):
        task = architecture_task_map().get(architectures[0])
        if task == "feature-extraction" and ("num_channels" in config or "image_size" in config):
            return "image-feature-extraction"  # a vision backbone (ViTModel, Dinov2Model, CLIPVisionModel...)
        if task is None:
            lowered = architectures[0].lower()
            task = next((t for pattern, t in ARCHITECTURE_PATTERNS if pattern in lowered), None)
        if task:
            return hint if task == "text2text-generation" and hint else task
    if hint:
        return hint
    model_type = str(config.get("model_type", "")).lower()
    if model_type in MODEL_TYPE_TASK_MAP:
        return MODEL_TYPE_TASK_MAP[model_type]
    if config.get("id2label") and ("num_labels" in config or "label2id" in config):
        vision = "num_channels" in config or "image_size" in config
        return "image-classification" if vision else "text-classification"
    return None


def resolve_task(config: Mapping[str, Any], override: str | None) -> str | None:
    """The task to embed: the override when given (checked), else the detected one."""
    if override is None:
        return detect_task(config)
    override = TASK_ALIASES.get(override, override)
    parts = override.split("_")
    if len(parts) == 4 and parts[0] == "translation" and parts[2] == "to":  # translation_XX_to_YY, as transformers
        return override
    if override not in PIPELINE_TASKS:
        raise TaskDetectionError(
            f"unknown task {override!r}; known tasks: {', '.join(sorted(PIPELINE_TASKS))}"
        )
    return override
