"""Structured output through the server and the official `openai` client: response_format (json_object, json_schema,
llama.cpp's json_object with a schema) whose answers parse and validate, tools and tool_choice answered in OpenAI's
tool_calls shape (non-streamed and streamed), assistant tool calls and tool results sent back, and bad schemas or tools
refused with an OpenAI error naming the field. Greedy answers equal the runtime called in this process on the same file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
import tool_models
from tool_models import BOUNDED, TOOLS

jsonschema = pytest.importorskip("jsonschema")

MODEL = "model.onnx"
CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}}, "required": ["name", "age"],
    "additionalProperties": False}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in BOUNDED}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return tool_models.build(tmp_path_factory.mktemp("server_tools"))


@pytest.fixture(scope="module")
def qwen(served, files) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served(files['qwen'])}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def runtime(runtimes, files) -> Any:
    return runtimes(files["qwen"])


def ask(client: openai.OpenAI, messages: list[dict[str, Any]] = CHAT, **options: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=messages, **{"max_tokens": 80, **options})


# ------------------------------------------------------------------------------------------------------
# response_format
# ------------------------------------------------------------------------------------------------------

def test_json_schema_answers_validate(qwen, runtime):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    answers = []
    for seed in range(8):
        answer = ask(qwen, temperature=1.0, seed=seed, response_format=response_format)
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), PERSON)
        answers.append(choice.message.content)
    assert len(set(answers)) >= 6, answers
    greedy = ask(qwen, temperature=0, response_format=response_format).choices[0].message.content
    expected = runtime(CHAT, json_schema=PERSON, do_sample=False, max_new_tokens=80, return_full_text=False)
    assert greedy == expected[0]["generated_text"]


def test_json_object_answers_are_objects(qwen):
    for seed in range(4):
        content = ask(qwen, temperature=1.0, seed=seed, max_tokens=120, response_format={"type": "json_object"}).choices[0]
        if content.finish_reason == "stop":
            assert isinstance(json.loads(content.message.content), dict), content
    # llama.cpp's form: a schema beside json_object
    answer = ask(qwen, temperature=0, extra_body={"response_format": {"type": "json_object", "schema": PERSON}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)


def test_completions_take_a_response_format(qwen):
    answer = qwen.completions.create(model=MODEL, prompt="A person:", max_tokens=80, temperature=0,
                                     extra_body={"response_format": {"type": "json_object", "schema": PERSON}})
    jsonschema.validate(json.loads(answer.choices[0].text), PERSON)


def test_a_json_stream_joins_to_the_answer(qwen):
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    whole = ask(qwen, temperature=0, response_format=response_format).choices[0].message.content
    chunks = list(ask(qwen, temperature=0, response_format=response_format, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole


# ------------------------------------------------------------------------------------------------------
# Tools
# ------------------------------------------------------------------------------------------------------

def assert_call(message: Any) -> dict[str, Any]:
    (made,) = message.tool_calls
    assert made.type == "function" and made.id.startswith("call_") and made.function.name in SCHEMAS, made
    arguments = json.loads(made.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[made.function.name])
    return {"name": made.function.name, "arguments": arguments}


def test_required_tool_choice_answers_tool_calls(qwen, runtime):
    made = []
    for seed in range(6):
        choice = ask(qwen, tools=BOUNDED, tool_choice="required", temperature=1.0, seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
        made.append(json.dumps(assert_call(choice.message), sort_keys=True))
    assert len(set(made)) >= 4, made
    greedy = ask(qwen, tools=BOUNDED, tool_choice="required", temperature=0).choices[0].message
    expected = runtime(CHAT, tools=BOUNDED, tool_choice="required", do_sample=False, max_new_tokens=80)
    assert [assert_call(greedy)] == [c["function"] for c in expected[0]["generated_text"][-1]["tool_calls"]]


def test_a_named_tool_choice(qwen):
    choice = {"type": "function", "function": {"name": "add"}}
    for seed in range(3):
        answer = ask(qwen, tools=BOUNDED, tool_choice=choice, temperature=1.0, seed=seed)
        assert assert_call(answer.choices[0].message)["name"] == "add"


def test_auto_tool_choice_answers_text_when_the_model_calls_nothing(qwen, runtime):
    answer = ask(qwen, tools=TOOLS, temperature=0, max_tokens=16).choices[0]
    expected = runtime(CHAT, tools=TOOLS, do_sample=False, max_new_tokens=16)[0]["generated_text"][-1]
    assert answer.message.tool_calls is None and "tool_calls" not in expected
    # with tools the server answers the content stripped, as transformers' response parser does
    assert answer.message.content == expected["content"].strip() and answer.finish_reason in ("stop", "length")
    streamed = ask(qwen, tools=TOOLS, temperature=0, max_tokens=16, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == answer.message.content


def test_a_streamed_tool_call(qwen):
    whole = ask(qwen, tools=BOUNDED, tool_choice="required", temperature=0).choices[0].message
    chunks = list(ask(qwen, tools=BOUNDED, tool_choice="required", temperature=0, stream=True,
                      stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for d in deltas for call in d.tool_calls or ()]
    assert [(c.index, c.type, c.function.name, c.function.arguments) for c in calls] == \
        [(0, "function", whole.tool_calls[0].function.name, whole.tool_calls[0].function.arguments)]
    assert calls[0].id.startswith("call_") and not "".join(d.content or "" for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0


def test_a_tool_call_and_its_result_sent_back(qwen, files):
    """The assistant's call (arguments as a JSON string) and the tool's result render as transformers' server renders
    them (arguments as an object): the prompt's tokens counted equal."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [*CHAT, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"}]
    answer = ask(qwen, messages, tools=TOOLS, temperature=0, max_tokens=4)
    rendered = [*CHAT, {"role": "assistant", "content": "", "tool_calls": [
        {**call, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"}]
    tokenizer = tool_models.read_tokenizer(files["qwen"])
    ids = tokenizer.apply_chat_template(rendered, tools=TOOLS, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert answer.usage.prompt_tokens == len(ids)
    without = ask(qwen, messages[:1], tools=TOOLS, temperature=0, max_tokens=4)
    assert without.usage.prompt_tokens < answer.usage.prompt_tokens


def test_parallel_tool_calls_false_keeps_one_call(qwen):
    """The random model writes no calls of its own, so this checks the field is taken (and a forced call is one)."""
    answer = ask(qwen, tools=BOUNDED, tool_choice="required", parallel_tool_calls=False, temperature=0)
    assert len(answer.choices[0].message.tool_calls) == 1


# ------------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "param", "words"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nope"}}}},
     "response_format.json_schema.schema", "nope"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
     "response_format.json_schema.schema", "must be a JSON schema object"),
    ({"response_format": {"type": "yaml"}}, "response_format", "'response_format' must be"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"$ref": "#/$defs/nope"}}}}}], "tool_choice": "required"}, "tools", "nope"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]", "must be {'type': 'function'"),
    ({"tools": BOUNDED, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "not among the tools"),
    ({"tools": BOUNDED, "tool_choice": "sometimes"}, "tool_choice", "tool_choice must be"),
])
def test_bad_schemas_and_tools_are_refused_naming_the_field(qwen, options, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(qwen, **options)
    error = caught.value.body
    assert error["param"] == param and words in error["message"], error
    assert ask(qwen, temperature=0, max_tokens=2).choices  # still serving


def test_tools_are_for_chat(qwen):
    with pytest.raises(openai.BadRequestError) as caught:
        qwen.completions.create(model=MODEL, prompt="Hi", max_tokens=2, extra_body={"tools": BOUNDED})
    assert caught.value.body["param"] == "tools"


def test_a_tool_call_sent_back_with_bad_arguments_is_refused(qwen):
    bad = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{not json"}}
    with pytest.raises(openai.BadRequestError) as caught:
        ask(qwen, [*CHAT, {"role": "assistant", "content": None, "tool_calls": [bad]}], tools=TOOLS)
    assert caught.value.body["param"] == "messages[1].tool_calls[0].function.arguments", caught.value.body
