"""Encoder-decoders as ONE file (authoring.seq2seq): tiny random T5, BART and Whisper exported by Optimum
(with past), merged, and decoded greedily by a plain numpy + onnxruntime loop written here, token for token
against the same loop over the separate files and against transformers' generate on the PyTorch model."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from seq2seq_models import MODELS, unique_weight_bytes

import onnxmeta_runtime as rt
from authoring import MetadataEmbeddingError, discover
from authoring.cli import main
from authoring.seq2seq import describe_layout, file_layout, graph_layout, merge_export, session_signature

pytestmark = pytest.mark.optimum
MAX_NEW = 20


@pytest.fixture(scope="session")
def exports(seq2seq_exports) -> dict[str, tuple[Path, Path]]:
    """(model folder, Optimum export folder) per model: separate decoders (T5's export also has the merged one)."""
    return seq2seq_exports


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
        point, s = layout["entry_points"][entry], sessions[entry]
        feeds = {k: v for k, v in feed.items() if k in point["inputs"]}
        if "phase" in point:  # Optimum's merged decoder: use_cache_branch, and every input fed (empty when unused)
            feeds[layout["phase_input"]] = np.array([point["phase"]])
            feeds.update({a.name: np.zeros([d if isinstance(d, int) else 0 for d in a.shape], np.float32)
                          for a in s.get_inputs() if a.name in point["empty_inputs"]})
        return dict(zip(point["outputs"], s.run(list(point["outputs"].values()), feeds)))

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
            features = rng.standard_normal((2, 80, 128)).astype(np.float32)
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
    assert file_layout(one_files[kind]) == embedded  # from the graph's names, read without onnxruntime
    folder = describe_layout(exports[kind][1])
    assert folder["past"] == embedded["past"]
    for entry, point in embedded["entry_points"].items():  # the same roles as Optimum's separate files
        assert folder["entry_points"][entry]["file"].startswith(entry.replace("_with_past", ""))
        assert set(folder["entry_points"][entry]["inputs"]) == set(point["inputs"])
        assert set(folder["entry_points"][entry]["outputs"]) == set(point["outputs"])


# ------------------------------------------------------------------------------------------------------
# Export forms, external data, determinism
# ------------------------------------------------------------------------------------------------------

def test_an_export_with_the_merged_decoder_only(exports, cases, tmp_path):
    """encoder_model.onnx + decoder_model_merged.onnx: its If branches are taken apart; same layout, same tokens."""
    export = tmp_path / "merged-only"
    export.mkdir()
    for name in ("encoder_model.onnx", "decoder_model_merged.onnx"):
        shutil.copyfile(exports["t5"][1] / name, export / name)
    feed, expected, config = cases["t5"]
    assert np.array_equal(greedy(folder_runner(export, []), feed, config), expected)  # the folder, run as it is
    report = merge_export(export, None, discover(exports["t5"][0]))
    assert report.output_path == str(export / "model.onnx")
    assert report.layout == merge_export(exports["t5"][1], tmp_path / "separate.onnx", {}).layout
    assert np.array_equal(greedy(one_file_runner(export / "model.onnx", []), feed, config), expected)


def test_an_export_without_past(exports, cases, tmp_path):
    """encoder + decoder_model.onnx (an export without -with-past): two entry points; each step reruns the decoder."""
    export = tmp_path / "no-past"
    export.mkdir()
    for name in ("encoder_model.onnx", "decoder_model.onnx"):
        shutil.copyfile(exports["t5"][1] / name, export / name)
    report = merge_export(export, None, {})
    assert sorted(report.layout["entry_points"]) == ["decoder", "encoder"] and report.layout["past"] == []
    run, _ = one_file_runner(export / "model.onnx", [])
    feed, expected, config = cases["t5"]
    hidden = run("encoder", feed)["last_hidden_state"]
    ids = np.full((len(hidden), 1), config.decoder_start_token_id, np.int64)
    done = np.zeros(len(ids), bool)
    for _ in range(MAX_NEW):
        logits = run("decoder", {"input_ids": ids, "encoder_hidden_states": hidden,
                                 "encoder_attention_mask": feed["attention_mask"]})["logits"]
        token = np.where(done, config.pad_token_id, logits[:, -1].argmax(-1))
        ids, done = np.concatenate([ids, token[:, None]], 1), done | (token == config.eos_token_id)
        if done.all():
            break
    assert np.array_equal(ids, expected)


def test_same_inputs_same_bytes(exports, tmp_path):
    metadata = discover(exports["bart"][0])
    a = merge_export(exports["bart"][1], tmp_path / "a" / "model.onnx", metadata)
    b = merge_export(exports["bart"][1], tmp_path / "b" / "model.onnx", metadata)
    assert Path(a.output_path).read_bytes() == Path(b.output_path).read_bytes()


def test_weights_over_the_threshold_go_to_one_data_file(exports, cases, tmp_path):
    """What a model over 2 GB gets (the threshold lowered here): model.onnx + model.onnx_data, run from a bare folder."""
    import onnx

    report = merge_export(exports["t5"][1], tmp_path / "out" / "model.onnx", {}, external_data_threshold=0)
    assert report.data_file == "model.onnx_data"
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model.onnx", "model.onnx_data"):
        shutil.copyfile(tmp_path / "out" / name, alone / name)
    assert (alone / "model.onnx").stat().st_size < 200_000 < (alone / "model.onnx_data").stat().st_size
    onnx.checker.check_model(str(alone / "model.onnx"), full_check=True)
    feed, expected, config = cases["t5"]
    assert np.array_equal(greedy(one_file_runner(alone / "model.onnx", []), feed, config), expected)
    for tensor in onnx.load(str(alone / "model.onnx"), load_external_data=False).graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            assert int({e.key: e.value for e in tensor.external_data}["offset"]) % 4096 == 0


def test_an_export_with_external_data_merges_to_the_same_file(exports, tmp_path):
    """Parts keeping their weights in data files (as exports over 2 GB do) are read without loading the graph's data."""
    import onnx

    external = tmp_path / "external"
    external.mkdir()
    for path in exports["whisper"][1].glob("*.onnx"):
        onnx.save_model(onnx.load(str(path)), str(external / path.name), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{path.stem}.data", size_threshold=1024)
    metadata = discover(exports["whisper"][0])
    a = merge_export(exports["whisper"][1], tmp_path / "a.onnx", metadata)
    b = merge_export(external, tmp_path / "b.onnx", metadata)
    assert b.data_file is None
    assert Path(a.output_path).read_bytes() == Path(b.output_path).read_bytes()


# ------------------------------------------------------------------------------------------------------
# Graphs that do not fit together
# ------------------------------------------------------------------------------------------------------

def tampered(exports: dict[str, tuple[Path, Path]], tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    folder = tmp_path / "tampered"
    shutil.copytree(exports["t5"][1], folder, ignore=shutil.ignore_patterns("decoder_model_merged.onnx", "model.onnx*"))
    edit(folder)
    return folder


def edit_model(path: Path, change: Callable[[Any], None]) -> None:
    import onnx

    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))


def other_weights(model: Any) -> None:
    """The same graph with other weights: a decoder of another model of the same shape."""
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        data = numpy_helper.to_array(tensor)
        if data.dtype == np.float32:
            tensor.CopyFrom(numpy_helper.from_array(data + np.float32(0.5), tensor.name))


def drop_output(name: str) -> Callable[[Any], None]:
    def change(model: Any) -> None:
        kept = [o for o in model.graph.output if o.name != name]
        del model.graph.output[:]
        model.graph.output.extend(kept)
    return change


@pytest.mark.parametrize(("edit", "message"), [
    (lambda f, e: shutil.copyfile(e["bart"][1] / "encoder_model.onnx", f / "encoder_model.onnx"),
     "encoder_model.onnx and decoder_model.onnx do not fit together: encoder_model.onnx gives last_hidden_state of width "
     "32, decoder_model.onnx takes encoder_hidden_states of width 64; are they from the same export?"),
    (lambda f, e: shutil.copyfile(e["bart"][1] / "decoder_with_past_model.onnx", f / "decoder_with_past_model.onnx"),
     "decoder_model.onnx and decoder_with_past_model.onnx do not fit together: decoder_with_past_model.onnx takes "
     "past_key_values.0.decoder.key of shape ['batch_size', 4, 'past_decoder_sequence_length', 8], decoder_model.onnx "
     "gives present.0.decoder.key of shape ['batch_size', 4, 'past_decoder_sequence_length + decoder_sequence_length', 16]; "
     "are they from the same export?"),
    (lambda f, e: edit_model(f / "decoder_with_past_model.onnx", other_weights),
     "decoder_model.onnx and decoder_with_past_model.onnx do not fit together: decoder_with_past_model.onnx shares 0% of "
     "its weights with decoder_model.onnx (the decoders of one export share them all); are they from the same export?"),
    (lambda f, e: edit_model(f / "decoder_model.onnx", drop_output("present.1.encoder.value")),
     "decoder_model.onnx and decoder_with_past_model.onnx do not fit together: decoder_with_past_model.onnx takes "
     "past_key_values.1.encoder.value, but decoder_model.onnx gives no present.1.encoder.value; are they from the same "
     "export?"),
    (lambda f, e: (f / "decoder_model.onnx").unlink(),
     "has decoder_with_past_model.onnx but no decoder_model.onnx: the first decoder step (which computes the "
     "cross-attention past) is missing; export again with Optimum"),
    (lambda f, e: (f / "encoder_model.onnx").unlink(),
     "is not an encoder-decoder export: expected encoder_model.onnx with decoder_model.onnx, decoder_with_past_model.onnx "
     "or decoder_model_merged.onnx taking encoder_hidden_states or past_key_values; found decoder_model.onnx, "
     "decoder_with_past_model.onnx"),
], ids=["encoder of another width", "past of another shape", "decoder of another model", "missing present",
        "no first step", "no encoder"])
def test_graphs_that_do_not_fit_together_are_refused(exports, tmp_path, edit, message):
    folder = tampered(exports, tmp_path, lambda f: edit(f, exports))
    (folder / "model.onnx").write_bytes(b"a model from before")
    with pytest.raises(MetadataEmbeddingError) as error:
        merge_export(folder, None, {})
    assert message in str(error.value)
    assert (folder / "model.onnx").read_bytes() == b"a model from before"  # nothing a user had is lost


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------

def test_cli_embed_of_an_export_folder_writes_one_file(exports, cases, tmp_path, capsys):
    model_folder, export = exports["t5"]
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    assert main(["embed", str(folder), str(model_folder), "--include-vocab"]) == 0
    out = capsys.readouterr().out
    assert f"merged {folder} into ONE file {folder / 'model.onnx'}" in out
    assert "phase=2: decoder_with_past(encoder_attention_mask, decoder_input_ids, 8 past)" in out
    metadata = rt.read_metadata(folder / "model.onnx")
    assert metadata["hf_pipeline_task"] == "text2text-generation" and metadata["hf_tokenizer_json"]
    assert metadata["export_config"] == rt.model_info(folder / "model.onnx")
    feed, expected, config = cases["t5"]
    assert np.array_equal(greedy(one_file_runner(folder / "model.onnx", []), feed, config), expected)

    assert main(["embed", str(folder), str(model_folder), "-o", str(tmp_path / "t5.onnx")]) == 0
    assert rt.read_metadata(tmp_path / "t5.onnx")["hf_graph_layout"] == metadata["hf_graph_layout"]
    # embedding the one file again (another task, another level) keeps its layout
    assert main(["embed", str(tmp_path / "t5.onnx"), str(model_folder), "--task", "summarization", "--level", "minimal"]) == 0
    assert rt.read_metadata(tmp_path / "t5.onnx")["hf_graph_layout"] == metadata["hf_graph_layout"]
    assert main(["embed", str(folder), str(model_folder), "--in-place"]) == 1
    assert capsys.readouterr().err == (f"error: {folder} is an encoder-decoder export, merged into one new file: "
                                       "--in-place and --jobs do not apply\n")
