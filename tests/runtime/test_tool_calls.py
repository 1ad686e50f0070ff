"""Tool calls in text generation: tools reach the chat template as transformers' apply_chat_template(tools=...) gives
them (Qwen 2.5 / Hermes, Llama 3.1 and Mistral templates, token for token, and the generated chats equal to
transformers.pipeline's with tools=), the model's answer parsed back into tool_calls in each format (Hermes against
transformers' own parse_response with the Qwen response template), and tool_choice="required" or a named tool
constraining generation to a valid call: seeded samples on a tiny random model all parse and validate against the
tool's parameters (jsonschema)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import tool_models
from runtime_under_test import rt
from tool_models import ADD, BOUNDED, TOOLS, WEATHER

jsonschema = pytest.importorskip("jsonschema")

FORMATS = ["qwen", "llama", "mistral"]
CHATS = [
    [{"role": "user", "content": "What is the weather in Paris?"}],
    [{"role": "system", "content": "You are a robot."}, {"role": "user", "content": "Add 2 and 3, please."}],
]
# a finished exchange: the assistant's call (arguments as a dict, as transformers' templates read them), the tool's result
HISTORY = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "22 degrees and sunny"},
    {"role": "user", "content": "And in Berlin?"},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return tool_models.build(tmp_path_factory.mktemp("tools"))


@pytest.fixture(scope="module")
def runtimes(files) -> dict[str, Any]:
    return {name: rt.Runtime(path, intra_op_num_threads=1) for name, path in files.items()}


@pytest.fixture(scope="module")
def pipelines(files) -> dict[str, Any]:
    """transformers.pipeline("text-generation") on each file's model folder (the same weights)."""
    from transformers import AutoModelForCausalLM, pipeline

    out = {}
    for name in FORMATS:
        folder = files[name].parent / "hf"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[name] = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(folder),
                                 tokenizer=tool_models.read_tokenizer(files[name]), device="cpu")
    return out


# ------------------------------------------------------------------------------------------------------
# Tools in the chat template
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FORMATS)
def test_tools_reach_the_template_as_apply_chat_template_gives_them(files, runtimes, name):
    tokenizer, task = tool_models.read_tokenizer(files[name]), runtimes[name]._task
    prompts = []
    for chat in [*CHATS, HISTORY]:
        for tools in (TOOLS, [ADD], [WEATHER["function"]]):  # OpenAI tools, and a bare JSON-schema function
            ids = task.preprocess([chat], task.check_options({"tools": tools})).prompts[0].ids
            expected = tokenizer.apply_chat_template(chat, tools=tools, add_generation_prompt=True, tokenize=True)
            assert ids == list(expected["input_ids"])
            prompts.append(tuple(ids))
    assert len(set(prompts)) == len(prompts)  # every chat and tool list renders differently
    without = task.preprocess([CHATS[0]], task.check_options({})).prompts[0].ids
    assert task.preprocess([CHATS[0]], task.check_options({"tools": TOOLS, "tool_choice": "none"})).prompts[0].ids == without
    assert without == list(tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=True)["input_ids"])


@pytest.mark.parametrize("name", FORMATS)
def test_chats_with_tools_match_the_pipeline(runtimes, pipelines, name):
    """The random model calls no tool: the chat comes back as the pipeline's, the answer as content."""
    answers = []
    for chat in CHATS:
        options = {"do_sample": False, "max_new_tokens": 16}
        expected = pipelines[name](chat, tools=TOOLS, **options)
        assert runtimes[name](chat, tools=TOOLS, **options) == expected
        answers.append(expected[0]["generated_text"][-1]["content"])
    assert len(set(answers)) == len(answers)


def test_the_format_is_read_from_the_template(runtimes):
    formats = {name: (r._task.tool_format and r._task.tool_format.name) for name, r in runtimes.items()}
    assert formats == {"qwen": "hermes", "llama": "llama3", "mistral": "mistral", "plain": None}
    later = "{% for m in messages %}{% if m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls[0].function.name }}[ARGS]" \
            "{{ m.tool_calls[0].function.arguments | tojson }}{% endif %}{% endfor %}{{ tools }}"
    assert rt._tool_format(later) == rt._ToolFormat("mistral", "[TOOL_CALLS]", "[TOOL_CALLS]", "")
    assert rt._tool_format("{{ messages }} <tool_call>") is None  # a template that reads no tools


# ------------------------------------------------------------------------------------------------------
# Parsing each format
# ------------------------------------------------------------------------------------------------------

def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


HERMES = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
    "No tools needed: 2 + 3 = 5.",
    '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": [1, {"c": "</tool"}]}}\n</tool_call>',
]


@pytest.mark.parametrize("text", HERMES)
def test_hermes_parse_matches_transformers_parse_response(text):
    from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS
    from transformers.utils.chat_parsing.response_parser import parse_response

    qwen = next(t for models, t in _RESPONSE_TEMPLATE_FALLBACKS.items() if "qwen2" in models)
    expected = parse_response(text + "<|im_end|>", qwen, prefix="")
    content, calls = rt._tool_format(tool_models.QWEN_TEMPLATE).parse(text)
    assert {"role": "assistant", **({"content": content} if content else {}), **({"tool_calls": calls} if calls else {})} \
        == expected


PARSED = [
    ("qwen", '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}\n</tool_call>', "", [call("add", a=1, b=2)]),
    ("qwen", '<tool_call>\n{"name": "add", "arguments": {"a": 1}}', "", [call("add", a=1)]),  # cut before its end tag
    ("qwen", "<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", []),
    ("llama", '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [call("get_weather", city="Paris")]),
    ("llama", '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}', "", [call("add", a=1, b=2)]),
    ("llama", '{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "get_weather", "parameters": {"city": "a;b"}}', "",
     [call("add", a=1, b=2), call("get_weather", city="a;b")]),
    ("llama", '{"a": 1} is a JSON object', '{"a": 1} is a JSON object', []),
    ("llama", "The weather is fine.", "The weather is fine.", []),
    ("mistral", '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}]', "", [call("add", a=1, b=2)]),
    ("mistral", 'Sure. [TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", '
                '"arguments": {"city": "Rome"}}]', "Sure.", [call("add", a=1, b=2), call("get_weather", city="Rome")]),
    ("mistral", '[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}', "",
     [call("add", a=1, b=2), call("get_weather", city="Rome")]),
    ("mistral", "[TOOL_CALLS] [{broken", "[TOOL_CALLS] [{broken", []),
]


@pytest.mark.parametrize(("name", "text", "content", "calls"), PARSED)
def test_each_format_parses_its_calls(name, text, content, calls):
    assert rt._tool_format(tool_models.TEMPLATES[name]).parse(text) == (content, calls)


@pytest.mark.parametrize("name", FORMATS)
def test_special_tokens_end_the_answer_and_leave_the_content(runtimes, name):
    """split_calls reads text decoded with special tokens: the end of turn dropped, [TOOL_CALLS] and <|python_tag|>
    read, the others kept out of the content."""
    task = runtimes[name]._task
    text, end = {"qwen": ('Hi <|im_start|>\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>', "<|im_end|>"),
                 "llama": ('<|python_tag|>{"name": "add", "parameters": {"a": 1}}', "<|eot_id|>"),
                 "mistral": ('Hi [INST][TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}}]', "</s>")}[name]
    content, calls = task.split_calls(text + end + "</s></s>")
    assert calls == [call("add", a=1)] and content == ("" if name == "llama" else "Hi")


# ------------------------------------------------------------------------------------------------------
# tool_choice: a forced call
# ------------------------------------------------------------------------------------------------------

def assert_valid_call(message: dict[str, Any], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message holds one call of one of the tools, its arguments valid for that tool's parameters."""
    assert message["role"] == "assistant" and message["content"] == "", message
    (made,) = message["tool_calls"]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert made["type"] == "function" and made["function"]["name"] in schemas, made
    jsonschema.validate(made["function"]["arguments"], schemas[made["function"]["name"]])
    return made["function"]


@pytest.mark.parametrize("name", FORMATS)
def test_required_tool_choice_always_gives_a_valid_call(runtimes, name):
    runtime, chat = runtimes[name], CHATS[0]
    made = []
    for seed in range(12):
        result = runtime(chat, tools=BOUNDED, tool_choice="required", do_sample=True, temperature=1.5, seed=seed,
                         max_new_tokens=80)[0]
        assert not result.get("truncated"), result
        made.append(json.dumps(assert_valid_call(result["generated_text"][-1], BOUNDED), sort_keys=True))
    assert len({json.loads(m)["name"] for m in made}) == 2 and len(set(made)) >= 8, made  # samples differ
    greedy = runtime(chat, tools=BOUNDED, tool_choice="required", do_sample=False, max_new_tokens=80)[0]
    assert_valid_call(greedy["generated_text"][-1], BOUNDED)
    assert greedy["generated_text"][:-1] == chat


@pytest.mark.parametrize("name", FORMATS)
def test_a_named_tool_choice_calls_that_tool(runtimes, name):
    named = {"type": "function", "function": {"name": "add"}}
    for seed in range(4):
        result = runtimes[name](CHATS[1], tools=BOUNDED, tool_choice=named, do_sample=True, seed=seed, max_new_tokens=80)
        assert assert_valid_call(result[0]["generated_text"][-1], BOUNDED)["name"] == "add"


def test_a_forced_call_starts_with_the_formats_special_tokens_in_the_prompt(runtimes):
    """Mistral's [TOOL_CALLS] is a special token, which a constraint masks: it ends the prompt instead, and the
    answer's text (skip_special_tokens=False) starts with it; the constrained text ends with the call."""
    runtime = runtimes["mistral"]
    result = runtime(CHATS[0], tools=BOUNDED, tool_choice="required", do_sample=False, max_new_tokens=80,
                     skip_special_tokens=False, return_full_text=False)[0]["generated_text"]
    assert result.startswith("[TOOL_CALLS] [{\"name\": ") and result.endswith("}]"), result
    plain = runtime(CHATS[0], tools=BOUNDED, do_sample=False, max_new_tokens=8, return_tensors=True)[0]
    forced = runtime(CHATS[0], tools=BOUNDED, tool_choice="required", do_sample=False, max_new_tokens=8,
                     return_tensors=True)[0]
    special = runtime._task.tokenizer.backend.token_to_id("[TOOL_CALLS]")
    prompt = len(runtime._task.preprocess([CHATS[0]], runtime._task.check_options({"tools": BOUNDED})).prompts[0].ids)
    assert forced["generated_token_ids"][:prompt] == plain["generated_token_ids"][:prompt]
    assert forced["generated_token_ids"][prompt] == special


# ------------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    ({"tools": {"name": "add"}}, "tools must be a list of tool dicts"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, r"tools\[0\] has no function name"),
    ({"tools": [ADD, ADD]}, "names the function 'add' twice"),
    ({"tools": [{"name": "f", "parameters": "object"}]}, r"tools\[0\].function.parameters must be a JSON schema object"),
    ({"tool_choice": "always"}, "tool_choice must be 'auto', 'none', 'required'"),
    ({"tool_choice": "required"}, "tool_choice='required' needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "names the function 'nope', which is not among the tools"),
    ({"tools": BOUNDED, "tool_choice": "required", "json_object": True}, "leave out json_object"),
])
def test_bad_tool_options_are_refused(runtimes, options, message):
    with pytest.raises(rt.InvalidInputError, match=message):
        runtimes["qwen"](CHATS[0], max_new_tokens=2, **options)


def test_tools_need_a_chat_and_a_template_that_reads_them(runtimes):
    with pytest.raises(rt.InvalidInputError, match="tools reach the model through its chat template: pass chat messages"):
        runtimes["qwen"]("Hello", tools=TOOLS, max_new_tokens=2)
    with pytest.raises(rt.InvalidInputError, match="chat template does not read tools"):
        runtimes["plain"](CHATS[0], tools=TOOLS, max_new_tokens=2)
    assert runtimes["plain"](CHATS[0], tools=TOOLS, tool_choice="none", max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize(("name", "text", "held"), [
    ("qwen", "Sure, let me look.", 18), ("qwen", "Sure <tool", 5), ("qwen", 'Sure <tool_call>\n{"name"', 5), ("qwen", "a <b", 4),
    ("llama", "The weather", 11), ("llama", ' {"name": "add"', 0), ("llama", "<|pyth", 0), ("llama", "", 0),
    ("mistral", "Hi [TOOL_CA", 3), ("mistral", "Hi [TOOL_CALLS] [", 3), ("mistral", "Hi [x", 5),
])
def test_a_stream_holds_back_what_may_be_a_call(name, text, held):
    """The server streams an answer's text up to where a call may start; the rest waits for the parse at the end."""
    assert rt._tool_format(tool_models.TEMPLATES[name]).held(text) == held


@pytest.mark.parametrize("name", FORMATS)
def test_generated_text_before_a_call_stays_the_content(runtimes, name):
    """An answer made (by a regex constraint) of some text, then a call in the model's format: the chat's new message
    has the text as content and the call parsed."""
    text = {"qwen": 'Let me see.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
            "llama": '{"name": "add", "parameters": {"a": 1, "b": 2}}',
            "mistral": 'Let me see. [TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}]'}[name]
    result = runtimes[name](CHATS[1], tools=TOOLS, regex=re.escape(text), do_sample=False, max_new_tokens=80)[0]
    message = result["generated_text"][-1]
    # (Mistral's [TOOL_CALLS] comes in ordinary tokens here, a constraint masking the special one: it reads the same)
    assert message == {"role": "assistant", "content": "" if name == "llama" else "Let me see.",
                       "tool_calls": [call("add", a=1, b=2)]}
    assert runtimes[name](CHATS[1], regex=re.escape(text), do_sample=False, max_new_tokens=80)[0]["generated_text"][-1] \
        == {"role": "assistant", "content": text}  # without tools, nothing is parsed
