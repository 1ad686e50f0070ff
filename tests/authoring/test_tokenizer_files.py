"""The tokenizer fast path (authoring.tokenizer_files): metadata built from a folder's files without transformers
gives the runtime the same tokenizer as metadata built by loading and saving the tokenizer with transformers.

For every folder: the fields of hf_tokenizer_config that the runtime reads are equal, and the runtime's
tokenizers, rebuilt from either metadata, encode, pad, truncate and decode a set of texts identically.
The fast path embeds tokenizer.json as the folder holds it; transformers re-serializes it through the tokenizers
library, which spells an older file anew (merges as pairs instead of "a b" strings, fields added since written
with their defaults, Metaspace's prepend_scheme for add_prefix_space). tokenizers reads both spellings into the
same tokenizer, which the encodings below show.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

import onnxmeta_runtime as rt
from authoring.discovery import _tokenizer_from_files, _tokenizer_metadata
from helpers import ROOT, SHARED, families, trained_bpe, trained_unigram, trained_wordpiece

# Every field of hf_tokenizer_config the runtime reads.
RUNTIME_FIELDS = (
    "model_max_length", "padding_side", "truncation_side", "pad_token_type_id", "clean_up_tokenization_spaces",
    "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", "model_input_names", "tokenizer_class",
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)
TEXTS = [
    "Hello world!", "Paris is the capital of France.", "", "   spaces   around  ", "It's a test, isn't it ? Yes !",
    "Ünïcödé façade — naïve café 東京 🤗", "My name is Wolfgang and I live in Berlin. " * 30,
    "a [MASK] and a <mask> and <s> and </s> and <|endoftext|> and <pad>", "tab\there\nnew line",
]
PAIRS = [("A man plays a guitar.", "Someone plays an instrument."), ("short", "a much longer second text " * 40)]
WORDS = [["Angela", "Merkel", "visited", "Düsseldorf"], ["New", "York"]]


def resaved(build: Callable[[Path], None], **options: Any) -> Callable[[Path], None]:
    """A folder builder whose tokenizer transformers loads with options and saves again."""
    def run(folder: Path) -> None:
        from transformers import AutoTokenizer

        build(folder)
        AutoTokenizer.from_pretrained(folder, **options).save_pretrained(folder)

    return run


def copied(name: str, model_type: str | None = None) -> Callable[[Path], None]:
    """A folder builder copying a real ../shared/data tokenizer (with a config.json naming model_type if it has none)."""
    def run(folder: Path) -> None:
        shutil.copytree(SHARED / name, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "onnx*"))
        if model_type is not None:
            (folder / "config.json").write_text(json.dumps({"model_type": model_type}))

    return run


def demo_folder(folder: Path) -> None:
    from authoring.demo import build_source

    build_source(folder)


TRAINED = {
    "wordpiece": (trained_wordpiece, "bert"),
    "bpe": (trained_bpe, "roberta"),
    "unigram": (trained_unigram, "xlm-roberta"),
    "wordpiece-left-padding-clean-up": (
        resaved(trained_wordpiece, padding_side="left", clean_up_tokenization_spaces=True), "bert"),
    "bpe-add-prefix-space": (resaved(trained_bpe, add_prefix_space=True, trim_offsets=False), "roberta"),
    "unigram-max-length-128": (resaved(trained_unigram, model_max_length=128), "xlm-roberta"),
    "demo": (demo_folder, None),
}
REAL = {
    "bert-base-uncased": (copied("bert-base-uncased"), None),  # no special tokens in tokenizer_config: BertTokenizer's
    "dslim-bert-base-NER": (copied("dslim__bert-base-NER"), None),
    "distilbert-squad": (copied("distilbert-base-uncased-distilled-squad"), None),
    "roberta-base": (copied("roberta-base", "roberta"), None),
    "t5-small": (copied("t5-small"), None),
    "whisper-tiny": (copied("openai__whisper-tiny", "whisper"), None),
    "whisper-large-v3": (copied("openai__whisper-large-v3"), None),
    "clip": (copied("openai__clip-vit-base-patch32", "clip"), None),
    "all-MiniLM-L6-v2": (copied("sentence-transformers__all-MiniLM-L6-v2"), None),  # padding and truncation in tokenizer.json
    "gpt2": (copied("gpt2/_derived", "gpt2"), None),  # no limit: model_max_length int(1e30)
}
FOLDERS = families(TRAINED, REAL)


def build(root: Path, name: str) -> Path:
    builder, model_type = FOLDERS[name]
    folder = root / name
    folder.mkdir()
    builder(folder)
    if not (folder / "config.json").exists():
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


class Both:
    """A folder's tokenizer metadata by the fast path and by transformers, and the runtime's tokenizers from each."""

    def __init__(self, folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        fast = _tokenizer_from_files(folder, config, include_vocab=True)
        assert fast is not None, "the fast path declined a folder transformers saved"
        self.fast, self.slow = fast, _tokenizer_metadata(folder, include_vocab=True)
        model = {rt.KEY_MODEL_CONFIG: {"max_position_embeddings": 512}}
        self.fast_tokenizer = rt.load_tokenizer({**model, **self.fast})
        self.slow_tokenizer = rt.load_tokenizer({**model, **self.slow})


@pytest.fixture(scope="module", params=list(FOLDERS))
def both(request, tmp_path_factory) -> Both:
    return Both(build(tmp_path_factory.mktemp("tokenizer_files"), request.param))


def test_runtime_fields_are_equal(both):
    fast, slow = both.fast[rt.KEY_TOKENIZER_CONFIG], both.slow[rt.KEY_TOKENIZER_CONFIG]
    for field in RUNTIME_FIELDS:
        assert rt._token_content(fast.get(field)) == rt._token_content(slow.get(field)), field
    for field in ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces", "model_input_names",
                  "tokenizer_class"):
        assert field in fast, field  # written out, whatever the folder's files say
    assert both.fast[rt.KEY_TOKENIZERS_VERSION] == both.slow[rt.KEY_TOKENIZERS_VERSION]


def _encodings(encodings: list[Any]) -> list[Any]:
    return [(e.ids, e.type_ids, e.attention_mask, e.offsets, e.tokens, e.special_tokens_mask, e.word_ids,
             [(o.ids, o.offsets) for o in e.overflowing]) for e in encodings]


def test_runtime_tokenizers_behave_identically(both):
    import numpy as np

    fast, slow = both.fast_tokenizer, both.slow_tokenizer
    assert (fast.max_length, fast.padding_side, fast.clean_up_spaces, fast.pad_token_id, fast.type_ids) == \
        (slow.max_length, slow.padding_side, slow.clean_up_spaces, slow.pad_token_id, slow.type_ids)
    for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        assert fast.token_id(name) == slow.token_id(name), name
    assert _encodings(fast.encode(TEXTS)) == _encodings(slow.encode(TEXTS))
    assert _encodings(fast.encode(PAIRS)) == _encodings(slow.encode(PAIRS))
    assert _encodings(fast.encode(WORDS, is_pretokenized=True)) == _encodings(slow.encode(WORDS, is_pretokenized=True))
    assert _encodings(fast.encode(TEXTS, add_special_tokens=False)) == _encodings(slow.encode(TEXTS, add_special_tokens=False))
    for strategy, window, stride in (("only_second", 24, 4), ("longest_first", 16, 0)):
        options = {"window": window, "stride": stride}
        a, b = fast.with_truncation(strategy, **options), slow.with_truncation(strategy, **options)
        assert _encodings(a.encode(PAIRS)) == _encodings(b.encode(PAIRS))
    dtypes = {n: np.int64 for n in ("input_ids", "attention_mask", "token_type_ids")}
    for x, y in zip(fast(TEXTS, dtypes).values(), slow(TEXTS, dtypes).values()):
        np.testing.assert_array_equal(x, y)
    for encoding in fast.encode(TEXTS + [" , . ! ? ' s n't"]):
        for skip in (True, False):
            assert fast.decode(encoding.ids, skip_special_tokens=skip) == slow.decode(encoding.ids, skip_special_tokens=skip)
        assert fast.tokens_to_string(encoding.tokens) == slow.tokens_to_string(encoding.tokens)


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bpe") / "hf"
    folder.mkdir()
    trained_bpe(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    return folder


def _edited(folder: Path, tmp_path: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    copy = shutil.copytree(folder, tmp_path / name)
    path = copy / "tokenizer_config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("case, edit", [
    # transformers rebuilds RoBERTa's pre-tokenizer from this option: tokenizer.json no longer says it all
    ("option disagrees with tokenizer.json", lambda c: c.update(add_prefix_space=True)),
    ("remote code", lambda c: c.update(auto_map={"AutoTokenizer": ["x.Tok", None]})),
    ("special token outside the vocabulary", lambda c: c.update(mask_token="<never-seen>")),
    ("unknown class", lambda c: c.update(tokenizer_class="AcmeTokenizer")),
    ("class decided by the files", lambda c: c.update(tokenizer_class="LlamaTokenizerFast")),
    ("added tokens that tokenizer.json lacks", lambda c: c.update(
        added_tokens_decoder={"0": {"content": "<s>", "special": True, "lstrip": True}})),
])
def test_fast_path_declines_what_only_transformers_knows(bpe_folder, tmp_path, case, edit):
    folder = _edited(bpe_folder, tmp_path, "edited", edit)
    assert _tokenizer_from_files(folder, {"model_type": "roberta"}, include_vocab=True) is None


def test_fast_path_declines_a_disagreeing_bert_normalizer(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    trained_wordpiece(folder)  # lower-cases
    cased = _edited(folder, tmp_path, "cased", lambda c: c.update(do_lower_case=False))
    assert _tokenizer_from_files(cased, {"model_type": "bert"}, include_vocab=False) is None
    assert _tokenizer_from_files(folder, {"model_type": "bert"}, include_vocab=False) is not None


def vocab_txt_only(folder: Path) -> Path:
    """The trained WordPiece tokenizer as a slow tokenizer's files: vocab.txt and tokenizer_config.json."""
    folder.mkdir()
    trained_wordpiece(folder)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in sorted(vocab, key=vocab.get)))
    (folder / "tokenizer.json").unlink()
    return folder


def test_slow_only_folders_go_through_transformers(tmp_path):
    """vocab.txt alone (no tokenizer.json): discovery converts it with transformers, which the fast path cannot."""
    from authoring import discover

    folder = vocab_txt_only(tmp_path / "hf")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"],
                                                    "max_position_embeddings": 64}))
    assert _tokenizer_from_files(folder, {"model_type": "bert"}, include_vocab=True) is None
    metadata = discover(folder, level="full")
    assert metadata[rt.KEY_TOKENIZER_CONFIG]["tokenizer_class"] == "BertTokenizer"
    assert rt.load_tokenizer(metadata).encode(["Paris is the capital"])[0].tokens[:3] == ["[CLS]", "paris", "is"]


# A Python without torch, as in a venv made by `pip install -e .` alone: `import torch` fails and
# importlib.util.find_spec("torch"), which transformers asks, says None.
NO_TORCH = """
import sys
sys.modules["torch"] = None
"""


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_commands_run_without_torch_and_embed_imports_no_transformers(tmp_path):
    demo = _python('from authoring.cli import main; assert main(["demo", "--output-dir", "demo"]) == 0', tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "detected task: text-classification" in demo.stdout and demo.stderr == ""  # no warning from anyone
    embed = _python("""
from authoring.cli import main
assert main(["embed", "demo/model.onnx", "demo/hf-model", "--include-vocab", "--output", "out.onnx"]) == 0
heavy = sorted({m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
               & {"torch", "transformers", "onnx", "huggingface_hub", "numpy"})
assert heavy == [], heavy
assert main(["inspect", "out.onnx"]) == 0
assert main(["validate", "out.onnx"]) == 0
""", tmp_path)
    assert embed.returncode == 0, embed.stderr[-3000:]
    assert "task: text-classification, level: full" in embed.stdout and "ok   graph:" in embed.stdout
    assert embed.stderr == ""


def test_transformers_path_runs_without_torch(tmp_path):
    """A slow tokenizer (vocab.txt) is converted by transformers, which imports without torch; the command
    prints none of transformers' notes about it."""
    folder = vocab_txt_only(tmp_path / "hf")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForSequenceClassification"],
                                                    "max_position_embeddings": 64, "id2label": {"0": "A", "1": "B"}}))
    result = _python(f"""
from authoring.cli import main
assert main(["demo", "--output-dir", "demo"]) == 0
assert main(["embed", "demo/model.onnx", {str(folder)!r}, "--include-vocab", "--output", "out.onnx"]) == 0
assert "transformers" in sys.modules and sys.modules["torch"] is None
""", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "task: text-classification, level: full" in result.stdout and result.stderr == ""
