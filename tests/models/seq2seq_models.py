"""Tiny random-weight encoder-decoders (T5, BART, Whisper) and their Optimum exports (with past), built once per test
session in one Optimum process: the seq2seq file tests (test_seq2seq.py) and the text-to-text parity tests
(test_parity_seq2seq.py) share them (conftest's seq2seq_exports fixture).

T5 has the real t5-small tokenizer (SentencePiece Unigram) and BART the real roberta-base byte-level BPE when
../shared/data is present, else tokenizers trained here on CORPUS; vocabularies of the real models' size either way.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from helpers import SHARED, for_transformers_4, learn_merges, optimum_python

MODELS = ("t5", "bart", "whisper")
MAX_NEW = 20
CORPUS = ["the quick brown fox jumps over the lazy dog", "translate English to German: the house is wonderful",
          "summarize: studies have shown that owning a dog is good for you"] * 20


# ------------------------------------------------------------------------------------------------------
# Tiny models, exported once per session in one Optimum process
# ------------------------------------------------------------------------------------------------------

def t5_tokenizer(folder: Path) -> None:
    """The real t5-small tokenizer when ../shared is present, else a SentencePiece-style Unigram trained here."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import AutoTokenizer, T5TokenizerFast

    if (SHARED / "t5-small").exists():
        AutoTokenizer.from_pretrained(SHARED / "t5-small").save_pretrained(folder)
        return
    # tokenizers' UnigramTrainer learns another vocabulary in each process (hash-map order): pieces from the
    # deterministic BPE merges of the tests' helpers instead, scored by how often they occur
    normalizer, pre_tokenizer = normalizers.NFKC(), pre_tokenizers.Metaspace()
    words = Counter(w for line in CORPUS for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    merges = learn_merges(Counter({tuple(w): n for w, n in words.items()}), 160)
    pieces = list(dict.fromkeys([*sorted({c for w in words for c in w}), *(a + b for a, b in merges)]))
    counts = {p: sum(n * w.count(p) for w, n in words.items()) for p in pieces}
    total = sum(counts.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((p, math.log(c / total)) for p, c in counts.items() if c)]
    tok = Tokenizer(Unigram(vocab, unk_id=2))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    # model_max_length as t5-small's tokenizer_config.json has it (T5's relative positions leave the config without one)
    tokenizer = T5TokenizerFast(tokenizer_object=tok, extra_ids=0, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                model_max_length=512)
    tokenizer.save_pretrained(folder)


def bart_tokenizer(folder: Path) -> None:
    """The real roberta-base byte-level BPE when ../shared is present, else one trained here."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import BartTokenizerFast

    if (SHARED / "roberta-base").exists():  # saved as BART's tokenizer class (RobertaTokenizer), which 4.57 loads
        BartTokenizerFast.from_pretrained(SHARED / "roberta-base").save_pretrained(folder)
        return
    tok = Tokenizer(BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    BartTokenizerFast(tokenizer_object=tok).save_pretrained(folder)


def build(kind: str, folder: Path) -> None:
    """A random-weight model folder; vocabularies of the real models' size, whatever the tokenizer, so that the
    weights outweigh the graphs as in real models. Whisper needs no tokenizer here: token ids are enough."""
    import torch
    import transformers

    folder.mkdir(parents=True)
    torch.manual_seed(1 if kind == "bart" else 0)  # seeds whose greedy outputs vary (random BARTs repeat a token)
    if kind == "t5":
        t5_tokenizer(folder)
        config = transformers.T5Config(vocab_size=32128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                       initializer_factor=20.0, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
        model = transformers.T5ForConditionalGeneration(config)
    elif kind == "bart":
        bart_tokenizer(folder)
        config = transformers.BartConfig(vocab_size=50265, d_model=32, encoder_layers=2, decoder_layers=2,
                                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                         decoder_ffn_dim=64, max_position_embeddings=128, init_std=1.0, forced_eos_token_id=None)
        model = transformers.BartForConditionalGeneration(config)
    else:
        config = transformers.WhisperConfig(vocab_size=51865, d_model=32, encoder_layers=2, decoder_layers=2,
                                            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                            decoder_ffn_dim=64, max_source_positions=64, max_target_positions=64,
                                            init_std=0.5)
        model = transformers.WhisperForConditionalGeneration(config)
        transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    model.config.architectures = [type(model).__name__]
    model.eval().save_pretrained(folder)


def unique_weight_bytes(folder: Path) -> int:
    """An export's initializers counted once by content (computed with onnx, independently of the merge)."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    seen: dict[str, int] = {}
    for path in folder.glob("*.onnx"):
        for tensor in onnx.load(str(path)).graph.initializer:
            data = numpy_helper.to_array(tensor)
            seen[hashlib.sha256(str((data.dtype, data.shape)).encode() + data.tobytes()).hexdigest()] = data.nbytes
    return sum(seen.values())


EXPORT_SCRIPT = """
import json, sys
from optimum.exporters.onnx import main_export
for model, output, task, options in json.loads(sys.argv[1]):
    main_export(model, output, task=task, library_name="transformers", do_validation=False, **options)
"""


def export_all(root: Path) -> dict[str, tuple[Path, Path]]:
    """(model folder, Optimum export folder) per model: separate decoders (T5's export also has the merged one)."""
    jobs = []
    for kind in MODELS:
        build(kind, root / kind)
        task = "automatic-speech-recognition-with-past" if kind == "whisper" else "text2text-generation-with-past"
        # 128 frames: the tiny Whisper's 64 encoder positions (the real one has 1500, 3000 frames)
        options = {"no_post_process": kind != "t5", **({"nb_max_frames": 128} if kind == "whisper" else {})}
        jobs.append((str(for_transformers_4(root / kind)), str(root / f"{kind}-onnx"), task, options))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(optimum_python()), "-c", EXPORT_SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                            env={**env, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        pytest.fail(f"optimum export failed:\n{result.stderr[-3000:]}")
    return {kind: (root / kind, root / f"{kind}-onnx") for kind in MODELS}
