"""Encoder-decoders as ONE file (authoring.seq2seq): tiny random T5, BART and Whisper exported by Optimum
(with past), merged, and decoded greedily by a plain numpy + onnxruntime loop written here, token for token
against the same loop over the separate files and against transformers' generate on the PyTorch model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import SHARED, for_transformers_4, optimum_python

import onnxmeta_runtime as rt
from authoring import discover
from authoring.seq2seq import describe_layout, graph_layout, merge_export, session_signature

pytestmark = pytest.mark.optimum
MODELS = ("t5", "bart", "whisper")
MAX_NEW = 20
CORPUS = ["the quick brown fox jumps over the lazy dog", "translate English to German: the house is wonderful",
          "summarize: studies have shown that owning a dog is good for you"] * 20


# ------------------------------------------------------------------------------------------------------
# Tiny models, exported once per session in one Optimum process
# ------------------------------------------------------------------------------------------------------

def t5_tokenizer(folder: Path) -> None:
    """The real t5-small tokenizer when ../shared is present, else a SentencePiece-style Unigram trained here."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import Unigram
    from transformers import AutoTokenizer, T5TokenizerFast

    if (SHARED / "t5-small").exists():
        AutoTokenizer.from_pretrained(SHARED / "t5-small").save_pretrained(folder)
        return
    tok = Tokenizer(Unigram())
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizers.NFKC(), pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"],
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tok, extra_ids=0, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)


def bart_tokenizer(folder: Path) -> None:
    """The real roberta-base byte-level BPE when ../shared is present, else one trained here."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import AutoTokenizer, BartTokenizerFast

    if (SHARED / "roberta-base").exists():
        AutoTokenizer.from_pretrained(SHARED / "roberta-base").save_pretrained(folder)
        return
    tok = Tokenizer(BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
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
                                            decoder_ffn_dim=64, max_target_positions=64, init_std=0.5)
        model = transformers.WhisperForConditionalGeneration(config)
        transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    model.config.architectures = [type(model).__name__]
    model.eval().save_pretrained(folder)


EXPORT_SCRIPT = """
import json, sys
from optimum.exporters.onnx import main_export
for model, output, task, merged in json.loads(sys.argv[1]):
    main_export(model, output, task=task, library_name="transformers", do_validation=False, no_post_process=not merged)
"""


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(model folder, Optimum export folder) per model: separate decoders (T5's export also has the merged one)."""
    root = tmp_path_factory.mktemp("seq2seq")
    jobs = []
    for kind in MODELS:
        build(kind, root / kind)
        task = "automatic-speech-recognition-with-past" if kind == "whisper" else "text2text-generation-with-past"
        jobs.append((str(for_transformers_4(root / kind)), str(root / f"{kind}-onnx"), task, kind == "t5"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(optimum_python()), "-c", EXPORT_SCRIPT, json.dumps(jobs)], capture_output=True, text=True,
                            env={**env, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        pytest.fail(f"optimum export failed:\n{result.stderr[-3000:]}")
    return {kind: (root / kind, root / f"{kind}-onnx") for kind in MODELS}


@pytest.fixture(scope="session")
def cases(exports) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray, Any]]:
    """Per model: encoder inputs, transformers' greedy tokens for them, and the model's config."""
    return {kind: inputs_and_reference(kind, model_folder) for kind, (model_folder, _) in exports.items()}


@pytest.fixture(scope="session")
def one_files(exports, tmp_path_factory) -> dict[str, Path]:
    """Each export merged with its model's metadata, then copied ALONE into an empty folder."""
    files = {}
    for kind, (model_folder, export) in exports.items():
        written = merge_export(export, None, discover(model_folder, level="full"))
        alone = tmp_path_factory.mktemp(f"{kind}-alone") / "model.onnx"
        shutil.copyfile(written.output_path, alone)
        files[kind] = alone
    return files


# ------------------------------------------------------------------------------------------------------
# A greedy loop with plain onnxruntime over the layout's entry points
# ------------------------------------------------------------------------------------------------------

Run = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the inputs with empty defaults each log a warning at load
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def one_file_runner(path: Path, calls: list[str], *, strict: bool = False) -> tuple[Run, dict[str, Any]]:
    """Entry points of the one file: phase and the entry's inputs fed, its outputs asked, by role.

    strict asks for every output of the file and checks that only the entry's are filled.
    """
    s, layout = session(path), rt.read_metadata(path)["hf_graph_layout"]
    every = [o.name for o in s.get_outputs()]

    def run(entry: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(entry)
        point = layout["entry_points"][entry]
        feeds = {point["inputs"][role]: value for role, value in feed.items() if role in point["inputs"]}
        asked = every if strict else list(point["outputs"].values())
        results = dict(zip(asked, s.run(asked, {layout["phase_input"]: np.array(point["phase"]), **feeds})))
        mine = set(point["outputs"].values())
        assert all((results[n].size > 0) == (n in mine) for n in asked), (entry, {n: v.shape for n, v in results.items()})
        return {role: results[name] for role, name in point["outputs"].items()}

    return run, layout


def folder_runner(folder: Path, calls: list[str]) -> tuple[Run, dict[str, Any]]:
    """Entry points of the separate files, by the layout recognised from their names."""
    layout = describe_layout(folder)
    sessions = {entry: session(folder / point["file"]) for entry, point in layout["entry_points"].items()}

    def run(entry: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(entry)
        point = layout["entry_points"][entry]
        outputs = sessions[entry].run(list(point["outputs"].values()), {k: v for k, v in feed.items() if k in point["inputs"]})
        return dict(zip(point["outputs"], outputs))

    return run, layout


def greedy(runner: tuple[Run, dict[str, Any]], encoder_feed: dict[str, np.ndarray], config: Any) -> np.ndarray:
    """Encoder once, the first decoder step (which computes the cross-attention past), then the decoder with past."""
    run, layout = runner
    hidden = run("encoder", encoder_feed)["last_hidden_state"]
    masks = {"encoder_attention_mask": encoder_feed["attention_mask"]} if "attention_mask" in encoder_feed else {}
    ids = np.full((len(hidden), 1), config.decoder_start_token_id, np.int64)
    out = run("decoder", {"input_ids": ids, "encoder_hidden_states": hidden, **masks})
    past = {p["input"]: out[p["output"]] for p in layout["past"]}
    done = np.zeros(len(ids), bool)
    for step in range(MAX_NEW):
        token = np.where(done, config.pad_token_id, out["logits"][:, -1].argmax(-1))
        ids, done = np.concatenate([ids, token[:, None]], 1), done | (token == config.eos_token_id)
        if done.all() or step == MAX_NEW - 1:
            return ids
        out = run("decoder_with_past", {"input_ids": token[:, None], **masks, **past})
        past.update({p["input"]: out[p["output"]] for p in layout["past"] if not p["cross"]})
    return ids


def inputs_and_reference(kind: str, model_folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray, Any]:
    """Two inputs (the second padded for text models) and transformers' greedy generate on the PyTorch model."""
    import torch
    import transformers

    model = transformers.AutoModelForSpeechSeq2Seq.from_pretrained(model_folder) if kind == "whisper" else \
        transformers.AutoModelForSeq2SeqLM.from_pretrained(model_folder)
    model.eval()
    rng = np.random.default_rng(1)
    options = {"max_new_tokens": MAX_NEW, "do_sample": False, "num_beams": 1}
    with torch.no_grad():
        if kind == "whisper":
            features = rng.standard_normal((2, 80, 3000)).astype(np.float32)
            # GenerationMixin's own greedy search: WhisperForConditionalGeneration.generate adds Whisper's
            # prompt and timestamp logic, which belongs to the runtime's speech task, not to the file.
            start = torch.full((2, 1), model.config.decoder_start_token_id)
            expected = transformers.GenerationMixin.generate(model, input_features=torch.from_numpy(features),
                                                             decoder_input_ids=start, **options)
            return {"input_features": features}, expected.numpy(), model.config
        ids = rng.integers(4, 300, (2, 9))
        mask = np.ones_like(ids)
        ids[1, 6:], mask[1, 6:] = model.config.pad_token_id, 0
        expected = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **options)
    return {"input_ids": ids, "attention_mask": mask}, expected.numpy(), model.config


# ------------------------------------------------------------------------------------------------------
# The one file
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MODELS)
def test_greedy_tokens_equal_separate_files_and_transformers(kind, exports, one_files, cases):
    feed, expected, config = cases[kind]
    one_calls: list[str] = []
    separate_calls: list[str] = []
    tokens = greedy(one_file_runner(one_files[kind], one_calls), feed, config)
    assert np.array_equal(tokens, greedy(folder_runner(exports[kind][1], separate_calls), feed, config))
    assert np.array_equal(tokens, expected), (tokens, expected)
    assert all(len(set(row[1:])) >= 3 for row in tokens), tokens  # a broken file cannot pass on a repeated token
    # the encoder runs once per input, the cross-attention past is computed once (first step), then only steps
    assert one_calls == ["encoder", "decoder"] + ["decoder_with_past"] * (tokens.shape[1] - 2) == separate_calls


@pytest.mark.parametrize("kind", MODELS)
def test_plain_onnxruntime_loads_it_and_onnx_checker_passes(kind, one_files):
    import onnx

    onnx.checker.check_model(str(one_files[kind]), full_check=True)
    s = session(one_files[kind])
    layout = rt.read_metadata(one_files[kind])["hf_graph_layout"]
    assert [i.name for i in s.get_inputs()] == ["phase"]  # every other input has an empty default
    defaults = {i.name for i in s.get_overridable_initializers()}
    assert {n for point in layout["entry_points"].values() for n in point["inputs"].values()} == defaults


def unique_weight_bytes(folder: Path) -> int:
    """The export's initializers counted once by content (computed here with onnx, independently of the merge)."""
    import onnx
    from onnx import numpy_helper

    seen: dict[str, int] = {}
    for path in folder.glob("*.onnx"):
        for tensor in onnx.load(str(path)).graph.initializer:
            data = numpy_helper.to_array(tensor)
            seen[hashlib.sha256(str((data.dtype, data.shape)).encode() + data.tobytes()).hexdigest()] = data.nbytes
    return sum(seen.values())


@pytest.mark.parametrize("kind", MODELS)
def test_size_within_2_percent_of_the_unique_weights(kind, exports, one_files):
    export = exports[kind][1]
    unique = unique_weight_bytes(export)
    metadata = sum(e.field.end - e.field.start for e in rt.scan_model(one_files[kind]).entries)
    size = one_files[kind].stat().st_size - metadata  # the embedded tokenizer is not the model's weights
    separate = sum(p.stat().st_size for p in export.glob("*.onnx"))
    assert size <= 1.02 * unique, (size, unique)
    assert size < 0.6 * separate


@pytest.mark.parametrize("kind", MODELS)
def test_each_entry_point_takes_and_gives_what_the_layout_says(kind, one_files, cases):
    """Fed only its layout inputs, an entry point fills its layout outputs, and every other output is empty."""
    feed, expected, config = cases[kind]
    calls: list[str] = []
    assert np.array_equal(greedy(one_file_runner(one_files[kind], calls, strict=True), feed, config), expected)
    layout = rt.read_metadata(one_files[kind])["hf_graph_layout"]
    points = layout["entry_points"]
    assert not any(".encoder." in role for role in points["decoder_with_past"]["outputs"])  # cross-attention: once
    assert {p["output"] for p in layout["past"] if p["cross"]} <= set(points["decoder"]["outputs"])
    assert {p["input"] for p in layout["past"]} <= set(points["decoder_with_past"]["inputs"])


@pytest.mark.parametrize("kind", MODELS)
def test_layout_is_recognised_from_graph_names(kind, exports, one_files):
    embedded = rt.read_metadata(one_files[kind])["hf_graph_layout"]
    assert graph_layout({"model.onnx": session_signature(session(one_files[kind]))}) == embedded
    assert describe_layout(one_files[kind]) == embedded
    folder = describe_layout(exports[kind][1])
    assert folder["past"] == embedded["past"]
    for entry, point in embedded["entry_points"].items():  # the same roles as Optimum's separate files
        assert folder["entry_points"][entry]["file"].startswith(entry.replace("_with_past", ""))
        assert set(folder["entry_points"][entry]["inputs"]) == set(point["inputs"])
        assert set(folder["entry_points"][entry]["outputs"]) == set(point["outputs"])
