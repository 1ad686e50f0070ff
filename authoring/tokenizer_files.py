"""Tokenizer metadata from a model folder's files alone, without importing transformers.

A folder with tokenizer.json describes its tokenizer completely, given the defaults of the transformers
class it names (authoring/_tokenizer_classes.py, generated from transformers). This module reads
tokenizer_config.json and special_tokens_map.json as transformers 5 reads them and resolves every value
the runtime uses: special tokens, model_max_length, padding and truncation sides, model_input_names,
clean_up_tokenization_spaces. tokenizer.json is embedded as the folder holds it, re-spelled as
canonical JSON.

Where transformers would decide something the files do not say (an unknown or remote-code class, a
special token missing from the vocabulary, added tokens or constructor options that disagree with
tokenizer.json), files_metadata() returns None and discovery loads the tokenizer with transformers.
tests/authoring/test_tokenizer_files.py proves that both ways give the runtime the same tokenizer.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
from collections.abc import Iterator, Mapping
from typing import Any

import onnxmeta_runtime as rt

from ._tokenizer_classes import (
    INCORRECT_HUB_CLASS_MODEL_TYPES,
    MODEL_TYPE_TOKENIZERS,
    TOKENIZER_CLASSES,
    TOKENIZERS_BACKEND_MODEL_IDS,
)

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length for "no limit"
# Written by transformers about how a tokenizer was loaded, not about the tokenizer; and what its
# save_pretrained drops (the added tokens are in tokenizer.json, the file names are this folder's).
DROPPED_KEYS = ("is_local", "local_files_only", "name_or_path", "added_tokens_decoder", "tokenizer_file", "vocab_file",
                "merges_file", "special_tokens_map_file")
_GENERIC_CLASSES = ("TokenizersBackend", "PythonBackend", "PreTrainedTokenizerFast", "MistralCommonBackend")
_ADDED_TOKEN_FLAGS = ("lstrip", "rstrip", "single_word")


def tokenizer_class(tokenizer_config: Mapping[str, Any], model_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The defaults of the tokenizer class AutoTokenizer would load for these configs; None when AutoTokenizer
    would need more than the configs to decide (remote code, a class that needs its files inspected)."""
    if "auto_map" in tokenizer_config or "AutoTokenizer" in str(model_config.get("auto_map") or ""):
        return None
    hub = tokenizer_config.get("tokenizer_class") or model_config.get("tokenizer_class")
    model_type = model_config.get("model_type")
    registered = MODEL_TYPE_TOKENIZERS.get(model_type) if isinstance(model_type, str) else None
    name_or_path = str(model_config.get("_name_or_path") or "").lower()
    if any(fnmatch.fnmatch(name_or_path, pattern) for pattern in TOKENIZERS_BACKEND_MODEL_IDS):
        name: Any = "TokenizersBackend"
    elif hub is None:
        name = registered
    elif not isinstance(hub, str) or hub.removesuffix("Fast") == "LlamaTokenizer":
        return None  # AutoTokenizer looks into tokenizer.json to choose between two classes
    elif registered is None or registered.removesuffix("Fast") == hub.removesuffix("Fast"):
        name = hub
    elif registered in _GENERIC_CLASSES or model_type in INCORRECT_HUB_CLASS_MODEL_TYPES:
        return None
    else:
        name = hub
    return TOKENIZER_CLASSES.get(name.removesuffix("Fast")) if isinstance(name, str) else None


def _components(node: Any) -> Iterator[dict[str, Any]]:
    """A tokenizer.json component and, for a Sequence, its members."""
    if isinstance(node, dict):
        yield node
        for key in ("normalizers", "pretokenizers", "processors", "decoders"):
            for member in node.get(key) or ():
                yield from _components(member)


def _first(node: Any, *types: str) -> dict[str, Any] | None:
    return next((c for c in _components(node) if c.get("type") in types), None)


def _backend_agrees(tokenizer: Mapping[str, Any], option: str, value: Any) -> bool:
    """Whether tokenizer.json already is what transformers builds with this constructor option."""
    if option in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
        bert = _first(tokenizer.get("normalizer"), "BertNormalizer")
        field = {"do_lower_case": "lowercase", "strip_accents": "strip_accents",
                 "tokenize_chinese_chars": "handle_chinese_chars"}[option]
        return bert is None or bert.get(field) == value
    if option == "add_prefix_space":
        for part in ("pre_tokenizer", "post_processor"):
            byte_level = _first(tokenizer.get(part), "ByteLevel", "RobertaProcessing")
            if byte_level is not None and "add_prefix_space" in byte_level and byte_level["add_prefix_space"] != value:
                return False
        metaspace = _first(tokenizer.get("pre_tokenizer"), "Metaspace")
        if metaspace is not None:
            scheme = metaspace.get("prepend_scheme") or ("always" if metaspace.get("add_prefix_space") else "never")
            return scheme == ("always" if value else "never")
        return True
    if option == "trim_offsets":
        processor = _first(tokenizer.get("post_processor"), "ByteLevel", "RobertaProcessing")
        return processor is None or processor.get("trim_offsets", value) == value
    return False


def _added_token(token: Mapping[str, Any]) -> tuple[Any, ...]:
    special = bool(token.get("special", False))
    return (token.get("content"), *(bool(token.get(f, False)) for f in _ADDED_TOKEN_FLAGS), special,
            bool(token.get("normalized", not special)))


def _content(token: Any) -> Any:
    return token.get("content") if isinstance(token, dict) else token


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _array(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def files_metadata(
    tokenizer_json: Mapping[str, Any], tokenizer_config: Mapping[str, Any], special_tokens_map: Mapping[str, Any],
    model_config: Mapping[str, Any], *, include_vocab: bool,
) -> dict[str, Any] | None:
    """hf_tokenizer_config (and, with include_vocab, hf_tokenizer_json) as transformers would produce them from
    these files; None when only transformers can say (see the module docstring)."""
    entry = tokenizer_class(tokenizer_config, model_config)
    model = tokenizer_json.get("model")
    added = tokenizer_json.get("added_tokens")
    if entry is None or not isinstance(model, dict) or not isinstance(added, list):
        return None
    if not all(isinstance(t, dict) for t in added):
        return None
    padding, truncation = (_object(tokenizer_json.get(key)) for key in ("padding", "truncation"))

    # transformers reads special_tokens_map.json only when tokenizer_config.json has no added_tokens_decoder,
    # and then lets it override tokenizer_config.json's special tokens
    decoder = tokenizer_config.get("added_tokens_decoder")
    named = {**tokenizer_config, **(special_tokens_map if decoder is None else {})}
    tokens = {k: _content(named[k]) if k in named else entry["special_tokens"][k] for k in SPECIAL_TOKENS}
    extra = [_content(t) for source in (tokenizer_config, special_tokens_map)
             for key in ("additional_special_tokens", "extra_special_tokens")
             for t in _array(source.get(key))]

    # transformers adds every special token missing from the vocabulary, and re-flags named ones as special
    vocab = model.get("vocab")
    known = set(vocab) if isinstance(vocab, dict) else {v[0] for v in vocab or () if isinstance(v, list) and v}
    known |= {t.get("content") for t in added}
    if any(t is not None and (not isinstance(t, str) or t not in known) for t in [*tokens.values(), *extra]):
        return None
    if any(t.get("content") in tokens.values() and not t.get("special") for t in added):
        return None
    if decoder is not None:
        if not isinstance(decoder, dict) or not all(isinstance(t, dict) for t in decoder.values()):
            return None
        if {str(k): _added_token(t) for k, t in decoder.items()} != {str(t.get("id")): _added_token(t) for t in added}:
            return None
    if padding and padding.get("pad_token") != tokens["pad_token"]:
        return None
    for option, default in entry["backend_options"].items():
        if not _backend_agrees(tokenizer_json, option, tokenizer_config.get(option, default)):
            return None

    config = {k: v for k, v in tokenizer_config.items() if k not in DROPPED_KEYS}
    config.update({k: v for k, v in tokens.items() if v is not None or k in config})
    if "model_max_length" in tokenizer_config:
        max_length = tokenizer_config["model_max_length"]
    elif entry["model_max_length"] is not None:  # a class that passes its own limit to transformers
        max_length = entry["model_max_length"]
    else:
        max_length = tokenizer_config.get("max_len")  # what older transformers wrote
    config["model_max_length"] = VERY_LARGE_INTEGER if max_length is None else max_length
    config["tokenizer_class"] = entry["class"]
    # tokenizer.json spells sides "Right" and "Left"; transformers takes them from the tokenizers object: "right"
    config.setdefault("padding_side", str(padding.get("direction") or entry["padding_side"]).lower())
    config.setdefault("truncation_side", str(truncation.get("direction") or entry["truncation_side"]).lower())
    if "pad_type_id" in padding:
        config.setdefault("pad_token_type_id", padding["pad_type_id"])
    config.setdefault("clean_up_tokenization_spaces", entry["clean_up_tokenization_spaces"])
    config.setdefault("model_input_names", list(entry["model_input_names"]))
    out: dict[str, Any] = {rt.KEY_TOKENIZER_CONFIG: config}
    if include_vocab:
        out[rt.KEY_TOKENIZER_JSON] = rt.canonical_json(tokenizer_json)
        out[rt.KEY_TOKENIZERS_VERSION] = importlib.metadata.version("tokenizers")
    return out
