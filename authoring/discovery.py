"""Discover Hugging Face metadata from a local folder, a hub id, or in-memory objects."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataExtractionError

from ._tokenizer_classes import TRANSFORMERS_VERSION as TABLES_TRANSFORMERS_VERSION
from .tasks import detect_task, resolve_task
from .tokenizer_files import files_metadata

logger = logging.getLogger("onnxmeta")


@dataclass(frozen=True)
class EmbeddingLevel:
    """How much of a model's metadata to embed."""

    name: str
    max_size_kb: int
    include_model_config: bool
    include_processor_config: bool
    include_vocabulary: bool
    include_task_params: bool
    compress_threshold_kb: int


EMBEDDING_LEVELS = {
    "minimal": EmbeddingLevel("minimal", 2, False, False, False, False, 1),
    "essential": EmbeddingLevel("essential", 10, True, True, False, True, 5),
    "full": EmbeddingLevel("full", 500, True, True, True, True, 10),
}

# The config fields the minimal level keeps: enough to name the task and its labels.
MINIMAL_CONFIG_FIELDS = (
    "architectures", "model_type", "id2label", "label2id", "num_labels", "problem_type",
    "vocab_size", "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id",
)

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
    "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)
# What a hub download fetches: configs and tokenizer files, never weights.
HUB_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "README.md")  # README: a model card's matryoshka_dims
# Written by transformers about how a tokenizer was loaded, not about the tokenizer.
_LOADING_KEYS = ("is_local", "local_files_only", "name_or_path")


def embedding_level(name: str) -> EmbeddingLevel:
    """The EmbeddingLevel called name."""
    try:
        return EMBEDDING_LEVELS[name]
    except KeyError:
        raise MetadataExtractionError(
            f"unknown embedding level {name!r}; choose one of {', '.join(EMBEDDING_LEVELS)}"
        ) from None


def export_timestamp() -> str:
    """UTC time in ISO 8601; SOURCE_DATE_EPOCH makes it reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
        if epoch and epoch.isdigit()
        else datetime.datetime.now(datetime.timezone.utc)
    )
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _read_json(path: Path, kind: type = dict) -> Any:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MetadataExtractionError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, kind):
        raise MetadataExtractionError(f"{path} is not a JSON {'object' if kind is dict else 'array'}")
    return value


def resolve_model_folder(model_name_or_path: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """A local folder holding the model's config and processor files (hub ids go through the cache)."""
    path = Path(model_name_or_path)
    if path.is_dir():
        if revision is not None:
            raise MetadataExtractionError(f"{path} is a local folder: --revision applies only to hub ids")
        return path
    if path.exists():
        raise MetadataExtractionError(
            f"{path} is a file; pass the model's folder (with config.json) or a hub id such as bert-base-uncased"
        )
    return hub_snapshot(os.fspath(model_name_or_path), revision, HUB_PATTERNS)


def _is_hub_id(name: str) -> bool:
    """Whether name can be a hub id (name or owner/name), rather than a path to a folder that does not exist."""
    return not (name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", ""))


def hub_snapshot(repo_id: str, revision: str | None, patterns: Sequence[str]) -> Path:
    """The files of a hub model that match patterns, through the Hugging Face cache (huggingface_hub's token and
    cache settings: HF_TOKEN or a cached login, HF_HUB_CACHE, HF_HUB_OFFLINE); the folder is the cached snapshot,
    named by its commit."""
    if not _is_hub_id(repo_id):
        raise MetadataExtractionError(f"no such folder: {repo_id}")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns)))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many types: offline, not found, gated, network
        raise MetadataExtractionError(_hub_error(repo_id, revision, exc, constants)) from None


def _hub_error(repo_id: str, revision: str | None, exc: Exception, constants: Any) -> str:
    """What went wrong getting a hub model, and what to do: the download command, the cache it must reach."""
    at = f" at revision {revision}" if revision else ""
    download = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    kind = type(exc).__name__
    reason = str(exc).splitlines()[0][:200] if str(exc) else kind
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        return (f"cannot get {repo_id!r}{at} from the Hugging Face hub: {why} and it is not in the cache "
                f"{constants.HF_HUB_CACHE}; download it first where the hub can be reached: {download} (into that "
                "cache), or pass a local model folder")
    if kind == "GatedRepoError":
        return (f"{repo_id!r} is gated on the Hugging Face hub: accept its conditions on its page, then log in "
                "(hf auth login) or set HF_TOKEN")
    if kind == "RepositoryNotFoundError":
        return (f"no model {repo_id!r} on the Hugging Face hub, or it is private: check the id, or log in (hf auth "
                "login) or set HF_TOKEN; a local folder must exist")
    if kind == "RevisionNotFoundError":
        return f"{repo_id!r} has no revision {revision!r} on the Hugging Face hub (a branch, tag or commit)"
    return (f"cannot get {repo_id!r}{at} from the Hugging Face hub ({kind}: {reason}); if you are offline, download "
            f"it first ({download}) or pass a local model folder")


def _transformers_version() -> str:
    """The transformers release whose rules resolve the tokenizer config: the installed one, else the one the
    tokenizer tables were generated from (without transformers, only tokenizer.json folders are read)."""
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return TABLES_TRANSFORMERS_VERSION


def _add_chat_template(config: dict[str, Any], folder: Path) -> None:
    """Put the chat template where the runtime reads it, config["chat_template"]: transformers 5 saves it
    beside the tokenizer config as chat_template.jinja, older versions inside it."""
    template = folder / "chat_template.jinja"
    if "chat_template" not in config and template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")


def _tokenizer_metadata(folder: Path, include_vocab: bool) -> dict[str, Any]:
    """hf_tokenizer_config, and with include_vocab the tokenizer.json text, as transformers loads and saves them."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        # not MetadataExtractionError: that falls back to the minimal level, and this is fixed by installing
        raise rt.MetadataError(
            f"the tokenizer in {folder} can only be read by transformers (no tokenizer.json, or settings the files alone "
            "do not resolve); pip install 'onnxmeta[transformers]'"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(folder), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError, OSError, KeyError... for unknown classes
        raise MetadataExtractionError(f"the tokenizer in {folder} cannot be loaded: {exc}") from None
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        config = _read_json(Path(tmp, "tokenizer_config.json")) or {}
        _add_chat_template(config, Path(tmp))
        tokenizer_json = Path(tmp, "tokenizer.json")
        text = tokenizer_json.read_text(encoding="utf-8") if tokenizer_json.is_file() else None
    for key in (*_LOADING_KEYS, "added_tokens_decoder"):  # transformers 4 saves the added tokens, also in tokenizer.json
        config.pop(key, None)
    # what transformers uses but saves only when the folder said it: the class's defaults, written out so that
    # a runtime needs no table of classes (no token_type_ids for RoBERTa, left padding for Llama...)
    config.setdefault("model_input_names", list(tokenizer.model_input_names))
    config.setdefault("padding_side", tokenizer.padding_side)
    config.setdefault("truncation_side", tokenizer.truncation_side)
    config.setdefault("clean_up_tokenization_spaces", tokenizer.clean_up_tokenization_spaces)
    out: dict[str, Any] = {rt.KEY_TOKENIZER_CONFIG: config}
    if include_vocab:
        if text is None:
            raise MetadataExtractionError(
                f"{type(tokenizer).__name__} has no tokenizer.json (fast tokenizer), so its vocabulary cannot be embedded"
            )
        out[rt.KEY_TOKENIZER_JSON] = rt.canonical_json(json.loads(text))
        out[rt.KEY_TOKENIZERS_VERSION] = importlib.metadata.version("tokenizers")
    return out


CTC_TOKENIZER_CLASS = "Wav2Vec2CTCTokenizer"
VITS_TOKENIZER_CLASS = "VitsTokenizer"
# The defaults of the tokenizers made of vocab.json and settings alone, written out for tokenizer configs that leave
# them out (older hub folders).
_VOCAB_TOKENIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    CTC_TOKENIZER_CLASS: {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                          "word_delimiter_token": "|", "replace_word_delimiter_char": " ", "do_lower_case": False},
    VITS_TOKENIZER_CLASS: {"pad_token": "<pad>", "unk_token": "<unk>", "language": None, "add_blank": True,
                           "normalize": True, "phonemize": True, "is_uroman": False},
}


def _vocab_tokenizer_class(folder: Path) -> str | None:
    """The class of a tokenizer of vocab.json and settings, no tokenizer.json: Wav2Vec2CTCTokenizer (the class says
    so, or the model is *ForCTC) or VitsTokenizer (the class says so, or the model is a VITS); None for another."""
    if (folder / "tokenizer.json").is_file() or (folder / "merges.txt").is_file() or not (folder / "vocab.json").is_file():
        return None
    tokenizer_class = (_read_json(folder / "tokenizer_config.json") or {}).get("tokenizer_class")
    if tokenizer_class is not None:
        return str(tokenizer_class) if tokenizer_class in _VOCAB_TOKENIZER_DEFAULTS else None
    config = _read_json(folder / "config.json") or {}
    if config.get("model_type") == "vits":
        return VITS_TOKENIZER_CLASS
    return CTC_TOKENIZER_CLASS if any(str(a).endswith("ForCTC") for a in config.get("architectures") or []) else None


def _ctc_tokenizer_metadata(folder: Path, include_vocab: bool, tokenizer_class: str = CTC_TOKENIZER_CLASS) -> dict[str, Any]:
    """hf_tokenizer_config of a tokenizer of vocab.json and settings (Wav2Vec2CTCTokenizer, VitsTokenizer) read from its
    JSON files as transformers reads them (no transformers needed), its defaults written out; with include_vocab,
    vocab.json under "vocab"."""
    config = _read_json(folder / "tokenizer_config.json") or {}
    if "added_tokens_decoder" not in config:  # older folders: special_tokens_map.json overrides, as transformers loads it
        config.update(_read_json(folder / "special_tokens_map.json") or {})
        added = _read_json(folder / "added_tokens.json") or {}
        if added:
            config["added_tokens_decoder"] = {str(i): {"content": token} for token, i in added.items()}
    config = {**_VOCAB_TOKENIZER_DEFAULTS[tokenizer_class], **config, "tokenizer_class": tokenizer_class}
    for key in _LOADING_KEYS:
        config.pop(key, None)
    if include_vocab:
        config["vocab"] = _read_json(folder / "vocab.json")
    return {rt.KEY_TOKENIZER_CONFIG: config}


# Fields only image processors have: an old config saying "ViTFeatureExtractor", or no type, is an image processor.
_IMAGE_PROCESSOR_KEYS = ("image_mean", "image_std", "do_resize", "size", "crop_size", "do_center_crop", "resample",
                         "do_rescale", "do_normalize")


def _tokenizer_from_files(folder: Path, model_config: Mapping[str, Any], include_vocab: bool) -> dict[str, Any] | None:
    """The tokenizer metadata from tokenizer.json and its configs alone (see tokenizer_files); None when
    transformers has to load the tokenizer to know it."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
        tokenizer_config = _read_json(folder / "tokenizer_config.json") or {}
        special_tokens_map = _read_json(folder / "special_tokens_map.json") or {}
    except (OSError, ValueError, MetadataExtractionError):
        return None  # transformers reports what is wrong with the files
    if not isinstance(tokenizer_json, dict):
        return None
    metadata = files_metadata(tokenizer_json, tokenizer_config, special_tokens_map, model_config,
                              include_vocab=include_vocab)
    if metadata is not None:
        _add_chat_template(metadata[rt.KEY_TOKENIZER_CONFIG], folder)
    return metadata


def _preprocessor_kind(config: Mapping[str, Any]) -> str:
    """The metadata key of a preprocessor_config.json: an image processor's or a feature extractor's."""
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    audio = "sampling_rate" in config or "feature_size" in config
    if "ImageProcessor" in kind or (not audio and any(k in config for k in _IMAGE_PROCESSOR_KEYS)):
        return rt.KEY_IMAGE_PROCESSOR_CONFIG
    return rt.KEY_FEATURE_EXTRACTOR_CONFIG


# The parts transformers 5 nests in processor_config.json, by the metadata key they are embedded under, in the
# order its loaders look for them (FeatureExtractionMixin reads "feature_extractor", then "audio_processor").
_NESTED_PARTS = ((rt.KEY_IMAGE_PROCESSOR_CONFIG, ("image_processor",)),
                 (rt.KEY_FEATURE_EXTRACTOR_CONFIG, ("feature_extractor", "audio_processor")))


def _preprocessor_metadata(folder: Path) -> dict[str, Any]:
    """The image processor and feature extractor configs of a folder, from either layout: transformers 5 saves a
    processor of several parts (WhisperProcessor, Wav2Vec2Processor, CLIPProcessor...) as ONE processor_config.json
    with each part nested, older versions (and lone extractors) as preprocessor_config.json. Where both exist, a
    nested part wins, as in transformers 5's loaders (ImageProcessingMixin, FeatureExtractionMixin)."""
    out: dict[str, Any] = {}
    nested = _read_json(folder / "processor_config.json") or {}
    for key, names in _NESTED_PARTS:
        part = next((nested[name] for name in names if name in nested), None)
        if isinstance(part, dict):
            out[key] = part
    separate = _read_json(folder / "preprocessor_config.json")
    if separate is not None:
        out.setdefault(_preprocessor_kind(separate), separate)
    return out


def _sentence_transformers_metadata(folder: Path) -> dict[str, Any]:
    """Pooling, normalization, max length and prompts of a sentence-transformers folder (modules.json)."""
    modules = _read_json(folder / "modules.json", list)
    if modules is None:
        return {}
    modules = [m for m in modules if isinstance(m, dict)]
    types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [t for t in types if t not in rt.SENTENCE_TRANSFORMERS_MODULES]
    if unsupported:
        logger.warning("sentence-transformers modules %s are not run by the runtime; encode() will refuse", unsupported)
    pooling_dir = next((m.get("path", "") for m, t in zip(modules, types) if t == "Pooling"), None)
    pooling = _read_json(folder / pooling_dir / "config.json") if pooling_dir is not None else None
    bert_config = _read_json(folder / "sentence_bert_config.json") or {}
    st_config = _read_json(folder / "config_sentence_transformers.json") or {}
    config = {
        "modules": modules,
        "pooling": pooling,
        "normalize": "Normalize" in types,
        "max_seq_length": bert_config.get("max_seq_length"),
        "do_lower_case": bert_config.get("do_lower_case", False),
        "prompts": st_config.get("prompts") or {},
        "default_prompt_name": st_config.get("default_prompt_name"),
        "similarity_fn_name": st_config.get("similarity_fn_name"),
        "matryoshka_dimensions": _matryoshka_dimensions(folder),
    }
    return {rt.KEY_SENTENCE_TRANSFORMERS: {k: v for k, v in config.items() if v is not None}}


def _matryoshka_dimensions(folder: Path) -> list[int] | None:
    """The dimensions a Matryoshka-trained model's embeddings may be cut to, as sentence-transformers' model card
    records MatryoshkaLoss's parameters ("matryoshka_dims": [768, 512, ...]); None for other models."""
    try:
        card = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = re.search(r'"matryoshka_dims"\s*:\s*\[([\d,\s]+)\]', card)
    dims = sorted({int(d) for d in found.group(1).split(",") if d.strip()}, reverse=True) if found else []
    return [d for d in dims if d > 0] or None


def _feature_engineering(processors: Mapping[str, Any]) -> dict[str, Any]:
    kinds = [
        kind for key, kind in (
            (rt.KEY_TOKENIZER_CONFIG, "tokenizer"),
            (rt.KEY_IMAGE_PROCESSOR_CONFIG, "image_processor"),
            (rt.KEY_FEATURE_EXTRACTOR_CONFIG, "feature_extractor"),
        ) if key in processors
    ]
    tokenizer_config = processors.get(rt.KEY_TOKENIZER_CONFIG) or {}
    return {
        "type": kinds[0] if len(kinds) == 1 else "processor",
        "config": {
            "components": kinds,
            "tokenizer_class": tokenizer_config.get("tokenizer_class"),
            "vocabulary": rt.KEY_TOKENIZER_JSON if rt.KEY_TOKENIZER_JSON in processors
            else f"{rt.KEY_TOKENIZER_CONFIG}.vocab" if "vocab" in tokenizer_config else None,
        },
    }


@dataclass
class DiscoveryResult:
    """The outcome of discovering one model of a discover_many batch: its metadata or its error."""

    model: str
    metadata: dict[str, Any] | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class MetadataDiscovery:
    """Discovers and aggregates the metadata of a Hugging Face model and its processor."""

    def discover_many(
        self, models: Sequence[str | os.PathLike[str]], *, level: str = "essential", task: str | None = None,
        max_workers: int | None = None,
    ) -> list[DiscoveryResult]:
        """discover() for many models in a thread pool; results in input order, one error never stops the rest."""
        embedding_level(level)  # a bad level is the caller's error, not each model's

        def one(model: str | os.PathLike[str]) -> DiscoveryResult:
            try:
                return DiscoveryResult(os.fspath(model), self.discover(model, level=level, task=task))
            except Exception as exc:  # noqa: BLE001 - any failure belongs to this model's result
                logger.warning("discovery failed for %s: %s", os.fspath(model), exc)
                return DiscoveryResult(os.fspath(model), error=exc)

        if not models:
            return []
        with ThreadPoolExecutor(max_workers=max_workers or min(8, len(models))) as pool:
            return list(pool.map(one, models))

    def discover(
        self, model_name_or_path: str | os.PathLike[str], *, level: str = "essential", task: str | None = None,
        revision: str | None = None,
    ) -> dict[str, Any]:
        """Metadata for a local model folder or a hub id (at a revision), at an embedding level."""
        folder = resolve_model_folder(model_name_or_path, revision=revision)
        return self.discover_folder(folder, level=level, task=task)

    def discover_from_hf(
        self, model: Any, processor: Any = None, *, level: str = "essential", task: str | None = None
    ) -> dict[str, Any]:
        """Metadata for an in-memory transformers model (or config) and processor."""
        config = getattr(model, "config", model)
        with tempfile.TemporaryDirectory() as tmp:
            config.save_pretrained(tmp)
            if processor is not None:
                processor.save_pretrained(tmp)
            return self.discover_folder(Path(tmp), level=level, task=task)

    def discover_folder(self, folder: Path, *, level: str = "essential", task: str | None = None) -> dict[str, Any]:
        """Metadata from the files of a model folder."""
        wanted = embedding_level(level)
        config = _read_json(folder / "config.json")
        if config is None:
            raise MetadataExtractionError(f"{folder} has no config.json; is it a Hugging Face model folder?")
        is_sentence_transformer = (folder / "modules.json").is_file()
        chosen_task = resolve_task(config, task) if task or not is_sentence_transformer else "feature-extraction"
        if chosen_task is None:
            logger.warning("no pipeline task found for %s; pass --task to set one", folder.name)

        processors: dict[str, Any] = {}
        if wanted.include_processor_config:
            try:
                processors = self._processors(folder, config, wanted.include_vocabulary)
            except MetadataExtractionError as exc:
                logger.warning("%s; falling back to the minimal level", exc)
                wanted = EMBEDDING_LEVELS["minimal"]

        metadata: dict[str, Any] = {
            rt.KEY_VERSION: rt.FORMAT_VERSION,
            rt.KEY_TIMESTAMP: export_timestamp(),
            rt.KEY_TRANSFORMERS_VERSION: _transformers_version(),
            rt.KEY_EMBEDDING_LEVEL: wanted.name,
        }
        if wanted.include_model_config:
            metadata[rt.KEY_MODEL_CONFIG] = config
        else:
            metadata[rt.KEY_MODEL_CONFIG] = {k: config[k] for k in MINIMAL_CONFIG_FIELDS if k in config}
        if chosen_task is not None:
            metadata[rt.KEY_PIPELINE_TASK] = chosen_task
        if wanted.include_task_params:
            metadata[rt.KEY_PIPELINE_CONFIG] = self._pipeline_config(config, chosen_task, task)
            generation = _read_json(folder / "generation_config.json")
            if generation is not None:
                metadata[rt.KEY_GENERATION_CONFIG] = generation
        if processors:
            metadata.update(processors)
            metadata[rt.KEY_FEATURE_ENGINEERING] = _feature_engineering(processors)
        return metadata

    @staticmethod
    def _processors(folder: Path, config: Mapping[str, Any], include_vocab: bool) -> dict[str, Any]:
        processors = _preprocessor_metadata(folder)
        vocab_tokenizer = _vocab_tokenizer_class(folder)
        if vocab_tokenizer is not None:
            processors.update(_ctc_tokenizer_metadata(folder, include_vocab, vocab_tokenizer))
        elif any((folder / name).is_file() for name in TOKENIZER_FILES):
            processors.update(_tokenizer_from_files(folder, config, include_vocab)
                              or _tokenizer_metadata(folder, include_vocab))
        if not processors:
            raise MetadataExtractionError(f"{folder.name} has no tokenizer or preprocessor files")
        processors.update(_sentence_transformers_metadata(folder))
        return processors

    @staticmethod
    def _pipeline_config(config: Mapping[str, Any], task: str | None, override: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"detected_task": detect_task(config), "task_source": "override" if override else "detected"}
        params = config.get("task_specific_params")
        if task and isinstance(params, dict):
            family = task.split("-")[0]
            matching = {k: v for k, v in params.items() if str(k).startswith(family)}
            if matching:
                out["task_specific_params"] = matching
        return out


def discover(model_name_or_path: str | os.PathLike[str], *, level: str = "essential", task: str | None = None,
             revision: str | None = None) -> dict[str, Any]:
    """Metadata for a local model folder or a hub id (at a revision)."""
    return MetadataDiscovery().discover(model_name_or_path, level=level, task=task, revision=revision)
