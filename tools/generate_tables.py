"""Generate authoring/_architectures.py and authoring/_tokenizer_classes.py from the installed transformers.

    python tools/generate_tables.py          # rewrite both files
    python tools/generate_tables.py --check  # exit 1 if they differ from what transformers gives

authoring reads these tables so that task detection and the tokenizer fast path import nothing heavy
(transformers' modeling_auto needs torch). tests/authoring/test_tables.py fails with this command when a new
transformers release changes what they should hold.

A development tool, not part of the authoring package: it reads transformers 5 (the [test] extra's pin;
[export]'s Optimum needs transformers 4.57, which lacks tokenization_utils_tokenizers) with torch, and rewrites
the package's source files in this checkout.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = ROOT / "authoring" / "_architectures.py"
TOKENIZER_CLASSES = ROOT / "authoring" / "_tokenizer_classes.py"
COMMAND = "python tools/generate_tables.py"

# transformers' auto-model mappings and the pipeline task each serves, in priority order: an architecture
# listed in several mappings takes the first. Audio, speech and vision mappings come before the text ones
# that also list some of their classes (Wav2Vec2ForSequenceClassification is an audio classifier,
# Gemma3ForConditionalGeneration reads images); sequence-to-sequence before masked LM (BART is both, its
# pipeline is text2text-generation); the bare models last: vision backbones extract image features,
# every other base model text features.
MAPPING_TASKS = (
    ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", "audio-classification"),
    ("MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "automatic-speech-recognition"),
    ("MODEL_FOR_CTC_MAPPING_NAMES", "automatic-speech-recognition"),
    ("MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES", "text-to-audio"),
    ("MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES", "text-to-audio"),
    ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "image-classification"),
    ("MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES", "zero-shot-image-classification"),
    ("MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES", "object-detection"),
    ("MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES", "zero-shot-object-detection"),
    ("MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES", "image-segmentation"),
    ("MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES", "image-segmentation"),
    ("MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES", "image-segmentation"),
    ("MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES", "depth-estimation"),
    ("MODEL_FOR_MASK_GENERATION_MAPPING_NAMES", "mask-generation"),
    ("MODEL_FOR_IMAGE_TO_IMAGE_MAPPING_NAMES", "image-to-image"),
    ("MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES", "video-classification"),
    ("MODEL_FOR_DOCUMENT_QUESTION_ANSWERING_MAPPING_NAMES", "document-question-answering"),
    ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "image-text-to-text"),
    ("MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES", "visual-question-answering"),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "text-classification"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "token-classification"),
    ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "question-answering"),
    ("MODEL_FOR_TABLE_QUESTION_ANSWERING_MAPPING_NAMES", "table-question-answering"),
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "text2text-generation"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "fill-mask"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "text-generation"),
    ("MODEL_FOR_IMAGE_MAPPING_NAMES", "image-feature-extraction"),
    ("MODEL_MAPPING_NAMES", "feature-extraction"),
)

# What the tokenizer fast path needs to know of a class, read from an instance built with its defaults.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Constructor options that transformers applies to the tokenizers backend on load; the fast path checks
# that tokenizer.json agrees with them.
BACKEND_OPTIONS = ("add_prefix_space", "trim_offsets", "do_lower_case", "strip_accents", "tokenize_chinese_chars")


def mapping_tasks() -> dict[str, list[str]]:
    """Every architecture of the mappings above -> the tasks of the mappings listing it, in priority order."""
    from transformers.models.auto import modeling_auto

    tasks: dict[str, list[str]] = {}
    for name, task in MAPPING_TASKS:
        for classes in getattr(modeling_auto, name).values():
            for cls in (classes,) if isinstance(classes, str) else classes:
                tasks.setdefault(cls, [])
                if task not in tasks[cls]:
                    tasks[cls].append(task)
    return tasks


def architecture_tasks() -> dict[str, str]:
    """Architecture class name -> the pipeline task of its first mapping."""
    return {cls: tasks[0] for cls, tasks in sorted(mapping_tasks().items())}


def _class_defaults(cls: Any) -> dict[str, Any] | None:
    """What an instance of a tokenizers-backed class built with its defaults says; None when it needs files."""
    import inspect

    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if cls is TokenizersBackend:  # loaded from tokenizer.json as it is: the base defaults, no special tokens
        return {
            "class": "TokenizersBackend",
            "model_input_names": list(PreTrainedTokenizerBase.model_input_names),
            "padding_side": PreTrainedTokenizerBase.padding_side,
            "truncation_side": PreTrainedTokenizerBase.truncation_side,
            "model_max_length": None,
            "clean_up_tokenization_spaces": False,
            "special_tokens": dict.fromkeys(SPECIAL_TOKENS),
            "backend_options": {},
        }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = cls()
    except Exception:  # needs files or packages to build: the transformers path handles it
        return None
    parameters = inspect.signature(cls.__init__).parameters
    special = tokenizer._special_tokens_map
    return {
        "class": cls.__name__.removesuffix("Fast") if tokenizer.can_save_slow_tokenizer else cls.__name__,
        "model_input_names": list(tokenizer.model_input_names),
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "model_max_length": tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else None,
        "clean_up_tokenization_spaces": tokenizer.clean_up_tokenization_spaces,
        "special_tokens": {k: None if special[k] is None else str(special[k]) for k in SPECIAL_TOKENS},
        "backend_options": {k: parameters[k].default for k in BACKEND_OPTIONS if k in parameters},
    }


def tokenizer_tables() -> dict[str, Any]:
    """The tokenizer tables: classes backed by the tokenizers library (by the name a tokenizer_config gives,
    without "Fast") -> their defaults; model_type -> class; what AutoTokenizer resolves otherwise."""
    import transformers
    from transformers.models.auto import tokenization_auto
    from transformers.tokenization_utils_tokenizers import TokenizersBackend
    from transformers.utils import logging

    logging.set_verbosity_error()
    by_model_type = {k: v for k, v in sorted(tokenization_auto.TOKENIZER_MAPPING_NAMES.items()) if v}
    names = set(by_model_type.values()) | {n for n in dir(transformers) if n.endswith(("Tokenizer", "TokenizerFast"))}
    classes: dict[str, dict[str, Any]] = {}
    built: dict[type, dict[str, Any] | None] = {}
    for name in sorted({n.removesuffix("Fast") for n in names}):
        # as AutoTokenizer resolves a tokenizer_config's tokenizer_class
        cls = tokenization_auto.tokenizer_class_from_name(name) or tokenization_auto.tokenizer_class_from_name(name + "Fast")
        if cls is not None and cls.__name__ == "PythonBackend":
            cls = TokenizersBackend
        if cls is None or not isinstance(cls, type) or not issubclass(cls, TokenizersBackend):
            continue  # a Python or SentencePiece tokenizer, or not a tokenizer: the transformers path handles it
        if cls not in built:
            built[cls] = _class_defaults(cls)
        if built[cls] is not None:
            classes[name] = built[cls]
    return {
        "classes": classes,
        "by_model_type": by_model_type,
        "backend_ids": tuple(tokenization_auto.MODEL_IDS_TO_TOKENIZERS_BACKEND),
        "incorrect_hub_class": tuple(sorted(tokenization_auto.MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)),
    }


def _dict_lines(name: str, annotation: str, value: dict[str, Any]) -> list[str]:
    lines = [f"{name}: {annotation} = {{"]
    lines += [f"    {k!r}: {v!r}," for k, v in value.items()]
    return lines + ["}"]


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def _header(what: str) -> list[str]:
    return [
        f'"""{what}',
        "",
        f"Generated from transformers {_transformers_version()} by `{COMMAND}`; do not edit by hand.",
        "tests/authoring/test_tables.py checks it against the installed transformers.",
        '"""',
        "",
    ]


def render_architectures() -> str:
    lines = _header("Architecture class name -> pipeline task, from transformers' auto-model mappings (no torch needed).")
    lines += _dict_lines("ARCHITECTURE_TASKS", "dict[str, str]", architecture_tasks())
    return "\n".join(lines) + "\n"


def render_tokenizer_classes() -> str:
    tables = tokenizer_tables()
    lines = _header("What transformers' tokenizer classes default to, for building metadata from tokenizer.json alone.")
    lines += ["from typing import Any", ""]
    lines += [f"TRANSFORMERS_VERSION = {_transformers_version()!r}  # the release these tables were read from", ""]
    lines += ["# tokenizer_class (without \"Fast\") -> the class AutoTokenizer loads (as saved), its model_input_names,",
              "# padding and truncation sides, model_max_length (None: no limit), clean_up_tokenization_spaces, special",
              "# tokens, and the constructor options it applies to the tokenizers backend, with their defaults"]
    lines += _dict_lines("TOKENIZER_CLASSES", "dict[str, dict[str, Any]]", tables["classes"])
    lines += ["", "# model_type -> the tokenizer class AutoTokenizer picks when tokenizer_config.json names none"]
    lines += _dict_lines("MODEL_TYPE_TOKENIZERS", "dict[str, str]", tables["by_model_type"])
    lines += ["", "# hub ids (fnmatch patterns, lower case) that AutoTokenizer loads with TokenizersBackend whatever they say",
              f"TOKENIZERS_BACKEND_MODEL_IDS: tuple[str, ...] = {tables['backend_ids']!r}",
              "# model types whose hub tokenizer_class AutoTokenizer overrides",
              f"INCORRECT_HUB_CLASS_MODEL_TYPES: tuple[str, ...] = {tables['incorrect_hub_class']!r}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for path, text in ((ARCHITECTURES, render_architectures()), (TOKENIZER_CLASSES, render_tokenizer_classes())):
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"{', '.join(stale)} differ from the installed transformers; run {COMMAND}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
