"""image-to-text parity: the runtime on ONE file against transformers 4.57's ImageToTextPipeline on the same weights,
token for token (transformers 5.25 turns "image-to-text" into its image-text-to-text pipeline, which cannot run a
VisionEncoderDecoderModel: see test_transformers_5_cannot_run_these_models).

Tiny random VisionEncoderDecoderModels (image_to_text_models: ViT + GPT-2, ViT + BERT without past, ViT + TrOCR's
decoder), each exported by onnxmeta's export (Optimum's exporter, the parts merged into one file) and copied ALONE
into an empty folder. The oracle runs in the Optimum environment (transformers 4.57) in the same process as the
export; its results are computed on each run, never checked in.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from image_helpers import png_bytes, synthetic
from runtime_under_test import rt

pytestmark = pytest.mark.optimum

# (width, height, seed): images of several sizes and contents
IMAGES = ((50, 40, 0), (32, 32, 1), (100, 60, 2), (17, 33, 3))
GREEDY = {"max_new_tokens": 12}


def image_paths(root: Path) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for width, height, seed in IMAGES:
        path = root / f"image-{width}x{height}.png"
        synthetic(width, height, seed=seed).save(path)
        paths.append(str(path))
    return paths


def calls(paths: list[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(the runtime's call, the pipeline's call): 4.57's pipeline takes generate()'s options in generate_kwargs only,
    the runtime by name too."""
    beams = {"num_beams": 3, "max_new_tokens": 10, "num_return_sequences": 2}
    pairs = [({"args": [p], "kwargs": GREEDY},) * 2 for p in paths]
    pairs += [
        ({"args": [paths[0]], "kwargs": beams}, {"args": [paths[0]], "kwargs": {"generate_kwargs": beams}}),
        ({"args": [paths[2]], "kwargs": {"generate_kwargs": beams}},) * 2,
        ({"args": [paths[1]], "kwargs": {"num_beams": 2, "max_new_tokens": 8, "length_penalty": 0.5, "early_stopping": True}},
         {"args": [paths[1]], "kwargs": {"generate_kwargs": {"num_beams": 2, "max_new_tokens": 8, "length_penalty": 0.5,
                                                             "early_stopping": True}}}),
        ({"args": [paths[3]], "kwargs": {"max_new_tokens": 12, "repetition_penalty": 1.5}},
         {"args": [paths[3]], "kwargs": {"max_new_tokens": 12, "generate_kwargs": {"repetition_penalty": 1.5}}}),
        ({"args": [paths[0]], "kwargs": {"max_new_tokens": 12, "generate_kwargs": {"no_repeat_ngram_size": 1}}},) * 2,
        ({"args": [paths[2]], "kwargs": {"max_new_tokens": 6, "min_new_tokens": 6, "generate_kwargs": {"bad_words_ids": [[5]]}}},
         {"args": [paths[2]], "kwargs": {"max_new_tokens": 6, "generate_kwargs": {"min_new_tokens": 6, "bad_words_ids": [[5]]}}}),
        # a list of images: the pipeline runs them one at a time, the runtime as one batch
        ({"args": [paths], "kwargs": {"max_new_tokens": 8}},) * 2,
        ({"args": [paths], "kwargs": {"generate_kwargs": {"num_beams": 2, "max_new_tokens": 6}}},) * 2,
    ]
    return pairs


@pytest.fixture(scope="session")
def captioners(tmp_path_factory) -> dict[str, Any]:
    """Per family: the one file alone in its folder, the model folder, the calls, 4.57's answers and Optimum's task."""
    from image_to_text_models import export_all

    root = tmp_path_factory.mktemp("image-to-text")
    paths = image_paths(root / "images")
    pairs = calls(paths)
    built = export_all(root, [oracle for _, oracle in pairs])
    out = {}
    for kind, (folder, file, results) in built.items():
        alone = root / f"{kind}-alone" / "model.onnx"
        alone.parent.mkdir()
        shutil.copyfile(file, alone)
        out[kind] = {"model": alone, "folder": folder, "calls": [mine for mine, _ in pairs], "paths": paths, **results}
    return out


RUNTIMES: dict[tuple[Path, str], Any] = {}


def runtime(path: Path, task: str = "image-to-text", **options: Any) -> Any:
    key = (path, task, *sorted(options.items()))
    if key not in RUNTIMES:
        RUNTIMES[key] = rt.Runtime(path, task=task, **options)
    return RUNTIMES[key]


FAMILIES = ["vit-gpt2", "vit-bert", "trocr"]


@pytest.mark.parametrize("kind", FAMILIES)
def test_token_for_token_parity_with_transformers_4_57(kind, captioners):
    family = captioners[kind]
    captioner = runtime(family["model"])
    failures = []
    for call, want in zip(family["calls"], family["answers"]):
        assert "error" not in want, (call, want)
        got = captioner(*call["args"], **call["kwargs"])
        if got != want:
            failures.append((call["kwargs"], got, want))
    assert not failures, "\n".join(f"{k}:\n  runtime {g}\n  4.57    {w}" for k, g, w in failures)
    # a broken runtime cannot pass on one repeated caption: each image gets its own
    greedy = [answer[0]["generated_text"] for answer in family["answers"][:len(IMAGES)]]
    assert len(set(greedy)) == len(IMAGES), greedy
    assert all(len(text) > 5 for text in greedy), greedy


def test_the_files_say_what_they_are(captioners):
    """The task detected from the architecture; Optimum's BERT decoder has no past, so its file has no step with past."""
    for kind in FAMILIES:
        metadata = rt.read_metadata(captioners[kind]["model"])
        assert metadata[rt.KEY_PIPELINE_TASK] == "image-to-text"
        layout = metadata[rt.KEY_GRAPH_LAYOUT]["entry_points"]
        with_past = kind != "vit-bert"
        assert ("decoder_with_past" in layout) == with_past
        assert captioners[kind]["exporter_task"] == "image-to-text" + ("-with-past" if with_past else "")
        # GPT-2's cross-attention keeps no past: every step takes the encoder's output (TrOCR's: its past instead)
        if with_past:
            steps = layout["decoder_with_past"]["inputs"]
            assert ("encoder_hidden_states" in steps) == (kind == "vit-gpt2"), steps
    layouts = {kind: rt.read_metadata(captioners[kind]["model"])[rt.KEY_GRAPH_LAYOUT] for kind in ("vit-gpt2", "trocr")}
    assert {kind: rt.graph_layout({"model.onnx": _signature(captioners[kind]["model"])}) for kind in layouts} == layouts


def _signature(path: Path) -> Any:
    """A file's signature as the runtime reads it (graph_layout recognises the layout from these names)."""
    import onnxruntime as ort

    return rt.session_signature(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


@pytest.mark.parametrize("kind", FAMILIES)
def test_image_text_to_text_is_the_same_room(kind, captioners):
    """transformers 5's spelling (its pipeline for the name image-to-text) answers as 4.57's image-to-text."""
    family = captioners[kind]
    spelled = runtime(family["model"], "image-text-to-text")
    assert spelled.task == "image-to-text"
    call = family["calls"][0]
    assert spelled(*call["args"], **call["kwargs"]) == family["answers"][0]


@pytest.mark.parametrize("kind", ["vit-gpt2", "trocr"])
def test_without_the_cache_the_same_tokens(kind, captioners):
    family = captioners[kind]
    captioner = runtime(family["model"])
    for call, want in list(zip(family["calls"], family["answers"]))[:5]:
        assert captioner(*call["args"], **call["kwargs"], use_cache=False) == want


@pytest.mark.parametrize("kind", FAMILIES)
def test_a_batch_gives_what_each_image_gives_alone(kind, captioners):
    family = captioners[kind]
    paths = family["paths"]
    captioner = runtime(family["model"])
    small = runtime(family["model"], batch_size=2)
    for options in (GREEDY, {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8}):
        alone = [captioner(path, **options) for path in paths]
        assert captioner(paths, **options) == alone
        assert small(paths, **options) == alone


def test_sampling_is_reproducible_with_a_seed(captioners):
    captioner = runtime(captioners["vit-gpt2"]["model"])
    path = captioners["vit-gpt2"]["paths"][0]
    options = {"do_sample": True, "top_k": 0, "max_new_tokens": 12, "num_return_sequences": 3}
    first = captioner(path, seed=7, **options)
    assert captioner(path, seed=7, **options) == first
    assert len(first) == 3 and captioner(path, seed=8, **options) != first


def test_images_in_every_form(captioners):
    from PIL import Image

    family = captioners["vit-gpt2"]
    captioner = runtime(family["model"])
    path = family["paths"][0]
    want = family["answers"][0]
    with Image.open(path) as image:
        assert captioner(image, **GREEDY) == want
    assert captioner(Path(path).read_bytes(), **GREEDY) == want


def test_bad_inputs_are_the_projects_errors(captioners):
    captioner = runtime(captioners["vit-gpt2"]["model"])
    path = captioners["vit-gpt2"]["paths"][0]
    with pytest.raises(rt.InvalidInputError):
        captioner(b"not an image at all", **GREEDY)
    with pytest.raises(rt.InvalidInputError):
        captioner(png_bytes(synthetic(8, 8))[:40], **GREEDY)  # a truncated PNG
    with pytest.raises(rt.InvalidInputError, match="max_new_tokens given both as an option and in generate_kwargs"):
        captioner(path, max_new_tokens=3, generate_kwargs={"max_new_tokens": 4})
    with pytest.raises(rt.InvalidInputError, match="generate_kwargs 'prompt': not generate\\(\\) options"):
        captioner(path, generate_kwargs={"prompt": "a photo of"})
    with pytest.raises(rt.InvalidInputError, match="num_beams"):
        captioner(path, generate_kwargs={"num_beams": 0})
    with pytest.raises(rt.InvalidInputError, match="image-to-text does not take 'prompt'"):
        captioner(path, prompt="a photo of")
    with pytest.raises(rt.InvalidInputError, match="past the model's 64 positions"):
        captioner(path, max_new_tokens=100)
