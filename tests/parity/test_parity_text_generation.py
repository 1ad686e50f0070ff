"""text-generation parity: the runtime on ONNX vs transformers.pipeline("text-generation") (transformers 5, PyTorch)
on the same weights, token for token.

Two tiny random models, GPT-2 (the real gpt2 tokenizer from ../shared/data, else a byte-level BPE trained here)
and a Llama with grouped-query attention (4 heads, 2 key-value heads; a trained byte-level BPE with a chat
template), each exported without a cache (torch.onnx; GPT-2 also without position_ids) and with one (Optimum's
current export and its legacy merged decoder; see generation_models). Greedy decoding is deterministic, so
texts, token ids and nesting must be equal; sampling is checked for reproducibility only (torch's random
numbers cannot be reproduced; its filtering is checked exactly in test_generation_processors).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from generation_models import (
    build_model,
    embedded,
    export_without_cache,
    optimum_exports,
)
from helpers import SHARED
from runtime_under_test import rt

PROMPTS = ["Once upon a time", "Hello world! This is a test of a somewhat longer prompt, with words.", "The"]
GREEDY = {"do_sample": False, "max_new_tokens": 36}


class Family:
    """A model family: its folder, PyTorch model, the transformers pipeline (answers cached) and ONNX files."""

    def __init__(self, name: str, root: Path) -> None:
        import warnings

        from transformers import AutoTokenizer, pipeline

        self.name, self.root = name, root
        self.model = build_model(name, root / "hf")
        self.tokenizer = AutoTokenizer.from_pretrained(root / "hf")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.pipeline = pipeline("text-generation", model=self.model, tokenizer=self.tokenizer, device="cpu")
        self.files = {"nocache": embedded(export_without_cache(self.model, root / "nocache-graph.onnx"), root / "hf", root / "nocache.onnx")}
        if name == "gpt2":
            graph = export_without_cache(self.model, root / "nopositions-graph.onnx", position_ids=False)
            self.files["nopositions"] = embedded(graph, root / "hf", root / "nopositions.onnx")
        self._answers: dict[str, Any] = {}
        self._runtimes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, graphs: dict[str, Path]) -> None:
        for form, graph in graphs.items():
            self.files[form] = embedded(graph, self.root / "hf", self.root / f"{form}.onnx")

    def runtime(self, form: str) -> Any:
        if form not in self._runtimes:
            # one thread: the tiny models gain nothing from more, and the test machine is shared
            self._runtimes[form] = rt.Runtime(self.files[form], intra_op_num_threads=1)
        return self._runtimes[form]

    def expected(self, inputs: Any, **options: Any) -> Any:
        """The pipeline's answer, computed once; a list runs one input at a time, as the pipeline does."""
        import torch

        if isinstance(inputs, list) and not _is_chat(inputs):
            return [self.expected(i, **options) for i in inputs]
        key = json.dumps([inputs, options], sort_keys=True)
        with self._lock:
            if key not in self._answers:
                threads = torch.get_num_threads()
                torch.set_num_threads(1)  # several times faster for these tiny models on a busy machine
                try:
                    self._answers[key] = self.pipeline(inputs, **options)
                finally:
                    torch.set_num_threads(threads)
            return self._answers[key]

    def greedy_ids(self, prompt: str = PROMPTS[0]) -> list[int]:
        """The new token ids of greedy decoding (from the pipeline)."""
        ids = self.expected(prompt, return_tensors=True, **GREEDY)[0]["generated_token_ids"]
        return ids[len(self.tokenizer(prompt)["input_ids"]):]


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory) -> Family:
    return Family("gpt2", tmp_path_factory.mktemp("gen_gpt2"))


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> Family:
    return Family("llama", tmp_path_factory.mktemp("gen_llama"))


@pytest.fixture(scope="session")
def optimum(gpt2, llama) -> None:
    """Both families' Optimum exports (current and legacy merged), in one run of the Optimum environment."""
    families = (gpt2, llama)
    for family, graphs in zip(families, optimum_exports([(f.root / "hf", f.root / "optimum") for f in families])):
        family.add(graphs)


OPTIMUM = pytest.mark.optimum
CASES = [
    pytest.param(("gpt2", "nocache"), id="gpt2-nocache"),
    pytest.param(("gpt2", "nopositions"), id="gpt2-nopositions"),
    pytest.param(("gpt2", "current"), id="gpt2-optimum", marks=OPTIMUM),
    pytest.param(("gpt2", "legacy"), id="gpt2-optimum-merged", marks=OPTIMUM),
    pytest.param(("llama", "nocache"), id="llama-nocache"),
    pytest.param(("llama", "current"), id="llama-optimum", marks=OPTIMUM),
    pytest.param(("llama", "legacy"), id="llama-optimum-merged", marks=OPTIMUM),
]


class Case:
    def __init__(self, request: Any) -> None:
        name, self.form = request.param
        if self.form in ("current", "legacy"):
            request.getfixturevalue("optimum")
        self.family: Family = request.getfixturevalue(name)
        self.runtime = self.family.runtime(self.form)


@pytest.fixture(params=CASES)
def case(request) -> Case:
    return Case(request)


def test_task_is_detected_and_outputs_vary(case):
    metadata = rt.read_metadata(case.family.files[case.form])
    assert metadata[rt.KEY_PIPELINE_TASK] == "text-generation"
    assert case.runtime.task == "text-generation"
    new = case.family.greedy_ids()
    assert len(new) == GREEDY["max_new_tokens"] and len(set(new)) >= 8, new


def test_greedy_matches_pipeline(case):
    for prompt in PROMPTS:
        assert case.runtime(prompt, **GREEDY) == case.family.expected(prompt, **GREEDY)


def test_batch_of_different_lengths_matches_one_at_a_time(case):
    expected = case.family.expected(PROMPTS, **GREEDY)
    assert isinstance(expected[0], list)
    assert case.runtime(PROMPTS, **GREEDY) == expected
    assert case.runtime(PROMPTS[:1], **GREEDY) == case.family.expected(PROMPTS[:1], **GREEDY)  # a list stays a list


def test_beam_search_matches_pipeline(case):
    options = {"do_sample": False, "max_new_tokens": 16, "num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.7}
    assert case.runtime(PROMPTS[:2], **options) == case.family.expected(PROMPTS[:2], **options)


def test_stream_joins_to_the_generated_text(case):
    pieces = list(case.runtime.stream(PROMPTS[1], **GREEDY))
    assert len(pieces) > 1
    assert "".join(pieces) == case.runtime(PROMPTS[1], return_full_text=False, **GREEDY)[0]["generated_text"]


# Options whose parity is checked on each family's Optimum export and no-cache export; each builds its options from
# the family's greedy tokens where it needs tokens the model actually emits.
def _early_index(f: Family) -> int:
    """Where greedy decoding first emits a token it had not emitted before, from the fourth token on."""
    ids = f.greedy_ids()
    return next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])


def _early(f: Family) -> int:
    return f.greedy_ids()[_early_index(f)]


def _stop_string(f: Family) -> str:
    """Three letters the greedy text has after its first tokens."""
    import re

    text = f.tokenizer.decode(f.greedy_ids())
    return re.search(r"[A-Za-z]{3}", text[len(text) // 3:]).group(0)


OPTION_CASES: dict[str, Callable[[Family], dict[str, Any]]] = {
    "repetition_penalty": lambda f: {"repetition_penalty": 1.8},
    "no_repeat_ngram_size": lambda f: {"no_repeat_ngram_size": 2},
    "no_repeat_ngram_size_1": lambda f: {"no_repeat_ngram_size": 1, "max_new_tokens": 20},
    "eos_stops_early": lambda f: {"eos_token_id": _early(f)},
    "min_new_tokens_with_early_eos": lambda f: {"eos_token_id": _early(f), "min_new_tokens": 12},
    "min_length_with_early_eos": lambda f: {"eos_token_id": [_early(f), f.greedy_ids()[9]], "min_length": 14},
    "beams_length_penalty": lambda f: {"num_beams": 4, "length_penalty": 2.0, "eos_token_id": _early(f), "max_new_tokens": 16},
    "beams_early_stopping": lambda f: {"num_beams": 3, "early_stopping": True, "eos_token_id": _early(f), "max_new_tokens": 16},
    "beams_never": lambda f: {"num_beams": 3, "early_stopping": "never", "length_penalty": 1.5, "eos_token_id": _early(f),
                              "max_new_tokens": 16},
    "beams_return_sequences": lambda f: {"num_beams": 4, "num_return_sequences": 4, "eos_token_id": _early(f),
                                         "max_new_tokens": 12, "length_penalty": -0.5},
    "bad_words_ids": lambda f: {"bad_words_ids": [[f.greedy_ids()[2]], f.greedy_ids()[5:7], [f.greedy_ids()[10]]]},
    "suppress_tokens": lambda f: {"suppress_tokens": f.greedy_ids()[4:6], "begin_suppress_tokens": f.greedy_ids()[:1]},
    "forced_eos": lambda f: {"forced_eos_token_id": _early(f), "eos_token_id": _early(f), "max_new_tokens": 10},
    "return_full_text_false": lambda f: {"return_full_text": False},
    "return_tensors": lambda f: {"return_tensors": True},
    "stop_sequence": lambda f: {"stop_sequence": _stop_string(f)},
    "max_length": lambda f: {"max_length": 45, "max_new_tokens": None},
    "max_new_tokens_over_max_length": lambda f: {"max_length": 12, "max_new_tokens": 20},
    "prefix": lambda f: {"prefix": "In short: ", "max_length": 50, "max_new_tokens": None},
    "skip_special_tokens_false": lambda f: {"skip_special_tokens": False, "eos_token_id": _early(f), "min_new_tokens": 5},
}


@pytest.fixture(params=[pytest.param(("gpt2", "current"), id="gpt2-optimum", marks=OPTIMUM),
                        pytest.param(("llama", "current"), id="llama-optimum", marks=OPTIMUM),
                        pytest.param(("gpt2", "nocache"), id="gpt2-nocache")])
def option_case(request) -> Case:
    return Case(request)


@pytest.mark.parametrize("name", list(OPTION_CASES))
def test_option_matches_pipeline(option_case, name):
    options = {**GREEDY, "max_new_tokens": 20, **OPTION_CASES[name](option_case.family)}
    options = {k: v for k, v in options.items() if v is not None}
    for prompt in PROMPTS[:2] if name.startswith(("max_", "prefix")) else PROMPTS[:1]:
        expected = option_case.family.expected(prompt, **options)
        assert option_case.runtime(prompt, **options) == expected, (name, options)
    if name == "stop_sequence":  # it stopped there
        assert options["stop_sequence"] in expected[0]["generated_text"][-12:]


def test_options_change_the_output(gpt2):
    """The option cases do what they say on this model: an early eos stops, min_new_tokens delays it, banned
    words disappear (else the parity above could pass with options ignored)."""
    greedy = gpt2.greedy_ids()
    runtime = gpt2.runtime("nocache")
    stopped = runtime(PROMPTS[0], return_tensors=True, **{**GREEDY, **OPTION_CASES["eos_stops_early"](gpt2)})
    prompt_length = len(gpt2.tokenizer(PROMPTS[0])["input_ids"])
    assert len(stopped[0]["generated_token_ids"]) - prompt_length == _early_index(gpt2) + 1
    delayed = runtime(PROMPTS[0], return_tensors=True, **{**GREEDY, **OPTION_CASES["min_new_tokens_with_early_eos"](gpt2)})
    assert len(delayed[0]["generated_token_ids"]) - prompt_length > 12
    banned = runtime(PROMPTS[0], return_tensors=True, **{**GREEDY, **OPTION_CASES["bad_words_ids"](gpt2)})
    assert greedy[2] not in banned[0]["generated_token_ids"][prompt_length:]


def test_chat_messages_match_pipeline(llama):
    runtime = llama.runtime("nocache")
    chats = [
        [{"role": "user", "content": "Hello there, how are you?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}],
        [{"role": "user", "content": "Continue this"}, {"role": "assistant", "content": "Once upon"}],  # continued
    ]
    for chat in chats:
        for options in (GREEDY, {**GREEDY, "return_full_text": False}):
            assert runtime(chat, **options) == llama.expected(chat, **options)
    assert runtime(chats[:2], **GREEDY) == llama.expected(chats[:2], **GREEDY)
    assert runtime(chats[1], continue_final_message=False, **GREEDY) == llama.expected(chats[1], continue_final_message=False, **GREEDY)
    with pytest.raises(rt.InvalidInputError, match="chat template cannot render.*unknown role"):
        runtime([{"role": "robot", "content": "hi"}], **GREEDY)


def test_chat_without_a_template_is_refused(gpt2):
    with pytest.raises(rt.InvalidInputError, match="no chat template"):
        gpt2.runtime("nocache")([{"role": "user", "content": "hi"}], **GREEDY)


def test_sampling_is_reproducible_with_a_seed(gpt2):
    runtime = gpt2.runtime("nocache")
    options = {"do_sample": True, "max_new_tokens": 24, "top_k": 40, "top_p": 0.95, "temperature": 0.9, "num_return_sequences": 3}
    first = runtime(PROMPTS[:2], seed=7, **options)
    assert runtime(PROMPTS[:2], seed=7, **options) == first
    assert runtime(PROMPTS[:2], seed=8, **options) != first
    texts = [r["generated_text"] for r in first[0]]
    assert len(set(texts)) == 3  # the sequences of one prompt are drawn independently
    assert runtime(PROMPTS[0], seed=1, do_sample=True, num_beams=3, max_new_tokens=12) == \
        runtime(PROMPTS[0], seed=1, do_sample=True, num_beams=3, max_new_tokens=12)


def test_defaults_are_the_pipelines(gpt2):
    task = gpt2.runtime("nocache")._task
    options = task.check_options({})
    config = task.config(options)
    # TextGenerationPipeline's defaults over GenerationConfig's, the model's eos
    assert (config.do_sample, config.temperature, config.top_k, config.max_new_tokens) == (True, 0.7, 50, 256)
    assert config.eos_token_id == (gpt2.tokenizer.eos_token_id,)
    assert options["return_full_text"] is None and options["skip_special_tokens"] is True
    greedy = task.config(task.check_options({"do_sample": False}))
    assert greedy.temperature == 1.0  # the pipeline's temperature only applies when sampling
    result = gpt2.runtime("nocache")(PROMPTS[0], max_new_tokens=5, seed=0)
    assert result[0]["generated_text"].startswith(PROMPTS[0])


def test_threads_give_sequential_results(gpt2):
    runtime = gpt2.runtime("nocache")
    jobs = [(PROMPTS[i % 3], {**GREEDY, "max_new_tokens": 12 + i}) for i in range(4)] + \
           [(PROMPTS[i % 3], {"do_sample": True, "seed": i, "max_new_tokens": 12, "top_p": 0.9}) for i in range(3)] + \
           [(PROMPTS[:2], {"do_sample": False, "num_beams": 2, "max_new_tokens": 10})]
    sequential = [runtime(p, **o) for p, o in jobs]
    results: list[Any] = [None] * len(jobs)

    def work(i: int) -> None:
        results[i] = runtime(jobs[i][0], **jobs[i][1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == sequential


@pytest.mark.parametrize("options, message", [
    ({"num_beams": 2, "num_return_sequences": 3}, r"num_return_sequences \(3\) must be at most num_beams \(2\)"),
    ({"do_sample": False, "num_return_sequences": 2}, "num_return_sequences=2 needs do_sample=True or num_beams >= 2"),
    ({"top_p": 0.0}, r"top_p must be a number in \(0.0, 1.0\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0.0, 1.0\], got 1.5"),
    ({"temperature": -1.0}, r"temperature must be a number in \[0.0, inf\), got -1.0"),
    ({"temperature": 0, "do_sample": True}, "temperature must be > 0 when do_sample=True"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer, got 0"),
    ({"num_beams": 1.5}, "num_beams must be a positive integer, got 1.5"),
    ({"eos_token_id": "x"}, "eos_token_id must be a list of token ids"),
    ({"bad_words_ids": [1, 2]}, "bad_words_ids must be a non-empty list of non-empty lists"),
    ({"early_stopping": "always"}, "early_stopping must be True, False or 'never'"),
    ({"do_sample": "yes"}, "do_sample must be True or False"),
    ({"stop_sequence": ""}, "stop_sequence must be a non-empty string"),
    ({"handle_long_generation": "cut"}, "handle_long_generation must be None or 'hole'"),
    ({"return_full_text": True, "return_tensors": True}, "return_full_text is mutually exclusive with return_tensors"),
    ({"top_kk": 3}, "text-generation does not take 'top_kk'"),
    ({"bad_words_ids": [[10**7]], "do_sample": False}, "bad_words_ids has token ids outside the model's"),
])
def test_bad_options_are_refused_naming_the_option(gpt2, options, message):
    with pytest.raises(rt.InvalidInputError, match=message):
        gpt2.runtime("nocache")(PROMPTS[0], **{"max_new_tokens": 4, **options})


def test_bad_inputs_are_refused(gpt2):
    runtime = gpt2.runtime("nocache")
    for bad in (3, [1, 2], None, {"text": "x"}):
        with pytest.raises(rt.InvalidInputError, match="text-generation takes a string, chat messages"):
            runtime(bad, **GREEDY)
    with pytest.raises(rt.InvalidInputError, match="stream\\(\\) yields the text of one sequence: pass num_beams=1"):
        runtime.stream(PROMPTS[0], num_beams=2)
    with pytest.raises(rt.InvalidInputError, match="stream\\(\\) takes one prompt"):
        runtime.stream(PROMPTS, **GREEDY)
    assert runtime([], **GREEDY) == []


def test_prompt_past_the_positions_is_refused_or_cut_as_the_pipeline_does(gpt2):
    runtime = gpt2.runtime("nocache")
    long_prompt = "hello world " * 300
    length = len(gpt2.tokenizer(long_prompt)["input_ids"])
    assert length > 500
    with pytest.raises(rt.InvalidInputError, match=rf"the output may grow to {length + 30} tokens \({length} given\), past "
                                                   "the model's 512 positions; .*handle_long_generation='hole'"):
        runtime(long_prompt, do_sample=False, max_new_tokens=30)
    options = {"do_sample": False, "max_new_tokens": 30, "handle_long_generation": "hole"}
    assert runtime(long_prompt, **options) == gpt2.expected(long_prompt, **options)


def test_cli_prints_tokens_as_they_come(gpt2, capsys):
    options = json.dumps({"do_sample": False, "max_new_tokens": 12})
    assert rt._main([str(gpt2.files["nocache"]), PROMPTS[0], "--options", options]) == 0
    printed = capsys.readouterr().out
    assert printed == gpt2.expected(PROMPTS[0], do_sample=False, max_new_tokens=12)[0]["generated_text"] + "\n"
    assert rt._main([str(gpt2.files["nocache"]), PROMPTS[0], "--options", json.dumps({"do_sample": False, "max_new_tokens": 4,
                                                                                       "num_beams": 2})]) == 0
    assert json.loads(capsys.readouterr().out) == gpt2.expected(PROMPTS[0], do_sample=False, max_new_tokens=4, num_beams=2)


@pytest.mark.optimum
def test_fp16_past_gives_the_tokens_of_a_recomputed_sequence(gpt2, optimum, tmp_path):
    """An fp16 graph (Optimum's export cast to float16, past and logits included): the empty past has the graph's
    dtype, and generating with the cache gives the tokens recomputing the whole sequence gives."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from authoring import embed_metadata

    model = convert_float_to_float16(onnx.load(gpt2.files["current"]), keep_io_types=False)
    onnx.save(model, tmp_path / "fp16-graph.onnx")
    embed_metadata(tmp_path / "fp16-graph.onnx", gpt2.root / "hf", tmp_path / "fp16.onnx", include_vocab=True)
    runtime = rt.Runtime(tmp_path / "fp16.onnx")
    assert runtime._task.step.past_dtype == "float16"
    cached = runtime(PROMPTS[:2], **GREEDY)
    assert cached == runtime(PROMPTS[:2], use_cache=False, **GREEDY)
    assert len(set(cached[0][0]["generated_text"].split())) > 3


ORT_GPT2 = "hf-internal-testing__tiny-random-gpt2__ort-genai"


def test_onnxruntime_gpt2_with_stacked_past_matches_recomputing(tmp_path):
    """onnxruntime's GPT-2 export (stacked past_N [2, batch, heads, sequence, head_dim], int32 inputs): generating
    with the cache gives the tokens that feeding the whole sequence each step (use_cache=False) gives."""
    from generation_models import byte_level_bpe
    from transformers import GPT2Config, PreTrainedTokenizerFast

    from authoring import embed_metadata

    source = SHARED / ORT_GPT2 / "past.onnx"
    if not source.exists():
        pytest.skip(f"{source} is absent (real files live in ../shared/data beside the repository)")
    folder = tmp_path / "hf"
    genai = json.loads((SHARED / ORT_GPT2 / "genai_config.json").read_text())["model"]
    GPT2Config(vocab_size=1000, n_embd=32, n_layer=5, n_head=4, n_positions=512, bos_token_id=genai["bos_token_id"],
               eos_token_id=genai["eos_token_id"], architectures=["GPT2LMHeadModel"]).save_pretrained(folder)
    tokenizer = byte_level_bpe(["<|endoftext|>"], vocab_size=900)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", model_max_length=512).save_pretrained(folder)
    metadata = embed_metadata(source, folder, tmp_path / "past.onnx", include_vocab=True)
    assert metadata[rt.KEY_PIPELINE_TASK] == "text-generation"
    runtime = rt.Runtime(tmp_path / "past.onnx")
    assert runtime._task.step.past_shape == (2, 1, 4, 0, 8) and runtime._task.step.int_types["input_ids"] == "int32"
    for options in (GREEDY, {"do_sample": False, "max_new_tokens": 20, "num_beams": 3, "num_return_sequences": 2}):
        cached = runtime(PROMPTS, return_tensors=True, **options)
        assert cached == runtime(PROMPTS, return_tensors=True, use_cache=False, **options)
        assert cached == [runtime(p, return_tensors=True, **options) for p in PROMPTS]
    new = cached[0][0]["generated_token_ids"]
    assert len(set(new)) > 5


def test_a_graph_of_another_task_is_refused(bert_embedded):
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(bert_embedded, task="text-generation")
    assert str(info.value) == (
        "text generation feeds input_ids, optional attention_mask, position_ids, use_cache_branch and past key values "
        "(past_key_values.N.key/value or past_N); the graph takes ['input_ids', 'attention_mask', 'token_type_ids']; was it "
        "exported for another task?")
