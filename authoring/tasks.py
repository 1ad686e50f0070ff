"""Pipeline task detection from a model config: the design's five-step algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onnxmeta_runtime import TASK_ALIASES, TaskDetectionError

from ._architectures import ARCHITECTURE_TASKS

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
    ("owlvitforobjectdetection", "zero-shot-object-detection"),  # text-queried detectors, before the generic rule
    ("owlv2forobjectdetection", "zero-shot-object-detection"),
    ("forobjectdetection", "object-detection"),
    ("forsemanticsegmentation", "image-segmentation"),
    ("fordepthestimation", "depth-estimation"),
    # matting models, custom code (config.json's auto_map): transformers.js's background-removal
    ("briarmbg", "background-removal"),
    ("birefnet", "background-removal"),
)

# Step 4: families whose bare config (no architectures) has one obvious task.
MODEL_TYPE_TASK_MAP = {
    **dict.fromkeys(("gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "phi", "qwen2", "opt", "bloom"),
                    "text-generation"),
    **dict.fromkeys(("t5", "mt5", "bart", "mbart", "marian", "pegasus", "m2m_100"), "text2text-generation"),
    **dict.fromkeys(("whisper", "wav2vec2", "hubert"), "automatic-speech-recognition"),
    "vits": "text-to-audio",
    **dict.fromkeys(("vit", "deit", "convnext", "resnet", "swin", "beit"), "image-classification"),
    **dict.fromkeys(("clip", "siglip"), "zero-shot-image-classification"),
    **dict.fromkeys(("owlvit", "owlv2"), "zero-shot-object-detection"),
    "clap": "zero-shot-audio-classification",
    "vision-encoder-decoder": "image-to-text",
}

# Tasks transformers pipelines know (including those transformers 5 removed but users still run), and
# background-removal, transformers.js's.
PIPELINE_TASKS = frozenset({
    "audio-classification", "automatic-speech-recognition", "background-removal", "depth-estimation",
    "document-question-answering",
    "feature-extraction", "fill-mask", "image-classification", "image-feature-extraction", "image-segmentation",
    "image-text-to-text", "image-to-image", "image-to-text", "mask-generation", "object-detection", "question-answering",
    "sentiment-analysis", "summarization", "table-question-answering", "text-classification", "text-generation",
    "text-to-audio", "text2text-generation", "token-classification", "translation", "video-classification",
    "visual-question-answering", "zero-shot-audio-classification", "zero-shot-classification",
    "zero-shot-image-classification", "zero-shot-object-detection",
})

# Architectures whose pipeline no auto-model mapping names (step 1 reads these first): CLAP's zero-shot audio
# classification runs the whole ClapModel, which transformers lists only as a base model (feature-extraction).
# A VisionEncoderDecoderModel (captioning, OCR) is image-to-text: transformers 5 lists it for image-text-to-text, whose
# pipeline cannot run it; 4.57's image-to-text pipeline does (the runtime answers to both names).
ARCHITECTURE_OVERRIDES = {"ClapModel": "zero-shot-audio-classification", "VisionEncoderDecoderModel": "image-to-text"}


def detect_task(config: Mapping[str, Any]) -> str | None:
    """The pipeline task for a model config, or None when undetermined.

    1. architecture exact match; 2. architecture name patterns (without architectures: those of the classes
    auto_map names); 3. task_specific_params (which also make a
    text2text-generation model, T5 or BART, a translation or summarization one); 4. model_type; 5. labels.
    """
    architectures = config.get("architectures") or []
    params = config.get("task_specific_params")
    hint = next((h for h in ("translation", "summarization") if isinstance(params, dict)
                 and any(str(k).startswith(h) for k in params)), None)
    if architectures and isinstance(architectures[0], str):
        task = ARCHITECTURE_OVERRIDES.get(architectures[0]) or ARCHITECTURE_TASKS.get(architectures[0])
        if task == "feature-extraction" and ("num_channels" in config or "image_size" in config):
            return "image-feature-extraction"  # a vision backbone (ViTModel, Dinov2Model, CLIPVisionModel...)
        if task is None:
            lowered = architectures[0].lower()
            task = next((t for pattern, t in ARCHITECTURE_PATTERNS if pattern in lowered), None)
        if task:
            return hint if task == "text2text-generation" and hint else task
    else:  # custom code without architectures: the classes auto_map names ("briarmbg.BriaRMBG"), by pattern
        auto_map = config.get("auto_map")
        names = [v.rsplit(".", 1)[-1].lower() for v in auto_map.values() if isinstance(v, str)] \
            if isinstance(auto_map, dict) else []
        task = next((t for name in names for pattern, t in ARCHITECTURE_PATTERNS if pattern in name), None)
        if task:
            return task
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
