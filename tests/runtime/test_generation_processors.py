"""The generation section's parts against transformers' own: each logits processor and warper against its
LogitsProcessor class on fixed random scores (to 1e-6, banned tokens exactly), their composition against
model._get_logits_processor, the filtering against a direct numpy computation, sampling's seed, stop strings
against StopStringCriteria, the streaming holdback against TextStreamer, and option resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from generation_models import (
    byte_level_bpe,
    gpt2_tokenizer_folder,
    llama_tokenizer_folder,
)
from helpers import SHARED, bert_tokenizer_folder
from runtime_under_test import rt

ROWS, VOCAB = 4, 60


def scores(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(ROWS, VOCAB)) * 3).astype(np.float32)


def ids(seed: int = 1, length: int = 12, high: int = 8) -> np.ndarray:
    """Token ids with repeats (a small range), so n-grams and penalties have something to do."""
    return np.random.default_rng(seed).integers(0, high, size=(ROWS, length))


def theirs(processor: Any, input_ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    import torch

    return processor(torch.tensor(input_ids), torch.tensor(x)).numpy()


def same(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert (np.isneginf(a) == np.isneginf(b)).all()


def no_pad(rows: int = ROWS) -> np.ndarray:
    return np.zeros(rows, dtype=np.int64)


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty(penalty):
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor as Theirs,
    )

    x, i = scores(), ids(high=70)  # ids past the vocabulary go to the spare column, as in transformers
    same(rt._RepetitionPenalty(penalty, no_pad())(i, x.copy()), theirs(Theirs(penalty), i, x))
    pad = np.array([0, 3, 1, 11])
    import torch

    same(rt._RepetitionPenalty(penalty, pad)(i, x.copy()), theirs(Theirs(penalty, prompt_ignore_length=torch.tensor(pad)), i, x))


@pytest.mark.parametrize("size", [1, 2, 3, 13])
def test_no_repeat_ngram(size):
    from transformers.generation.logits_process import (
        NoRepeatNGramLogitsProcessor as Theirs,
    )

    for seed in range(3):
        x, i = scores(seed), ids(seed, high=5 if seed else 70)
        same(rt._NoRepeatNGram(size)(i, x.copy()), theirs(Theirs(size), i, x))


def test_bad_words():
    from transformers.generation.logits_process import (
        NoBadWordsLogitsProcessor as Theirs,
    )

    for seed in range(3):
        x, i = scores(seed), ids(seed)
        banned = [[3], [int(i[0, -1]), 5], [int(i[1, -2]), int(i[1, -1]), 7], [9], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]]
        for eos in (None, 9, [9, 3]):
            same(rt._BadWords(banned, [] if eos is None else [eos] if isinstance(eos, int) else eos)(i, x.copy()),
                 theirs(Theirs(banned, eos), i, x))


def test_min_length_and_min_new_tokens():
    from transformers.generation.logits_process import (
        MinLengthLogitsProcessor,
        MinNewTokensLengthLogitsProcessor,
    )

    x, i = scores(), ids()
    for minimum in (5, 12, 13, 20):
        for eos in ([4], [4, 59, 61]):
            ours = rt._MinLength(np.full(ROWS, minimum), eos, no_pad())(i, x.copy())
            same(ours, theirs(MinLengthLogitsProcessor(minimum, eos), i, x))
            same(ours, theirs(MinNewTokensLengthLogitsProcessor(2, minimum - 2, eos), i, x))
    # per row: padding does not count, as each prompt alone would have it
    pad = np.array([0, 2, 5, 0])
    ours = rt._MinLength(np.array([12, 12, 12, 13]), [4], pad)(i, x.copy())
    for row in range(ROWS):
        alone = MinLengthLogitsProcessor(12 if row < 3 else 13, [4])
        same(ours[row: row + 1], theirs(alone, i[row: row + 1, pad[row]:], x[row: row + 1]))


def test_forced_tokens_and_suppression():
    from transformers.generation import logits_process as lp

    x = scores()
    one, eleven = ids(length=1), ids(length=11)
    same(rt._ForcedTokens([7], np.ones(ROWS, dtype=np.int64), no_pad())(one, x.copy()), theirs(lp.ForcedBOSTokenLogitsProcessor(7), one, x))
    same(rt._ForcedTokens([7], np.ones(ROWS, dtype=np.int64), no_pad())(eleven, x.copy()), x)
    for eos in ([3], [3, 8]):
        forced = rt._ForcedTokens(eos, np.full(ROWS, 11), no_pad())
        same(forced(eleven, x.copy()), theirs(lp.ForcedEOSTokenLogitsProcessor(12, eos), eleven, x))
        same(forced(ids(length=10), x.copy()), x)
    same(rt._SuppressTokens([1, 5, 70])(eleven, x.copy()), theirs(lp.SuppressTokensLogitsProcessor([1, 5, 70]), eleven, x))
    for begin in (11, 12):
        ours = rt._SuppressTokens([0, 2], np.full(ROWS, begin), no_pad())(eleven, x.copy())
        same(ours, theirs(lp.SuppressTokensAtBeginLogitsProcessor([0, 2], begin), eleven, x))


@pytest.mark.parametrize("keep", [1, 3])
def test_warpers(keep):
    from transformers.generation import logits_process as lp

    i = ids()
    for seed in range(4):
        x = scores(seed)
        x[0, :5] = x[0, 5]  # ties
        x[1, 10:] = -np.inf  # already filtered
        same(rt._Temperature(0.6)(i, x.copy()), theirs(lp.TemperatureLogitsWarper(0.6), i, x))
        for k in (1, 5, 59, 100):
            same(rt._TopK(k, keep)(i, x.copy()), theirs(lp.TopKLogitsWarper(k, min_tokens_to_keep=keep), i, x))
        for p in (0.05, 0.3, 0.9, 0.999):
            same(rt._TopP(p, keep)(i, x.copy()), theirs(lp.TopPLogitsWarper(p, min_tokens_to_keep=keep), i, x))
        for mass in (0.2, 0.5, 0.95):
            same(rt._Typical(mass, keep)(i, x.copy()), theirs(lp.TypicalLogitsWarper(mass, min_tokens_to_keep=keep), i, x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def test_filtering_against_a_direct_numpy_computation():
    """The kept tokens of each warper, computed directly on fixed scores, one row at a time."""
    x = scores(5)
    for row in x:
        order = np.argsort(-row)
        # top-k: the k best
        kept = rt._TopK(7, 1)(ids()[:1], row[None].copy())[0] > -np.inf
        assert set(np.flatnonzero(kept)) == set(order[:7])
        # top-p: the likeliest tokens until their probability reaches p
        p = softmax(row)
        count = int(np.searchsorted(np.cumsum(p[order]), 0.8) + 1)
        kept = rt._TopP(0.8, 1)(ids()[:1], row[None].copy())[0] > -np.inf
        assert set(np.flatnonzero(kept)) == set(order[:count])
        # typical: by |-log p - entropy|, until the mass
        entropy = -(p * np.log(p)).sum()
        typical = np.argsort(np.abs(-np.log(p) - entropy), kind="stable")
        count = int(np.searchsorted(np.cumsum(p[typical]), 0.6, side="right") + 1)
        kept = rt._Typical(0.6, 1)(ids()[:1], row[None].copy())[0] > -np.inf
        assert set(np.flatnonzero(kept)) == set(typical[:count])
        # temperature: scores divided
        np.testing.assert_allclose(rt._Temperature(0.5)(ids()[:1], row[None].copy())[0], row / 0.5, rtol=1e-6)


def test_sampling_draws_from_the_distribution_and_a_seed_repeats_it():
    x = np.log(np.array([[0.1, 0.2, 0.3, 0.4, 0.0]], dtype=np.float32))
    draws = np.concatenate([rt._draw(np.repeat(x, 1000, axis=0), np.random.default_rng(s)) for s in range(20)])
    frequencies = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4, 0.0], atol=0.015)
    assert (rt._draw(scores(), np.random.default_rng(3)) == rt._draw(scores(), np.random.default_rng(3))).all()
    first = rt._draw_without_replacement(np.repeat(x, 20000, axis=0), 2, np.random.default_rng(0))
    assert (first[:, 0] != first[:, 1]).all() and (first != 4).all()
    np.testing.assert_allclose(np.bincount(first[:, 0], minlength=5) / len(first), [0.1, 0.2, 0.3, 0.4, 0.0], atol=0.015)
    with pytest.raises(rt.InvalidInputError, match="every token was filtered out"):
        rt._draw(np.full((1, 5), -np.inf, dtype=np.float32), np.random.default_rng(0))


@pytest.fixture(scope="module")
def tiny_gpt2() -> Any:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=4)).eval()


EVERYTHING = {
    "do_sample": True, "repetition_penalty": 1.4, "no_repeat_ngram_size": 2, "bad_words_ids": [[3], [1, 2]],
    "min_new_tokens": 3, "forced_bos_token_id": 6, "forced_eos_token_id": 4, "suppress_tokens": [7, 8],
    "begin_suppress_tokens": [9], "temperature": 0.8, "top_k": 20, "top_p": 0.9, "typical_p": 0.95,
    "eos_token_id": 4, "max_new_tokens": 6,
}


def test_composed_in_transformers_order(tiny_gpt2):
    """The processors for options that turn everything on, against model._get_logits_processor: the same kinds
    in the same order, and the same scores at each step of a generation."""
    import torch
    from transformers import GenerationConfig

    prompt = ids(length=1)
    config = rt._generation_config({}, EVERYTHING, {})
    rows = rt._prompts(prompt.tolist(), config, 0, None)
    ours = rt._logits_processors(config, rows, np.arange(ROWS))
    generation = GenerationConfig(**{k: v for k, v in EVERYTHING.items()})
    generation.max_length, generation.min_length = 1 + 6, 1 + 3  # as generate's _prepare_generated_length sets them
    tiny_gpt2._prepare_special_tokens(generation, device="cpu")
    reference = tiny_gpt2._get_logits_processor(generation, input_ids_seq_length=1, encoder_input_ids=torch.tensor(prompt),
                                                device="cpu", model_kwargs={})
    names = [type(p).__name__ for p in reference]
    assert names == ["RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor", "NoBadWordsLogitsProcessor",
                     "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "ForcedBOSTokenLogitsProcessor",
                     "ForcedEOSTokenLogitsProcessor", "SuppressTokensLogitsProcessor", "SuppressTokensAtBeginLogitsProcessor",
                     "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "TypicalLogitsWarper"]
    # ours folds MinNewTokens into MinLength (one per-row minimum)
    assert [type(p).__name__ for p in ours] == ["_RepetitionPenalty", "_NoRepeatNGram", "_BadWords", "_MinLength", "_ForcedTokens",
                                                "_ForcedTokens", "_SuppressTokens", "_SuppressTokens", "_Temperature", "_TopK",
                                                "_TopP", "_Typical"]
    sequence = prompt
    for step in range(6):
        x = scores(step)
        expected = theirs(reference, sequence, x)
        got = x.copy()
        for processor in ours:
            got = processor(sequence, got)
        same(got, expected)
        sequence = np.concatenate([sequence, ids(step, length=1)], axis=1)


def test_options_resolve_as_the_pipeline_and_generate_do():
    defaults = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7, "pad_token_id": 0}
    config = rt._generation_config({"eos_token_id": 2}, {}, defaults)
    assert (config.do_sample, config.temperature, config.max_new_tokens, config.top_k, config.eos_token_id) == (True, 0.7, 256, 50, (2,))
    # the model's generation config beats the task's defaults, the caller beats both; None means unset
    config = rt._generation_config({"do_sample": False, "max_length": 40}, {"num_beams": None}, defaults)
    assert (config.do_sample, config.temperature, config.max_new_tokens, config.max_length, config.num_beams) == (False, 1.0, None, 40, 1)
    config = rt._generation_config({"do_sample": False}, {"do_sample": True, "max_length": 30}, defaults)
    assert (config.do_sample, config.temperature, config.max_new_tokens) == (True, 0.7, None)
    assert rt._generation_config({}, {"early_stopping": "never"}, {}).early_stopping == "never"
    # lengths per row: max_new_tokens over max_length, the default capped at the positions
    rows = rt._prompts([[1, 2, 3], [4]], rt._generation_config({}, {"max_length": 10, "max_new_tokens": 5}, {}), 0, None)
    assert rows.max_lengths.tolist() == [8, 6] and rows.pad.tolist() == [0, 2] and rows.ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    rows = rt._prompts([[1, 2, 3], [4]], rt._generation_config({}, {"max_length": 10, "min_new_tokens": 2}, {}), 0, None)
    assert rows.max_lengths.tolist() == [10, 10] and rows.min_lengths.tolist() == [5, 3]
    assert rt._prompts([[1] * 10], rt._generation_config({}, {}, {}), 0, 25).max_lengths.tolist() == [25]
    with pytest.raises(rt.InvalidInputError, match="the input has 10 tokens but max_length is 10"):
        rt._prompts([[1] * 10], rt._generation_config({}, {"max_length": 10}, {}), 0, None)


def test_the_model_generation_config_is_checked():
    assert rt._model_generation_defaults({"top_k": 5, "transformers_version": "5", "_from_model_config": True}, {}) == {"top_k": 5}
    assert rt._model_generation_defaults(None, {"eos_token_id": 3, "hidden_size": 8, "max_length": None}) == {"eos_token_id": 3}
    with pytest.raises(rt.MetadataValidationError, match="the embedded generation config is wrong: top_p must be"):
        rt._model_generation_defaults({"top_p": 2.0}, {})
    with pytest.warns(UserWarning, match="the generation config sets epsilon_cutoff, which this runtime does not apply"):
        rt._model_generation_defaults({"epsilon_cutoff": 0.1}, {})


# --- stop strings and streaming need tokenizers: the real gpt2 and t5 ones when ../shared is present -------------

def text_tokenizer(folder_fn: Any, folder: Path) -> tuple[Any, Any]:
    """(transformers tokenizer, runtime TextTokenizer) of a tokenizer folder."""
    from transformers import AutoTokenizer

    folder_fn(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ours = rt.TextTokenizer(tokenizer.backend_tokenizer.to_str(), dict(tokenizer.init_kwargs, chat_template=None), 512)
    return tokenizer, ours


def t5_folder(folder: Path) -> None:
    from transformers import AutoTokenizer

    source = SHARED / "t5-small"
    if not source.exists():
        pytest.skip(f"{source} is absent (real files live in ../shared/data beside the repository)")
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)


FOLDERS = {"gpt2": gpt2_tokenizer_folder, "llama-bpe": llama_tokenizer_folder, "bert": bert_tokenizer_folder, "t5": t5_folder}
TEXT = ("Once upon a time, the robot said: stop! Then it stopped... naïve café — 東京 the dog stops; STOP the quick "
        "brown fox jumps\nnew lines stop here")


@pytest.mark.parametrize("family", list(FOLDERS))
def test_stop_strings_match_stop_string_criteria(family, tmp_path):
    import torch
    from transformers.generation.stopping_criteria import StopStringCriteria

    tokenizer, ours = text_tokenizer(FOLDERS[family], tmp_path / family)
    token_ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    for strings in (["stop"], ["op! Th", "dog"], ["é"], ["\nnew", "東京"], [" the"], ["s"]):
        try:
            criteria = StopStringCriteria(tokenizer, strings)
        except ValueError:  # no token of the vocabulary can end the string (bert drops accents)
            continue
        matcher = rt._StopStrings(strings, rt._TokenText(ours))
        expected = [bool(criteria(torch.tensor([token_ids[:n]]), None)[0]) for n in range(1, len(token_ids) + 1)]
        got = [matcher(np.array(token_ids[:n])) for n in range(1, len(token_ids) + 1)]
        assert got == expected, (strings, [tokenizer.decode(token_ids[:n]) for n, (a, b) in enumerate(zip(got, expected), 1) if a != b])
        assert any(expected) or strings != ["stop"]


def split_characters_folder(folder: Path) -> None:
    """A byte-level BPE too small to hold the multi-byte characters whole: they come as several byte tokens."""
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(["<|endoftext|>"], vocab_size=300),
                            eos_token="<|endoftext|>").save_pretrained(folder)


@pytest.mark.parametrize("family", ["split-characters", "bert", "gpt2"])
def test_streaming_holds_back_like_text_streamer(family, tmp_path):
    """Token by token, the runtime's streamer lets out exactly the pieces transformers' TextStreamer prints:
    incomplete characters (U+FFFD) and words wait; the pieces join to the decoded text."""
    import torch
    from transformers import TextStreamer

    folder_fn = {"split-characters": split_characters_folder, "bert": bert_tokenizer_folder, "gpt2": gpt2_tokenizer_folder}[family]
    tokenizer, ours = text_tokenizer(folder_fn, tmp_path / family)
    token_ids = tokenizer(TEXT + " 日本語 crème brûlée done", add_special_tokens=False)["input_ids"]
    if family == "split-characters":
        assert any("\ufffd" in tokenizer.decode(token_ids[:n]) for n in range(len(token_ids)))

    class Recorder(TextStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.pieces: list[str] = []

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.pieces.append(text)

    reference = Recorder()
    reference.put(torch.tensor([[1]]))  # the prompt, skipped
    streamer = rt._TextStreamer(lambda i: ours.decode(i, skip_special_tokens=True))
    got = []
    for token in token_ids:
        reference.put(torch.tensor([[token]]))
        got.append(streamer.put([token]))
    reference.end()
    got.append(streamer.end())
    assert got == reference.pieces
    assert "".join(got) == ours.decode(token_ids, skip_special_tokens=True)
    assert sum(1 for p in got if p) > 5
