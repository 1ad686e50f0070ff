"""Runtime construction and bad inputs: clear errors from the hierarchy, raised early."""

from __future__ import annotations

import pytest

from runtime_under_test import rt


def test_runtime_exposes_what_it_built(runtime, bert_embedded):
    assert runtime.task == "text-classification"
    assert isinstance(runtime.tokenizer, rt.TextTokenizer)
    assert runtime.config["id2label"]["2"] == "POSITIVE"
    assert repr(runtime) == "Runtime('model.onnx', task='text-classification')"
    assert runtime.session.get_providers() == ["CPUExecutionProvider"]


def test_design_aliases(bert_embedded, runtime):
    assert rt.pipeline(model=bert_embedded)("I love it") == runtime("I love it")
    assert rt.pipeline(bert_embedded, task="sentiment-analysis").task == "text-classification"
    session = rt.ONNXAutoModel.from_model(bert_embedded)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    tokenizer = rt.ONNXAutoProcessor.from_model(bert_embedded)
    assert isinstance(tokenizer, rt.TextTokenizer) and tokenizer.max_length == 128


def test_long_text_is_truncated_to_the_model_limit(runtime):
    encoding = runtime.tokenizer.encode(["word " * 1000])[0]
    assert len(encoding.ids) == 128 and encoding.ids[-1] == runtime.tokenizer.backend.token_to_id("[SEP]")  # kept
    assert runtime("word " * 1000)[0]["label"] in {"NEGATIVE", "NEUTRAL", "POSITIVE"}


def test_essential_level_has_a_proxy_tokenizer(bert_classifier, tmp_path):
    from authoring import embed_metadata

    out = tmp_path / "essential.onnx"
    embed_metadata(bert_classifier.onnx, bert_classifier.folder, out)
    proxy = rt.ONNXAutoProcessor.from_model(out)
    assert isinstance(proxy, rt.TokenizerProxy)
    assert proxy.config["tokenizer_class"] == "BertTokenizer"
    message = ("no vocabulary embedded, so this model cannot tokenize text; re-embed with --include-vocab "
               "(python -m authoring embed model.onnx <model> --include-vocab)")
    with pytest.raises(rt.ProcessorReconstructionError) as info:
        proxy("hello")
    assert str(info.value) == message
    with pytest.raises(rt.ProcessorReconstructionError) as info:
        rt.Runtime(out)
    assert str(info.value) == message


def test_file_without_metadata(bert_classifier):
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(bert_classifier.onnx)
    assert str(info.value) == ("model.onnx has no onnxmeta metadata; embed it first: "
                               "python -m authoring embed model.onnx <model> --include-vocab")


def test_unknown_and_missing_task(bert_embedded, bert_classifier, tmp_path):
    with pytest.raises(rt.TaskDetectionError) as info:
        rt.Runtime(bert_embedded, task="table-question-answering")
    assert str(info.value) == ("task 'table-question-answering' is not supported by this runtime; supported: "
                               "audio-classification, automatic-speech-recognition, background-removal, depth-estimation, "
                               "document-question-answering, feature-extraction, fill-mask, image-classification, "
                               "image-feature-extraction, image-segmentation, image-to-image, image-to-text, object-detection, "
                               "question-answering, summarization, text-classification, text-generation, text-to-audio, "
                               "text2text-generation, token-classification, translation, zero-shot-audio-classification, "
                               "zero-shot-classification, zero-shot-image-classification, zero-shot-object-detection "
                               "(translation_XX_to_YY too)")
    from authoring import embed

    from authoring.discovery import discover

    md = discover(bert_classifier.folder, level="full")
    del md[rt.KEY_PIPELINE_TASK]
    embed(bert_classifier.onnx, md, tmp_path / "notask.onnx")
    with pytest.raises(rt.TaskDetectionError, match="notask.onnx names no pipeline task; pass task=... or re-embed with --task"):
        rt.Runtime(tmp_path / "notask.onnx")
    assert rt.Runtime(tmp_path / "notask.onnx", task="text-classification")("hi")[0]["label"]


@pytest.mark.parametrize("bad, message", [
    (None, "text-classification takes a string, a {'text': ..., 'text_pair': ...} dict, or a list of those; got NoneType"),
    (42, "text-classification takes a string, a {'text': ..., 'text_pair': ...} dict, or a list of those; got int"),
    (["ok", b"bytes"], "text-classification takes a string, a {'text': ..., 'text_pair': ...} dict, or a list of those; got bytes"),
    ({"text": "a", "pair": "b"}, "text-classification takes a string, a {'text': ..., 'text_pair': ...} dict, or a list of those; got dict"),
])
def test_bad_inputs(runtime, bad, message):
    with pytest.raises(rt.InvalidInputError) as info:
        runtime(bad)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_bad_arguments(runtime):
    with pytest.raises(rt.InvalidInputError) as info:
        runtime("x", topk=3)
    assert str(info.value) == "text-classification does not take 'topk'; it takes top_k, function_to_apply"
    with pytest.raises(rt.InvalidInputError, match="top_k must be a positive integer or None, got 0"):
        runtime("x", top_k=0)
    with pytest.raises(rt.InvalidInputError, match="function_to_apply must be one of softmax, sigmoid, none; got 'relu'"):
        runtime("x", function_to_apply="relu")
    with pytest.raises(rt.InvalidInputError, match="batch_size must be a positive integer, got 0"):
        rt.Runtime(runtime.path, batch_size=0)


def test_empty_list(runtime):
    assert runtime([]) == []


def test_graph_inputs_must_match_a_text_model(bert_embedded, tmp_path):
    import onnx

    model = onnx.load(bert_embedded)
    model.graph.input[2].name = "position_ids"
    for node in model.graph.node:
        node.input[:] = ["position_ids" if n == "token_type_ids" else n for n in node.input]
    onnx.save(model, tmp_path / "odd.onnx")
    with pytest.raises(rt.MetadataValidationError) as info:
        rt.Runtime(tmp_path / "odd.onnx")
    assert str(info.value) == ("text-classification feeds input_ids, optional attention_mask and token_type_ids; the graph "
                               "takes ['input_ids', 'attention_mask', 'position_ids']; was it exported for another task?")


def test_unloadable_graph(bert_embedded, tmp_path):
    data = bert_embedded.read_bytes()
    assert b"MatMul" in data
    (tmp_path / "m.onnx").write_bytes(data.replace(b"MatMul", b"MatMux"))  # same length: still valid protobuf
    with pytest.raises(rt.MetadataReadError, match="onnxruntime cannot load m.onnx: .*MatMux"):
        rt.Runtime(tmp_path / "m.onnx")


def test_runtime_cli(bert_embedded, capsys):
    import json

    assert rt._main([str(bert_embedded), "I love this"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == rt.Runtime(bert_embedded)("I love this")
    assert rt._main([str(bert_embedded), "--metadata"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[rt.KEY_PIPELINE_TASK] == "text-classification" and shown[rt.KEY_TOKENIZER_JSON].endswith(" characters>")


def test_unavailable_execution_provider_is_an_error(bert_embedded):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(rt.InvalidInputError) as info:
        rt.Runtime(bert_embedded, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert str(info.value).startswith("execution provider CUDAExecutionProvider is not available in this onnxruntime (available: ")
    assert str(info.value).endswith("install the matching build, e.g. onnxruntime-gpu for CUDA")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    runtime = rt.Runtime(bert_embedded, providers=[("CPUExecutionProvider", {})], session_options=options)
    assert runtime.session.get_session_options().intra_op_num_threads == 1


def test_truncation_variants_are_built_once_and_bounded(bert_embedded):
    tokenizer = rt.Runtime(bert_embedded).tokenizer
    first = tokenizer.with_truncation("longest_first", window=64, stride=8)
    assert tokenizer.with_truncation("longest_first", window=64, stride=8) is first
    assert first.window == 64 and len(first.encode(["word " * 200])[0].ids) == 64
    for stride in range(20):
        tokenizer.with_truncation("longest_first", stride=stride)
    assert len(tokenizer._variants) == 8  # callers choose the settings: only the latest few are kept
