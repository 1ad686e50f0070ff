"""text2text-generation, summarization and translation parity: the runtime on ONE file against transformers 4.57's
Text2TextGenerationPipeline, SummarizationPipeline and TranslationPipeline (transformers 5 removed them) on the same
weights, token for token.

Tiny random T5 (t5-small's SentencePiece Unigram tokenizer, its task_specific_params: "summarize: ", "translate
English to German: ") and BART (roberta-base's byte-level BPE) exported by Optimum with past (seq2seq_models), merged
into one file with `merge_export` and copied ALONE into an empty folder. The oracle runs in the Optimum environment
(transformers 4.57) through tests/oracles/seq2seq.py; its results are computed on each run, never checked in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from helpers import ROOT, for_transformers_4, optimum_python
from runtime_under_test import rt

from authoring import discover
from authoring.seq2seq import merge_export

pytestmark = pytest.mark.optimum

# t5-small's task_specific_params, as published
T5_TASK_PARAMS = {
    "summarization": {"early_stopping": True, "length_penalty": 2.0, "max_length": 200, "min_length": 30,
                      "no_repeat_ngram_size": 3, "num_beams": 4, "prefix": "summarize: "},
    "translation_en_to_de": {"early_stopping": True, "max_length": 300, "num_beams": 4,
                             "prefix": "translate English to German: "},
    "translation_en_to_fr": {"early_stopping": True, "max_length": 300, "num_beams": 4,
                             "prefix": "translate English to French: "},
    "translation_en_to_ro": {"early_stopping": True, "max_length": 300, "num_beams": 4,
                             "prefix": "translate English to Romanian: "},
}
TEXTS = ["What a beautiful morning it was", "Hello world, this is a test. Isn't it?",
         "Paris is the capital of France and Berlin is the capital of Germany; both are old cities."]
GREEDY = {"num_beams": 1, "max_new_tokens": 16}


class Family(NamedTuple):
    kind: str
    folder: Path  # the Hugging Face model folder (T5's with task_specific_params)
    export: Path  # Optimum's export folder
    model: Path  # the one file, alone in its folder


@pytest.fixture(scope="session")
def families(seq2seq_exports, tmp_path_factory) -> dict[str, Family]:
    out = {}
    for kind in ("t5", "bart"):
        model_folder, export = seq2seq_exports[kind]
        root = tmp_path_factory.mktemp(f"{kind}-text2text")
        folder = root / kind
        shutil.copytree(model_folder, folder)
        if kind == "t5":
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, "task_specific_params": T5_TASK_PARAMS}))
        written = merge_export(export, root / "merged" / "model.onnx", discover(folder, level="full"))
        alone = root / "alone" / "model.onnx"
        alone.parent.mkdir()
        shutil.copyfile(written.output_path, alone)
        out[kind] = Family(kind, folder, export, alone)
    return out


RUNTIMES: dict[tuple[Path, str], Any] = {}


def runtime(path: Path, task: str) -> Any:
    key = (path, task)
    if key not in RUNTIMES:
        RUNTIMES[key] = rt.Runtime(path, task=task)
    return RUNTIMES[key]


def calls(family: Family) -> list[dict[str, Any]]:
    """The pipeline calls compared for a model. Some depend on what the model generates (an eos token it reaches,
    so that min_length and stop_sequence change something): they are picked from the runtime's greedy tokens, which
    the first call checks against the oracle."""
    t2t = runtime(family.model, "text2text-generation")
    greedy = t2t(TEXTS[0], return_tensors=True, **GREEDY)[0]["generated_token_ids"]
    reached = greedy[4]  # made the eos below: the plain call stops there, min_length runs past it
    word = t2t.tokenizer.decode([greedy[3]]).strip() or "dog"
    items: list[tuple[str, list[Any], dict[str, Any]]] = [
        ("text2text-generation", [TEXTS[0]], {**GREEDY, "return_tensors": True}),
        ("text2text-generation", [TEXTS[0]], GREEDY),
        ("text2text-generation", [TEXTS[0]], {"num_beams": 3, "max_new_tokens": 16}),
        ("text2text-generation", [TEXTS[1]], {"num_beams": 3, "max_new_tokens": 16, "length_penalty": 0.5,
                                              "early_stopping": True, "num_return_sequences": 2}),
        ("text2text-generation", [TEXTS[0]], {**GREEDY, "repetition_penalty": 1.5}),
        ("text2text-generation", [TEXTS[2]], {"num_beams": 1, "max_new_tokens": 20, "no_repeat_ngram_size": 2}),
        ("text2text-generation", [TEXTS[0]], {**GREEDY, "eos_token_id": reached, "return_tensors": True}),
        ("text2text-generation", [TEXTS[0]], {**GREEDY, "eos_token_id": reached, "min_length": 9, "return_tensors": True}),
        ("text2text-generation", [TEXTS[0]], {"num_beams": 3, "max_new_tokens": 12, "eos_token_id": reached,
                                              "min_new_tokens": 8, "return_tensors": True}),
        ("text2text-generation", [TEXTS[1]], {"num_beams": 1, "max_new_tokens": 8, "forced_bos_token_id": 5,
                                              "forced_eos_token_id": 6, "return_tensors": True}),
        ("text2text-generation", [TEXTS[1]], {"num_beams": 1, "max_new_tokens": 8, "decoder_start_token_id": 7,
                                              "return_tensors": True}),
        ("text2text-generation", [TEXTS[2]], {**GREEDY, "clean_up_tokenization_spaces": True}),
        ("text2text-generation", [TEXTS[0]], {**GREEDY, "stop_sequence": word}),
        # a batch of texts of different lengths: the pipeline runs them one at a time
        ("text2text-generation", [TEXTS], {"num_beams": 1, "max_new_tokens": 12}),
        ("text2text-generation", [TEXTS], {"num_beams": 2, "max_new_tokens": 10, "num_return_sequences": 2,
                                           "return_tensors": True}),
        ("summarization", [TEXTS[2]], {"num_beams": 2, "max_new_tokens": 12}),
        ("translation_en_to_de", [TEXTS[1]], {**GREEDY, "src_lang": "en", "tgt_lang": "de"}),
    ]
    if family.kind == "t5":
        items += [
            # 4.57: the pipeline's max_new_tokens=256 wins over a max_length the model's generation config does not set
            ("text2text-generation", [TEXTS[1]], {"num_beams": 1, "max_length": 10, "return_tensors": True}),
            ("text2text-generation", [" ".join(TEXTS * 30)], {**GREEDY, "truncation": True}),
            # task_specific_params["summarization"]: the prefix, 4 beams, min_length 30, no_repeat_ngram_size 3, ...
            ("summarization", [TEXTS[2]], {}),
            ("summarization", [TEXTS], {"max_new_tokens": 12}),
            ("translation_en_to_de", [TEXTS[2]], {"max_new_tokens": 12}),
            ("translation_en_to_fr", [TEXTS[2]], {**GREEDY, "return_tensors": True}),
            ("translation", [TEXTS[2]], {"max_new_tokens": 12, "return_tensors": True}),  # the first pair: en_to_de
        ]
    return [{"task": task, "args": args, "kwargs": kwargs} for task, args, kwargs in items]


ORACLE: dict[str, tuple[list[dict[str, Any]], list[Any]]] = {}


def oracle(family: Family) -> tuple[list[dict[str, Any]], list[Any]]:
    """The calls and transformers 4.57's results for them, in one run of the oracle per model."""
    if family.kind not in ORACLE:
        cases = calls(family)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        start = time.perf_counter()
        result = subprocess.run([str(optimum_python()), str(ROOT / "tests" / "oracles" / "seq2seq.py"),
                                 str(for_transformers_4(family.folder))],
                                input=json.dumps(cases), capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0:
            pytest.fail(f"the transformers 4.57 oracle failed:\n{result.stderr[-3000:]}")
        ORACLE[family.kind] = (cases, json.loads(result.stdout))
        print(f"oracle {family.kind}: {time.perf_counter() - start:.1f} s")
    return ORACLE[family.kind]


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_token_for_token_parity_with_transformers_4_57(kind, families):
    family = families[kind]
    cases, expected = oracle(family)
    failures = []
    for call, want in zip(cases, expected):
        assert "error" not in want, (call, want)
        start = time.perf_counter()
        got = runtime(family.model, call["task"])(*call["args"], **call["kwargs"])
        print(f"{time.perf_counter() - start:.2f} s {call['task']} {call['kwargs']}")
        if got != want:
            failures.append((call["task"], call["kwargs"], got, want))
    assert not failures, "\n".join(f"{t} {k}:\n  runtime {g}\n  4.57    {w}" for t, k, g, w in failures)
    # a broken runtime cannot pass on a repeated token: the tiny models generate varied ones
    ids = expected[0][0]["generated_token_ids"]
    assert len(set(ids[1:])) >= 5, ids
    # the eos the model reaches stops the plain call; min_length and min_new_tokens run past it
    stopped, longer, beams = (expected[i][0]["generated_token_ids"] for i in (6, 7, 8))
    assert len(stopped) <= 5 < 9 <= len(longer) and len(beams) >= 9


def test_the_calls_ask_what_the_model_config_says(families):
    """The cases above rest on the embedded task_specific_params and the detected task."""
    metadata = rt.read_metadata(families["t5"].model)
    assert metadata["hf_pipeline_task"] == "translation"  # task_specific_params name translation before summarization
    assert rt.read_metadata(families["bart"].model)["hf_pipeline_task"] == "text2text-generation"
    t5 = rt.Runtime(families["t5"].model)
    assert t5._task.prefix == "translate English to German: " and t5._task.pair == "translation_en_to_de"
    summarize = runtime(families["t5"].model, "summarization")
    assert summarize._task.prefix == "summarize: "
    assert summarize._task.model_generation == {"num_beams": 4, "max_new_tokens": 256, "max_length": 200, "min_length": 30,
                                          "no_repeat_ngram_size": 3, "length_penalty": 2.0, "early_stopping": True,
                                          "eos_token_id": 1, "pad_token_id": 0}


# ------------------------------------------------------------------------------------------------------
# Batches, sampling, threads, caching, the forms a model comes in
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_a_batch_gives_what_each_text_gives_alone(kind, families):
    t2t = runtime(families[kind].model, "text2text-generation")
    for options in ({"num_beams": 1, "max_new_tokens": 12, "repetition_penalty": 1.3},
                    {"num_beams": 3, "max_new_tokens": 10, "num_return_sequences": 3, "no_repeat_ngram_size": 2}):
        alone = [t2t(text, return_tensors=True, **options) for text in TEXTS]
        together = t2t(TEXTS, return_tensors=True, **options)
        assert together == (alone if options["num_beams"] > 1 else [a[0] for a in alone])
    small = rt.Runtime(families[kind].model, task="text2text-generation", batch_size=2)
    assert small(TEXTS, **GREEDY) == t2t(TEXTS, **GREEDY)


def test_sampling_is_reproducible_with_a_seed(families):
    t2t = runtime(families["t5"].model, "text2text-generation")
    options = {"do_sample": True, "num_beams": 1, "max_new_tokens": 12, "top_k": 20, "temperature": 1000.0}
    first = t2t(TEXTS[0], seed=3, num_return_sequences=3, return_tensors=True, **options)
    assert first == t2t(TEXTS[0], seed=3, num_return_sequences=3, return_tensors=True, **options)
    assert len({tuple(r["generated_token_ids"]) for r in first}) == 3
    # token ids: a tokenizer trained here (a bare clone) has 200 of the model's 32128 ids, the rest decode to nothing
    assert t2t(TEXTS[0], seed=4, return_tensors=True, **options) != t2t(TEXTS[0], seed=3, return_tensors=True, **options)
    beams = {**options, "num_beams": 2, "num_return_sequences": 2, "seed": 5}
    assert t2t(TEXTS[0], **beams) == t2t(TEXTS[0], **beams)


def test_constraints_hold_in_text_to_text(families):
    """choices and json_schema (the Constraints room; tests/runtime/test_constraints.py has the rest) constrain an
    encoder-decoder's text too, greedy and with beams: T5's SentencePiece and BART's byte-level BPE."""
    words = ["yes", "no", "maybe not"]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}}, "required": ["ok", "n"]}
    for kind in ("t5", "bart"):
        t2t = runtime(families[kind].model, "text2text-generation")
        for options in ({"num_beams": 1}, {"num_beams": 3, "num_return_sequences": 2}):
            records = t2t(TEXTS[0], choices=words, max_new_tokens=12, **options)
            assert all(r["generated_text"] in words and r["truncated"] is False for r in records), records
    [record] = runtime(families["bart"].model, "text2text-generation")(TEXTS[1], json_schema=schema, max_new_tokens=40,
                                                                       num_beams=1)
    assert record["truncated"] is False and json.loads(record["generated_text"])["n"] in (1, 2, 3)


def test_without_the_cache_the_tokens_are_the_same(families):
    t2t = runtime(families["bart"].model, "text2text-generation")
    for options in (GREEDY, {"num_beams": 3, "max_new_tokens": 10, "num_return_sequences": 2}):
        assert t2t(TEXTS[:2], use_cache=False, **options) == t2t(TEXTS[:2], **options)


def test_the_encoder_runs_once_and_the_cross_attention_past_is_computed_once(families, monkeypatch):
    t2t = runtime(families["t5"].model, "text2text-generation")
    sessions = t2t._task.ctx.sessions
    names = {id(session): entry for entry, session in sessions.items()}
    runs: list[tuple[str, list[str]]] = []
    original = rt._Binding.run

    def counting(self, inputs, outputs):
        runs.append((names[id(self.session)], sorted(inputs)))
        return original(self, inputs, outputs)

    monkeypatch.setattr(rt._Binding, "run", counting)
    result = t2t(TEXTS, num_beams=3, max_new_tokens=10, min_new_tokens=10, return_tensors=True)
    entries = [entry for entry, _ in runs]
    # one batch: the encoder once, the first decoder step once, then the step with past per token
    assert entries == ["encoder", "decoder"] + ["decoder_with_past"] * 9
    assert all(len(r["generated_token_ids"]) == 11 for r in result)
    step_inputs = runs[-1][1]
    assert "encoder_hidden_states" not in step_inputs and sum(".encoder." in n for n in step_inputs) == 4


def test_an_export_folder_and_a_file_without_the_layout_key_give_the_same_tokens(families, tmp_path):
    import onnx

    from authoring import embed_metadata

    family = families["t5"]
    expected = runtime(family.model, "summarization")(TEXTS, num_beams=2, max_new_tokens=10)
    # Optimum's folder, its encoder carrying the metadata
    folder = tmp_path / "export"
    shutil.copytree(family.export, folder, ignore=shutil.ignore_patterns("model.onnx*"))
    embed_metadata(folder / "encoder_model.onnx", family.folder, include_vocab=True)
    from_folder = rt.Runtime(folder, task="summarization")
    assert sorted(from_folder._task.ctx.sessions) == ["decoder", "decoder_with_past", "encoder"]
    assert from_folder(TEXTS, num_beams=2, max_new_tokens=10) == expected
    # with only the merged decoder (use_cache_branch), fed empty where a step does not use an input
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        (folder / name).unlink()
    assert rt.Runtime(folder, task="summarization")(TEXTS, num_beams=2, max_new_tokens=10) == expected
    # a one-file model another tool embedded: no hf_graph_layout, the layout read from the graph's names
    model = onnx.load(str(family.model))
    kept = [p for p in model.metadata_props if p.key not in ("hf_graph_layout", "hf_metadata_sha256")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "keyless.onnx"))
    keyless = rt.Runtime(tmp_path / "keyless.onnx", task="summarization")
    assert "hf_graph_layout" not in keyless.metadata
    assert keyless(TEXTS, num_beams=2, max_new_tokens=10) == expected


def test_one_runtime_in_several_threads_gives_what_it_gives_in_one(families):
    t2t = runtime(families["bart"].model, "text2text-generation")
    work = [(text, options) for text in TEXTS for options in (GREEDY, {"num_beams": 3, "max_new_tokens": 10})] * 2
    expected = [t2t(text, **options) for text, options in work]
    results: list[Any] = [None] * len(work)

    def run(i: int) -> None:
        results[i] = t2t(work[i][0], **work[i][1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected


def test_the_command_line_prints_the_pipeline_output(families, capsys):
    code = rt._main([str(families["t5"].model), TEXTS[0], "--task", "summarization", "--options",
                     json.dumps({"num_beams": 1, "max_new_tokens": 6})])
    assert code == 0
    expected = runtime(families["t5"].model, "summarization")(TEXTS[0], num_beams=1, max_new_tokens=6)
    assert json.loads(capsys.readouterr().out) == expected


@pytest.mark.parametrize(("task", "prefix"), [
    ("translation_en_to_de", "translate English to German: "),
    ("translation_en_to_fr", "translate English to French: "),
    ("summarization", "summarize: "),
])
def test_embed_task_overrides_the_detected_one(families, tmp_path, capsys, task, prefix):
    """`embed <export> <model> --task X` writes X into the one file (T5's config alone would make it translation with
    the first pair); the file run without a task runs X."""
    from authoring.cli import main

    family = families["t5"]
    out = tmp_path / "model.onnx"
    assert main(["embed", str(family.export), str(family.folder), "--task", task, "--include-vocab",
                 "--output", str(out)]) == 0
    capsys.readouterr()
    assert rt.read_metadata(out)["hf_pipeline_task"] == task
    model = rt.Runtime(out)
    assert model.task == task and model._task.prefix == prefix
    assert model(TEXTS[0], **GREEDY) == runtime(family.model, task)(TEXTS[0], **GREEDY)


# ------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("task", "args", "options", "error", "message"), [
    ("text2text-generation", [""], {}, rt.InvalidInputError, "text2text-generation got an empty text; pass some text"),
    ("summarization", [["a text", "   "]], {}, rt.InvalidInputError,
     "summarization got an empty text (item 1 of the list); pass some text"),
    ("translation", [3], {}, rt.InvalidInputError, "translation takes a string or a list of strings; got int"),
    ("text2text-generation", ["a text"], {"num_beams": 2, "num_return_sequences": 3}, rt.InvalidInputError,
     "num_return_sequences (3) must be at most num_beams (2)"),
    ("text2text-generation", ["a text"], {"truncation": "yes"}, rt.InvalidInputError,
     "truncation must be True, False, 'longest_first', 'only_first' or 'do_not_truncate'; got 'yes'"),
    ("text2text-generation", ["a text"], {"top_k": 3, "prefix": "x"}, rt.InvalidInputError,
     "text2text-generation does not take 'prefix'"),
])
def test_bad_input_is_refused_naming_what_to_fix(families, task, args, options, error, message):
    with pytest.raises(error) as raised:
        runtime(families["t5"].model, task)(*args, **options)
    assert message in str(raised.value)


def test_a_long_text_past_the_positions_needs_truncation(families):
    bart = runtime(families["bart"].model, "text2text-generation")
    long = " ".join(TEXTS * 12)
    with pytest.raises(rt.InvalidInputError, match=r"the text has \d+ tokens, more than the model's 128 positions; "
                                                   "shorten it or pass truncation=True"):
        bart(long, **GREEDY)
    # token ids: a tokenizer trained here (a bare clone) decodes most of the model's ids to nothing
    assert len(bart(long, truncation=True, return_tensors=True, **GREEDY)[0]["generated_token_ids"]) > 1
    with pytest.raises(rt.InvalidInputError, match=r"the output may grow to 257 tokens \(1 given\), past the model's "
                                                   r"128 positions; lower max_new_tokens \(or max_length\)"):
        bart("a text")  # the pipeline's default of 256 new tokens


def test_a_translation_pair_the_model_has_no_prefix_for(families):
    with pytest.raises(rt.TaskDetectionError) as raised:
        rt.Runtime(families["t5"].model, task="translation_en_to_ja")
    assert str(raised.value) == (
        "translation_en_to_ja: the model's task_specific_params have no entry for it (it has translation_en_to_de, "
        "translation_en_to_fr, translation_en_to_ro); pass one of those as the task")
    with pytest.raises(rt.TaskDetectionError, match="task 'translation_en_ja' is not supported by this runtime"):
        rt.Runtime(families["t5"].model, task="translation_en_ja")


def test_graphs_that_do_not_fit_together_are_refused_naming_them(families, tmp_path):
    from authoring import embed_metadata

    folder = tmp_path / "mixed"
    shutil.copytree(families["t5"].export, folder, ignore=shutil.ignore_patterns("decoder_model_merged.onnx"))
    shutil.copyfile(families["bart"].export / "encoder_model.onnx", folder / "encoder_model.onnx")
    embed_metadata(folder / "encoder_model.onnx", families["t5"].folder, include_vocab=True)
    with pytest.raises(rt.MetadataValidationError) as raised:
        rt.Runtime(folder)
    assert str(raised.value) == (
        "encoder_model.onnx and decoder_model.onnx do not fit together: encoder_model.onnx gives last_hidden_state of "
        "width 32, decoder_model.onnx takes encoder_hidden_states of width 64; are they from the same export?")
    (folder / "encoder_model.onnx").unlink()
    with pytest.raises(rt.MetadataReadError, match="mixed is a directory, not an encoder-decoder export"):
        rt.Runtime(folder)


def test_a_broken_layout_and_a_model_of_one_graph_are_refused(families, bert_embedded, tmp_path):
    import onnx

    model = onnx.load(str(families["t5"].model))
    for prop in model.metadata_props:
        if prop.key == "hf_graph_layout":
            layout = json.loads(prop.value)
            layout["entry_points"]["decoder"]["outputs"]["logits"] = "no_such_output"
            prop.value = json.dumps(layout)
    kept = [p for p in model.metadata_props if p.key != "hf_metadata_sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(rt.MetadataValidationError) as raised:
        rt.Runtime(tmp_path / "broken.onnx")
    assert str(raised.value).startswith("hf_graph_layout of broken.onnx names outputs ['no_such_output'] for the decoder, "
                                        "which the graph does not have")
    with pytest.raises(rt.MetadataValidationError, match=r"summarization needs an encoder-decoder: a file merged from an "
                                                         r"export .* this model has the graphs \['model'\]"):
        rt.Runtime(bert_embedded, task="summarization")
