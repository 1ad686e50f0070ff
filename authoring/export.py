"""From a model id or folder to ONE self-contained ONNX file: export, optimize, quantize, embed, validate.

The graph comes from Optimum's exporter when it is installed (the ``[export]`` extra), else from
``torch.onnx.export`` for the tasks that are one graph. An encoder-decoder export (Optimum only) is merged
into one file (``seq2seq.merge_export``). onnxruntime's transformer optimizer (``--optimize O1|O2|O3``,
Optimum's levels) and dynamic int8 quantization run on the graph before the metadata is embedded, and their
accuracy cost is measured through the runtime on a few probe inputs. Everything happens in a temporary folder
beside the output; the output appears (atomically) only when every step passed.

This is the one command that needs torch (and Optimum, transformers' modeling code): they are imported here,
inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxmeta_runtime as rt
from onnxmeta_runtime import MetadataEmbeddingError, MetadataExtractionError, MetadataValidationError, TaskDetectionError

from . import fileio, genai, progress, vits
from .discovery import HUB_PATTERNS, MetadataDiscovery, embedding_level, hub_snapshot
from .embedder import EmbeddedEntry, compress_threshold, embed
from .external import data_files
from .inspection import Check
from .inspection import validate as validate_file
from .quality import Quality, quality_card
from .seq2seq import is_seq2seq_export, merge_export
from .weights import Quantization, load, save, shrink, token_tables

logger = logging.getLogger("onnxmeta")

OPTIMIZE_LEVELS = ("O1", "O2", "O3")
EXPORTERS = ("auto", "optimum", "torch", "genai")
DEFAULT_OPSET = 17
# The [export] extra is Optimum's exporter (it brings torch and transformers 4.57; onnxmeta's base install needs no
# transformers, so they resolve together). Without Optimum, torch and transformers are enough for the one-graph tasks.
EXPORT_EXTRA = "pip install 'onnxmeta[export]'"
OPTIMUM_INSTALL = "pip install 'onnxmeta[export]' (Optimum's exporter, optimum-onnx[onnxruntime])"
SEQ2SEQ_TASKS = ("text2text-generation", "summarization", "translation")
PROCESSOR_FILES = "preprocessor_config.json, or processor_config.json as transformers 5 saves it"
# Weights fetched for a hub id: safetensors, else (older repositories) PyTorch's pickles.
_WEIGHTS = (("*.safetensors",), ("pytorch_model*.bin",))

# Pipeline task -> Optimum's task, where the names differ ("-with-past" is added where Optimum offers it).
_OPTIMUM_TASKS = {"zero-shot-classification": "text-classification", "image-feature-extraction": "feature-extraction",
                  "summarization": "text2text-generation", "translation": "text2text-generation",
                  "document-question-answering": "image-to-text"}  # Donut: Optimum's vision-encoder-decoder task

_BATCH = {0: "batch"}
_DENSE_TASKS = ("depth-estimation", "image-to-image", "image-segmentation")  # an image (or maps) out per image in
_TOKENS = {0: "batch", 1: "sequence"}
# The tasks torch.onnx.export makes here: the transformers auto class, and the outputs the runtime reads with
# their dynamic axes (an output the model does not return is left out: a ViT without pooler).
_TORCH_TASKS: dict[str, tuple[str, dict[str, dict[int, str]]]] = {
    "text-classification": ("AutoModelForSequenceClassification", {"logits": _BATCH}),
    "zero-shot-classification": ("AutoModelForSequenceClassification", {"logits": _BATCH}),
    "token-classification": ("AutoModelForTokenClassification", {"logits": _TOKENS}),
    "question-answering": ("AutoModelForQuestionAnswering", {"start_logits": _TOKENS, "end_logits": _TOKENS}),
    # LayoutLM (v1) on the caller's words: bbox (batch, sequence, 4) beside the tokens; Donut goes through Optimum
    "document-question-answering": ("AutoModelForDocumentQuestionAnswering", {"start_logits": _TOKENS,
                                                                               "end_logits": _TOKENS}),
    "fill-mask": ("AutoModelForMaskedLM", {"logits": _TOKENS}),
    "feature-extraction": ("AutoModel", {"last_hidden_state": _TOKENS}),
    "text-generation": ("AutoModelForCausalLM", {"logits": _TOKENS}),
    "image-classification": ("AutoModelForImageClassification", {"logits": _BATCH}),
    "image-feature-extraction": ("AutoModel", {"last_hidden_state": _BATCH, "pooler_output": _BATCH,
                                               "image_embeds": _BATCH}),
    "zero-shot-image-classification": ("AutoModel", {"logits_per_image": {0: "batch", 1: "texts"}}),
    "object-detection": ("AutoModelForObjectDetection", {"logits": _BATCH, "pred_boxes": _BATCH}),
    "zero-shot-object-detection": ("AutoModelForZeroShotObjectDetection", {"logits": {0: "batch", 2: "queries"},
                                                                           "pred_boxes": _BATCH}),
    "depth-estimation": ("AutoModelForDepthEstimation", {"predicted_depth": {0: "batch", 1: "height", 2: "width"}}),
    "image-to-image": ("AutoModelForImageToImage", {"reconstruction": {0: "batch", 2: "height", 3: "width"}}),
    "image-segmentation": ("AutoModelForSemanticSegmentation", {"logits": {0: "batch", 2: "height", 3: "width"}}),
    "audio-classification": ("AutoModelForAudioClassification", {"logits": _BATCH}),
    "automatic-speech-recognition": ("AutoModelForCTC", {"logits": {0: "batch", 1: "frames"}}),
    "zero-shot-audio-classification": ("AutoModel", {"logits_per_audio": {0: "batch", 1: "texts"}}),
    # VITS: its own module (authoring/vits.py) with the noise as inputs
    "text-to-audio": ("AutoModelForTextToWaveform", {"waveform": {0: "batch", 1: "samples"}, "frames": _BATCH}),
}
# image-segmentation with a label and a mask per query (MaskFormer, Mask2Former; DETR's logits and pred_masks), in
# place of the semantic recipe.
_QUERY_SEGMENTATION = ("AutoModelForUniversalSegmentation", {
    "class_queries_logits": _BATCH, "masks_queries_logits": {0: "batch", 2: "height", 3: "width"},
    "logits": _BATCH, "pred_masks": {0: "batch", 2: "height", 3: "width"}})
_QUERY_SEGMENTERS = ("maskformer", "mask2former", "detr")

# model_type -> the model type onnxruntime's transformer optimizer fuses it as (Optimum's ORTConfigManager).
_ORT_MODEL_TYPES = {
    **dict.fromkeys(("albert", "bert", "big_bird", "camembert", "deberta", "deberta-v2", "distilbert", "electra",
                     "modernbert", "mpnet", "nystromformer", "roberta", "xlm-roberta"), "bert"),
    **dict.fromkeys(("bloom", "codegen", "gpt2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj", "granite", "llama",
                     "mistral"), "gpt2"),
    **dict.fromkeys(("dinov2", "segformer", "vit"), "vit"),
    "clip": "clip",
}


# ------------------------------------------------------------------------------------------------------
# What was done, for the caller
# ------------------------------------------------------------------------------------------------------

@dataclass
class ExportReport:
    """What export() wrote."""

    output_path: str
    task: str
    exporter: str
    export_config: dict[str, Any]
    file_bytes: int
    """The output's size, its external data files included."""
    plain_bytes: int
    """The size of the float32 export (tied weights stored once; the same metadata; data files included)."""
    entries: list[EmbeddedEntry]
    quality: Quality | None = None
    """The quality card of a quantized, converted or optimized file against the float32 export."""
    checks: list[Check] = field(default_factory=list)
    layout: dict[str, Any] | None = None
    """The entry points of an encoder-decoder merged into the file."""


# ------------------------------------------------------------------------------------------------------
# The model's files
# ------------------------------------------------------------------------------------------------------

def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for patterns in _WEIGHTS for pattern in patterns)


def _source(model: str | os.PathLike[str], revision: str | None) -> tuple[Path, dict[str, Any]]:
    """The model's folder (a hub id through the cache, weights included) and where it came from."""
    path = Path(model)
    if path.is_dir():
        if revision is not None:
            raise MetadataExtractionError(f"{path} is a local folder: --revision applies only to hub ids")
        return path, {"source": os.fspath(model)}
    if path.exists():
        raise MetadataExtractionError(f"{path} is a file; pass the model's folder (with config.json) or a hub id")
    name = os.fspath(model)
    for weights in _WEIGHTS:
        folder = hub_snapshot(name, revision, (*HUB_PATTERNS, *weights))
        if _has_weights(folder):
            break
    else:
        download = f"hf download {name}" + (f" --revision {revision}" if revision else "")
        raise MetadataExtractionError(f"{name!r} has no weights (*.safetensors, pytorch_model*.bin) in {folder}; "
                                      f"download them: {download}")
    provenance = {"source": name, "revision": revision or "main"}
    if re.fullmatch(r"[0-9a-f]{40}", folder.name):  # the cache names a snapshot by its commit
        provenance["commit"] = folder.name
    return folder, provenance


def _versions(*names: str) -> dict[str, str]:
    out = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


# ------------------------------------------------------------------------------------------------------
# Exporters
# ------------------------------------------------------------------------------------------------------

def optimum_available() -> bool:
    """Whether Optimum's ONNX exporter is installed (the [export] extra); a broken install is an error."""
    if importlib.util.find_spec("optimum") is None:
        return False
    try:
        import optimum.exporters.onnx  # noqa: F401
    except ImportError as exc:
        raise MetadataExtractionError(
            f"Optimum is installed but its ONNX exporter cannot be imported ({exc}); install it in a fresh "
            f"environment: {OPTIMUM_INSTALL}"
        ) from None
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' warnings and notes (tracer warnings, deprecations) only with -v (the onnxmeta logger at DEBUG)."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # "Loading weights" bars
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        levels = {}
        for name in ("transformers", "torch.onnx", "onnxruntime"):
            levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            if bars:
                transformers_logging.enable_progress_bar()


@contextlib.contextmanager
def _scratch(beside: Path) -> Iterator[Path]:
    """Run onnxruntime's tools in a scratch working directory, removed afterwards: its symbolic shape inference
    saves sym_shape_infer_temp.onnx and a <uuid>.data file into the working directory when it gives up, and they
    must not litter the caller's. The paths given to the tools must be absolute."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=".onnxruntime.", dir=beside) as folder:
        os.chdir(folder)
        try:
            yield Path(folder).absolute()
        finally:
            os.chdir(previous)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_DIFFERENCE = re.compile(r"^- (.+?): max diff = (\S+?)\.?$", re.MULTILINE)  # the last line ends in "."
_TOLERANCE = re.compile(r"within the set tolerance (\S+?):")


def optimum_check_summary(warning: str) -> str:
    """Optimum's check of an export against PyTorch in one line: how many outputs exceeded the tolerance, the worst one
    and its difference (Optimum lists every output, 60 of them for a 30-layer model's present.N.key/value)."""
    found = " ".join(warning.split("succeeded with the warning:", 1)[-1].split("The exported model")[0].split())
    differences = [(name, float(diff)) for name, diff in _DIFFERENCE.findall(warning)]
    tolerance = _TOLERANCE.search(warning)
    if not differences or tolerance is None:
        return found.rstrip(". ")
    worst, difference = max(differences, key=lambda item: item[1])
    if len(differences) == 1:
        return f"{worst} differs by {difference:.3g}, beyond its tolerance {tolerance.group(1)}"
    return (f"{len(differences)} outputs differ beyond its tolerance {tolerance.group(1)}, the most {worst} by "
            f"{difference:.3g} (-v lists each)")


@contextlib.contextmanager
def _optimum_notes() -> Iterator[None]:
    """Optimum's log (its own handler on stderr) kept back unless -v; what its check of the export against PyTorch
    found beyond its tolerance comes out as one line (optimum_check_summary)."""
    optimum = logging.getLogger("optimum")
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    saved = optimum.handlers[:], optimum.level, optimum.propagate
    records = _Records()
    optimum.handlers[:] = [records]
    optimum.setLevel(logging.WARNING)
    optimum.propagate = False
    try:
        yield
    finally:
        optimum.handlers[:], optimum.level, optimum.propagate = saved
        for message in records.messages:
            if "succeeded with the warning:" in message:
                logger.warning("Optimum's check of the export against PyTorch: %s", optimum_check_summary(message))


def _decoder_has_past(config: Mapping[str, Any]) -> bool:
    """Whether Optimum exports the decoder of a composite encoder-decoder (VisionEncoderDecoderModel: config.decoder)
    with past, as its EncoderDecoderBaseOnnxConfig decides: a BERT decoder has none (each step reruns on all the
    tokens); True for every other model."""
    from optimum.exporters.onnx.base import OnnxConfigWithPast
    from optimum.exporters.tasks import TasksManager

    decoder = config.get("decoder")
    if not isinstance(decoder, dict) or not isinstance(decoder.get("model_type"), str):
        return True
    try:
        constructor = TasksManager.get_exporter_config_constructor(
            exporter="onnx", model_type=decoder["model_type"], task="feature-extraction", library_name="transformers")
    except (KeyError, ValueError):
        return True  # Optimum's export says what it cannot do
    return issubclass(getattr(constructor, "func", constructor), OnnxConfigWithPast)


def _optimum_export(folder: Path, out: Path, task: str, config: Mapping[str, Any], opset: int | None,
                    check: bool) -> dict[str, Any]:
    """Optimum's main_export of a local folder into out; returns what export_config records of it."""
    from optimum.exporters.onnx import main_export
    from optimum.exporters.tasks import TasksManager

    model_type = str(config.get("model_type", ""))
    wanted = _OPTIMUM_TASKS.get(task, task)
    try:
        supported = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except KeyError:
        raise MetadataExtractionError(f"Optimum's exporter does not know the model type {model_type!r}") from None
    optimum_task = f"{wanted}-with-past" if f"{wanted}-with-past" in supported and _decoder_has_past(config) else wanted
    if optimum_task not in supported:
        raise MetadataExtractionError(f"Optimum cannot export a {model_type} model for {task} (as {wanted}); it "
                                      f"exports {model_type} for: {', '.join(supported)}")
    shapes = {}
    if model_type == "whisper":  # its dummy input must fit the encoder's positions (3000 frames for 1500)
        shapes["nb_max_frames"] = 2 * int(config.get("max_source_positions", 1500))
    try:
        with _quiet(), _optimum_notes():
            main_export(os.fspath(folder), out, task=optimum_task, opset=opset, library_name="transformers", device="cpu",
                        do_validation=check, no_post_process=config.get("is_encoder_decoder") is True,
                        trust_remote_code=False, **shapes)
    except Exception as exc:  # Optimum, transformers and torch raise anything
        logger.debug("Optimum's export failed", exc_info=True)
        raise MetadataExtractionError(
            f"Optimum's exporter failed on {folder.name} ({task}): {type(exc).__name__}: {str(exc).strip()[:400]}"
        ) from None
    return {"exporter": "optimum", "exporter_task": optimum_task}


def _text_inputs(metadata: Mapping[str, Any], parameters: Sequence[str], task: str) -> list[str]:
    """The tokenizer's outputs the model's forward takes (plus position_ids for a decoder without a cache)."""
    made = (metadata.get(rt.KEY_TOKENIZER_CONFIG) or {}).get("model_input_names") or [
        "input_ids", "attention_mask", "token_type_ids"]
    names = [n for n in made if n in parameters]
    if task == "text-generation" and "position_ids" in parameters:
        names.append("position_ids")
    return names


def _processor(metadata: Mapping[str, Any], kind: str, task: str) -> Any:
    """The image processor or feature extractor the runtime rebuilds from the discovered metadata, which task needs."""
    processor = rt.load_processor(metadata, kind)
    if processor is None:
        raise MetadataExtractionError(f"{task} needs the model's {kind.replace('_', ' ')} ({PROCESSOR_FILES}), which the "
                                      "folder lacks")
    return processor


def _check_processors(task: str, metadata: Mapping[str, Any]) -> None:
    """Before the slow export: the processors the runtime builds for task (its declared PROCESSORS kinds) are there."""
    task_class = rt.TASKS.get(task)
    if task_class is not None:  # the class that runs this model's kind (document QA: Donut's, or LayoutLM's)
        task_class = task_class.variant(metadata)
    for kind in getattr(task_class, "processors", ()):
        if kind != "tokenizer":  # discovery fails on a folder whose tokenizer it cannot read
            _processor(metadata, kind, task)


def _dummy_inputs(task: str, metadata: Mapping[str, Any], parameters: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inputs to trace with, made by the runtime's own processors where shapes matter, and their dynamic axes."""
    import numpy as np
    import torch

    inputs: dict[str, Any] = {}
    axes: dict[str, Any] = {}
    if task in ("image-classification", "image-feature-extraction", "zero-shot-image-classification",
                "zero-shot-object-detection"):
        pixels = _processor(metadata, "image_processor", task)([np.zeros((224, 224, 3), dtype=np.uint8)])["pixel_values"]
        inputs["pixel_values"] = torch.randn(2, *pixels.shape[1:])
        axes["pixel_values"] = _BATCH
    if task == "object-detection":  # the processor keeps the aspect ratio: height and width vary
        processed = _processor(metadata, "image_processor", task)([np.zeros((240, 320, 3), dtype=np.uint8)] * 2)
        inputs["pixel_values"] = torch.randn(*processed["pixel_values"].shape)
        axes["pixel_values"] = {0: "batch", 2: "height", 3: "width"}
        if "pixel_mask" in parameters and "pixel_mask" in processed:
            inputs["pixel_mask"] = torch.from_numpy(processed["pixel_mask"])
            axes["pixel_mask"] = {0: "batch", 1: "height", 2: "width"}
    if task in _DENSE_TASKS:  # one output pixel per input pixel: height and width vary where the processor keeps them
        processor = _processor(metadata, "image_processor", task)
        # a small image to trace with (the axes stay dynamic): Swin2SR's window attention at 240x320 held some 20 GB
        # of traced intermediates for a lightweight x2 model; height and width differ so that neither is baked in
        inputs["pixel_values"] = torch.randn(2, *processor([np.zeros((72, 96, 3), dtype=np.uint8)])["pixel_values"].shape[1:])
        axes["pixel_values"] = _BATCH if processor.output_size else {0: "batch", 2: "height", 3: "width"}
        if (metadata.get(rt.KEY_MODEL_CONFIG) or {}).get("model_type") == "detr" and "pixel_mask" in parameters:
            # DETR's panoptic head reads which pixels are padding (a pad_size pads each image)
            inputs["pixel_mask"] = torch.ones((2, *inputs["pixel_values"].shape[2:]), dtype=torch.long)
            axes["pixel_mask"] = {0: "batch", 1: "height", 2: "width"} if len(axes["pixel_values"]) > 1 else _BATCH
    if task in ("audio-classification", "automatic-speech-recognition"):
        extractor = _processor(metadata, "feature_extractor", task)
        features = extractor([np.zeros(extractor.sampling_rate, dtype=np.float32)] * 2)
        for name, array in features.items():
            if name in parameters:
                inputs[name] = torch.from_numpy(np.ascontiguousarray(array))
                axes[name] = _TOKENS if array.ndim == 2 else _BATCH  # a waveform's samples vary, a spectrogram is fixed
    if task == "zero-shot-audio-classification":
        # each clip featurized alone, as the pipeline does (with fusion every clip is then is_longer: the fused path is
        # traced); an unfused CLAP ignores is_longer, which is then no graph input
        extractor = _processor(metadata, "feature_extractor", task)
        clips = [extractor([np.zeros(extractor.sampling_rate, dtype=np.float32)], np.random.RandomState(0)) for _ in "ab"]
        audio_config = (metadata[rt.KEY_MODEL_CONFIG].get("audio_config") or {})
        for name in ("input_features", "is_longer") if audio_config.get("enable_fusion") else ("input_features",):
            inputs[name] = torch.from_numpy(np.concatenate([features[name] for features in clips]))
            axes[name] = _BATCH
    if task not in ("audio-classification", "automatic-speech-recognition", "image-classification",
                    "image-feature-extraction", "object-detection", *_DENSE_TASKS):
        clip = task in ("zero-shot-image-classification", "zero-shot-object-detection", "zero-shot-audio-classification")
        # OWL-ViT's texts are the queries of each image, one image's after another: 3 per image of the 2
        rows = 6 if task == "zero-shot-object-detection" else 3 if clip else 2
        for name in _text_inputs(metadata, parameters, task):
            fill = 0 if name == "token_type_ids" else 1
            inputs[name] = torch.full((rows, 7), fill, dtype=torch.long)
            axes[name] = {0: "texts", 1: "sequence"} if clip else _TOKENS
    if task == "document-question-answering" and "bbox" in parameters:  # LayoutLM: a box (x0, y0, x1, y1) per token
        inputs["bbox"] = torch.tensor([10, 20, 30, 40], dtype=torch.long).expand(2, 7, 4).contiguous()
        axes["bbox"] = _TOKENS
    return inputs, axes


@contextlib.contextmanager
def traceable_depth_anything() -> Iterator[None]:
    """Depth Anything's head with its upsampling size left as traced values while torch.onnx traces it: transformers
    wraps that size in int(), which bakes the example's height and width into the graph."""
    import torch
    from transformers.models.depth_anything import modeling_depth_anything as module

    head = module.DepthAnythingDepthEstimationHead
    original = head.forward

    def forward(self: Any, hidden_states: list[Any], patch_height: Any, patch_width: Any) -> Any:
        depth = self.conv1(hidden_states[self.head_in_index])
        depth = torch.nn.functional.interpolate(depth, (patch_height * self.patch_size, patch_width * self.patch_size),
                                                mode="bilinear", align_corners=True)
        depth = self.activation2(self.conv3(self.activation1(self.conv2(depth)))) * self.max_depth
        return depth.squeeze(dim=1)

    head.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        head.forward = original  # type: ignore[method-assign]


def _torch_export(folder: Path, path: Path, task: str, metadata: Mapping[str, Any], opset: int | None) -> dict[str, Any]:
    """torch.onnx.export (TorchScript) of the model's head for task; returns what export_config records of it."""
    import inspect

    import torch
    import transformers

    model_type = (metadata.get(rt.KEY_MODEL_CONFIG) or {}).get("model_type")
    query = task == "image-segmentation" and model_type in _QUERY_SEGMENTERS
    auto_class, wanted = _QUERY_SEGMENTATION if query else _TORCH_TASKS[task]
    if query and model_type == "mask2former" and _processor(metadata, "image_processor", task).output_size is None:
        raise MetadataExtractionError(
            "torch.onnx traces Mask2Former's deformable attention at one image size only (the feature maps' sizes become "
            "constants), and this image processor keeps each image's aspect ratio: the graph would be wrong for other "
            "sizes; set the processor's size to {height, width} to export it at that size")
    with _quiet():
        try:
            # eager attention: onnxruntime's optimizer fuses its pattern into Attention, not the one of SDPA
            model = getattr(transformers, auto_class).from_pretrained(os.fspath(folder), attn_implementation="eager",
                                                                      trust_remote_code=False).eval()
        except Exception as exc:  # noqa: BLE001 - from_pretrained raises ValueError, OSError, KeyError...
            raise MetadataExtractionError(f"transformers cannot load {folder.name} as {auto_class} for {task}: "
                                          f"{str(exc).strip()[:300]}") from None
    if task == "text-to-audio":
        return _vits_export(model, path, opset)
    parameters = list(inspect.signature(model.forward).parameters)
    inputs, axes = _dummy_inputs(task, metadata, parameters)
    options = {"use_cache": False} if task == "text-generation" else {}
    with torch.no_grad():
        result = model(**inputs, **options)
    outputs = [name for name in wanted if getattr(result, name, None) is not None]
    if not outputs:
        raise MetadataExtractionError(f"{type(model).__name__} returns none of {', '.join(wanted)}, which {task} reads")
    names = list(inputs)

    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            result = self.model(**dict(zip(names, tensors)), **options)
            return tuple(getattr(result, name) for name in outputs)

    fixed = task in _DENSE_TASKS and axes["pixel_values"] == _BATCH  # a fixed-size processor: so are the outputs
    outputs_axes = dict.fromkeys(outputs, _BATCH) if fixed else {n: wanted[n] for n in outputs}
    try:
        with _quiet(), traceable_depth_anything() if task == "depth-estimation" else contextlib.nullcontext():
            torch.onnx.export(Heads().eval(), tuple(inputs.values()), os.fspath(path), input_names=names,
                              output_names=outputs, dynamic_axes={**axes, **outputs_axes},
                              opset_version=opset or DEFAULT_OPSET, dynamo=False)
    except Exception as exc:  # the exporter raises torch's errors, onnx's, RuntimeError...
        logger.debug("torch.onnx.export failed", exc_info=True)
        raise MetadataExtractionError(
            f"torch.onnx.export failed on {type(model).__name__} ({task}): {type(exc).__name__}: {str(exc).strip()[:400]}; "
            f"Optimum's exporter may handle it: {OPTIMUM_INSTALL}"
        ) from None
    if query and axes["pixel_values"] != _BATCH:
        _check_other_sizes(Heads().eval(), path, metadata, names, outputs)
    return {"exporter": "torch.onnx", "exporter_task": task}


def _check_other_sizes(heads: Any, path: Path, metadata: Mapping[str, Any], names: Sequence[str],
                       outputs: Sequence[str]) -> None:
    """A segmenter traced at one image size runs as the model at others: the trace keeps Python branches on sizes as
    constants (Swin's window padding: taken or not at the traced size). Two images of other shapes, as the processor
    makes them, through the graph and through torch; a difference refuses the export."""
    import numpy as np
    import onnxruntime
    import torch

    processor = _processor(metadata, "image_processor", "image-segmentation")
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    for height, width in ((96, 72), (50, 150)):
        pixels = processor([np.zeros((height, width, 3), dtype=np.uint8)])["pixel_values"]
        feed = {"pixel_values": np.random.default_rng(0).standard_normal(pixels.shape).astype(np.float32),
                "pixel_mask": np.ones((1, *pixels.shape[2:]), dtype=np.int64)}
        with torch.no_grad():
            expected = heads(*(torch.from_numpy(feed[name]) for name in names))
        failure = "different outputs"
        try:
            actual = session.run(list(outputs), {name: feed[name] for name in names})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors: a reshape to the traced size...
            actual, failure = [], f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        if not actual or any(a.shape != tuple(e.shape) or np.abs(a - e.numpy()).max() > 1e-3 * max(1.0, float(e.abs().max()))
                             for a, e in zip(actual, expected)):
            raise MetadataExtractionError(
                f"the graph torch.onnx traced at one image size does not run as the model at {pixels.shape[2]}x"
                f"{pixels.shape[3]} ({failure}): branches on the image's size were traced as constants; export at a "
                "fixed size (the processor's size as {height, width})")


def _vits_export(model: Any, path: Path, opset: int | None) -> dict[str, Any]:
    """A VitsModel as one graph with its noise as inputs (authoring/vits.py); other text-to-waveform models refused."""
    if type(model).__name__ != "VitsModel":
        raise MetadataExtractionError(f"text-to-audio is exported for VITS models (VitsModel, MMS-TTS), not "
                                      f"{type(model).__name__}")
    if int(model.config.num_speakers) > 1:
        logger.warning("%s has %d speakers; the export speaks as the pipeline does without speaker_id (no speaker "
                       "embedding)", type(model).__name__, model.config.num_speakers)
    try:
        with _quiet():
            vits.export_vits(model, path, opset or DEFAULT_OPSET)
    except Exception as exc:  # the exporter raises torch's errors, onnx's, RuntimeError...
        logger.debug("torch.onnx.export failed", exc_info=True)
        raise MetadataExtractionError(f"torch.onnx.export failed on VitsModel: {type(exc).__name__}: "
                                      f"{str(exc).strip()[:400]}") from None
    return {"exporter": "torch.onnx", "exporter_task": "text-to-audio"}


def _generates(task: str, config: Mapping[str, Any]) -> bool:
    """Whether the model is an encoder-decoder that generates (several graphs); DETR's config says is_encoder_decoder
    too (and MaskFormer's DETR decoder), but its encoder and decoder run once, in one graph."""
    return task in SEQ2SEQ_TASKS or (config.get("is_encoder_decoder") is True
                                     and task not in ("object-detection", "image-segmentation"))


def _check_torch_task(task: str, config: Mapping[str, Any]) -> None:
    """Refuse what the torch path cannot make: encoder-decoders, and tasks without a recipe here."""
    if _generates(task, config):
        raise MetadataExtractionError(
            f"{config.get('model_type', 'this')} is an encoder-decoder ({task}): it is exported with Optimum's exporter, "
            f"which is not installed: {OPTIMUM_INSTALL}"
        )
    if task not in _TORCH_TASKS:
        raise MetadataExtractionError(
            f"without Optimum, export makes {', '.join(_TORCH_TASKS)}; for {task} install Optimum's exporter: {OPTIMUM_INSTALL}"
        )


# ------------------------------------------------------------------------------------------------------
# Optimization and quantization (onnxruntime), before the metadata is embedded
# ------------------------------------------------------------------------------------------------------

def _config_value(config: Mapping[str, Any], *names: str) -> int:
    return next((int(config[n]) for n in names if isinstance(config.get(n), int)), 0)


def optimize_graph(src: Path, dst: Path, level: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """onnxruntime's transformer optimizer at Optimum's level: O1 its basic graph optimizations, O2 the extended
    ones and the transformer fusions (attention, layer norm, GELU...), O3 also the GELU approximation.
    Returns what export_config records."""
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = src.absolute(), dst.absolute()
    model_type = str(config.get("model_type", ""))
    ort_type = _ORT_MODEL_TYPES.get(model_type)
    if ort_type is None and level != "O1":
        raise MetadataExtractionError(
            f"onnxruntime's transformer optimizer has no fusions for {model_type!r} models (it fuses "
            f"{', '.join(sorted(_ORT_MODEL_TYPES))}); use --optimize O1 (generic graph optimizations) or none"
        )
    options = FusionOptions(ort_type or "bert")
    # Optimum's defaults where they differ from onnxruntime's: no embedding fusion (it changes the inputs).
    options.enable_embed_layer_norm = False
    options.enable_gelu_approximation = level == "O3"
    # The raw mask: right for any padding side (onnxruntime's BERT default, a mask index, needs right padding).
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    if ort_type == "clip":
        options.enable_group_norm = options.enable_packed_kv = False
    text = config.get("text_config") if ort_type == "clip" else config
    heads = _config_value(text or {}, "num_attention_heads", "n_head", "num_heads")
    hidden = _config_value(text or {}, "hidden_size", "n_embd", "d_model")
    large = bool(data_files(src))
    try:
        with _quiet(), _scratch(dst.parent):
            optimizer = optimize_model(os.fspath(src), ort_type or "bert", heads, hidden, optimization_options=options,
                                       opt_level=1 if level == "O1" else 2, use_gpu=False, only_onnxruntime=level == "O1")
            optimizer.save_model_to_file(os.fspath(dst), use_external_data_format=large)
    except Exception as exc:  # the optimizer raises onnx's, onnxruntime's and its own errors
        logger.debug("onnxruntime's optimizer failed", exc_info=True)
        raise MetadataExtractionError(f"onnxruntime's transformer optimizer failed ({level}, {ort_type or 'generic'}): "
                                      f"{type(exc).__name__}: {str(exc).strip()[:300]}") from None
    fused = {op: n for op, n in optimizer.get_fused_operator_statistics().items() if n} if level != "O1" else {}
    logger.info("optimized %s (%s as %s): %s", src.name, level, ort_type or "generic",
                ", ".join(f"{n} {op}" for op, n in sorted(fused.items())) or "no fusions")
    return {"level": level, "model_type": ort_type or "generic", "fused": fused}


def quantize_graph(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8 quantization (onnxruntime.quantization.quantize_dynamic) of the MatMul, Attention and Gather
    (embedding) weights: signed int8 per output channel, activations quantized at run time (Conv is left in float:
    its int8 kernel is missing on CPU). Per channel, not onnxruntime's default per tensor: on all-MiniLM-L6-v2's real
    weights the sentence embeddings keep a cosine similarity of 0.985-0.995 to float32's (0.945-0.976 per tensor),
    at the same speed. Returns what export_config records."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = src.absolute(), dst.absolute()
    settings = {"mode": "int8", "method": "dynamic", "weight_type": "QInt8", "per_channel": True, "reduce_range": False,
                "op_types": ["MatMul", "Attention", "Gather"], "shape_inference": "symbolic"}
    large = bool(data_files(src))
    try:
        with _quiet(), _scratch(dst.parent) as scratch:
            inferred = scratch / "shapes.onnx"
            # shape inference first (onnxruntime's advice): the quantizer needs the types of fused ops' outputs.
            # Symbolic inference gives up on some graphs (Optimum's wav2vec2, an unknown op): onnx's then.
            try:
                quant_pre_process(os.fspath(src), os.fspath(inferred), skip_optimization=True, auto_merge=True,
                                  save_as_external_data=large)
            except Exception:  # its inference raises a bare Exception, TypeError, ZeroDivisionError...
                logger.debug("symbolic shape inference failed; onnx's shape inference instead", exc_info=True)
                settings["shape_inference"] = "onnx"
                quant_pre_process(os.fspath(src), os.fspath(inferred), skip_optimization=True, skip_symbolic_shape=True,
                                  save_as_external_data=large)
            quantize_dynamic(os.fspath(inferred), os.fspath(dst), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=False, op_types_to_quantize=settings["op_types"],
                             use_external_data_format=large)
    except Exception as exc:  # the quantizer raises onnx's, onnxruntime's and its own errors
        logger.debug("quantize_dynamic failed", exc_info=True)
        raise MetadataExtractionError(f"dynamic int8 quantization failed: {type(exc).__name__}: {str(exc).strip()[:300]}") \
            from None
    return settings


# ------------------------------------------------------------------------------------------------------
# export()
# ------------------------------------------------------------------------------------------------------

def _file_bytes(path: Path) -> int:
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in data_files(path))


def _move_into_place(staged: Path, output: Path) -> None:
    """Rename the staged file (and its data files, first) over the output: same file system, atomic each."""
    for name in data_files(staged):
        target = output.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.parent / name, target)
    os.replace(staged, output)
    fileio.fsync_dir(output.parent)


def _quantization(quantize: str | Quantization | None) -> Quantization | None:
    return Quantization(quantize) if isinstance(quantize, str) else quantize


def _check_choices(optimize: str | None, exporter: str, opset: int | None) -> None:
    if optimize is not None and optimize not in OPTIMIZE_LEVELS:
        raise MetadataExtractionError(f"unknown optimization level {optimize!r}; choose {', '.join(OPTIMIZE_LEVELS)}")
    if exporter not in EXPORTERS:
        raise MetadataExtractionError(f"unknown exporter {exporter!r}; choose {', '.join(EXPORTERS)}")
    if opset is not None and not 7 <= opset <= 30:
        raise MetadataExtractionError(f"--opset must be an ONNX opset version (7 to 30), got {opset}")


def choose_exporter(requested: str, task: str, config: Mapping[str, Any]) -> str:
    """The exporter for a model: onnxruntime-genai's builder for the decoder-only architectures it supports (fused
    operators: several times faster than a plain export), else Optimum's, else torch.onnx; or the one asked for."""
    if task == "background-removal":  # no transformers class: the models (RMBG, BiRefNet) are their repositories' code
        raise MetadataExtractionError(
            "background-removal models (BriaRMBG, BiRefNet) are custom code, which export does not run "
            "(trust_remote_code); take the repository's ONNX file (onnx/model.onnx) or export it with the model's own "
            "code, then embed it: onnxmeta embed model.onnx <model folder> --task background-removal"
        )
    if task == "text-to-audio":  # the runtime feeds VITS its noise: authoring/vits.py's graph, which torch.onnx makes
        if requested not in ("auto", "torch"):
            raise MetadataExtractionError(f"text-to-audio (VITS) is exported with torch.onnx, its noise as graph inputs "
                                          f"that a seed fills (Optimum's graph draws it inside); not with --exporter "
                                          f"{requested}")
        _check_torch_task(task, config)
        return "torch"
    if task == "document-question-answering" and config.get("model_type") == "layoutlm" and requested == "auto":
        _check_torch_task(task, config)  # Optimum has no LayoutLM document QA: torch.onnx with bbox
        return "torch"
    if task == "zero-shot-audio-classification" and requested == "auto":  # Optimum has no such task: the whole
        _check_torch_task(task, config)  # ClapModel (both towers, logits_per_audio) is one torch.onnx graph
        return "torch"
    if requested == "genai" or (requested == "auto" and task == "text-generation" and genai.supports(config)
                                and genai.available()):
        if task != "text-generation" or not genai.supports(config):
            architecture = (config.get("architectures") or ["?"])[0]
            raise MetadataExtractionError(f"onnxruntime-genai's builder exports decoder-only text generation models "
                                          f"({', '.join(sorted(genai.ARCHITECTURES))}), not {architecture} for {task}")
        if not genai.available():
            raise MetadataExtractionError(f"--exporter genai needs onnxruntime-genai, transformers 5 and torch: "
                                          f"{genai.GENAI_INSTALL}")
        return "genai"
    if requested == "optimum" or (requested == "auto" and optimum_available()):
        if not optimum_available():
            raise MetadataExtractionError(f"--exporter optimum needs Optimum's exporter: {OPTIMUM_INSTALL}")
        return "optimum"
    _check_torch_task(task, config)
    return "torch"


def _dynamic(quantization: Quantization | None, task: str, seq2seq: bool) -> bool:
    """Whether int8 is onnxruntime's dynamic quantization: for graphs that run whole inputs (encoders, classifiers),
    where it measured 1.3-3x faster than float32 on all-MiniLM-L6-v2 and BERT-base shapes, and weight-only int8 only
    1.03-1.3x; a generating graph (a decoder step, one token a row) runs weight-only int8 as fast or faster, more
    accurately, and stores a tied table once (bench/bench_quantize.py)."""
    return quantization is not None and quantization.mode == "int8" and not seq2seq and task != "text-generation"


@dataclass
class _Graphs:
    """What the export step leaves: the plain float32 graph (tied weights stored once) and the changed one."""

    plain: Path
    final: Path
    how: dict[str, Any]
    changes: dict[str, Any]
    layout: dict[str, Any] | None = None


def _reads_tokens(path: Path) -> bool:
    """Whether a graph looks up a table by its token ids (an encoder of text, not of audio features)."""
    return bool(token_tables(load(path)))


def _graph_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


def _shrunk(exported: Path, out: Path, quantization: Quantization | None,
            dynamic: Sequence[str] = ()) -> tuple[Path, dict[str, Any]]:
    """Every graph of an export (one, or an encoder-decoder's parts) with its weights tied and quantized into out,
    the graphs named in dynamic with onnxruntime's dynamic int8; the folder and what was done."""
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    for path in _graph_files(exported):
        if path.name in dynamic:
            done[path.name] = {"tied": [], "quantized": quantize_graph(path, out / path.name)}
        else:
            done[path.name] = shrink(path, out / path.name, quantization)
    for name in ("config.json", "generation_config.json"):  # what the merge's layout recognition may read
        if (exported / name).is_file():
            shutil.copyfile(exported / name, out / name)
    tied = [t for part in done.values() for t in part["tied"]]
    record: dict[str, Any] = {"tied": tied, "tied_bytes": sum(t["bytes"] for t in tied)}
    quantized = {name: part["quantized"] for name, part in done.items() if "quantized" in part}
    if quantized:
        record["quantized"] = quantized
    return out, record


def _one_graph(folder: Path, tmp: Path, metadata: Mapping[str, Any], name: str) -> tuple[Path, dict[str, Any] | None]:
    """An export folder as ONE graph: an encoder-decoder's parts merged, else its model.onnx."""
    if is_seq2seq_export(folder):
        merged = tmp / f"merged-{name}" / "model.onnx"
        return merged, merge_export(folder, merged, metadata).layout
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx", None
    found = ", ".join(sorted(p.name for p in folder.glob("*.onnx"))) or "no .onnx file"
    raise MetadataEmbeddingError(f"the export wrote {found}, not one model.onnx; it cannot be one file")


def _genai_graphs(folder: Path, tmp: Path, quantization: Quantization | None) -> _Graphs:
    """onnxruntime-genai's builder: the requested precision, and float32 for the quality card (model.onnx + .data
    folded into one file each, the builder's genai_config.json left out: the metadata says what it says)."""
    out: dict[str, Path] = {}
    how: dict[str, Any] = {}
    for name, chosen in ((("plain", None), ("final", quantization)) if quantization else (("plain", None),)):
        built = tmp / f"genai-{name}"
        with progress.step(f"exporting with onnxruntime-genai's builder ({genai.precision(chosen)[0]})"):
            how = genai.build(folder, built, chosen, tmp / "genai-cache")
            out[name] = tmp / f"{name}.onnx"
            save(load(built / "model.onnx"), out[name])  # one file when under 2 GB
    final = out.get("final", out["plain"])
    # the fused operators the builder wrote (GroupQueryAttention, SkipSimplifiedLayerNormalization, MatMulNBits...)
    changes: dict[str, Any] = {"operators": sorted(rt.graph_operators(final))}
    if quantization:
        changes["quantize"] = quantization.settings()
    return _Graphs(out["plain"], final, how, changes)


def _plain_export(folder: Path, exported: Path, chosen: str, task: str, metadata: Mapping[str, Any],
                  options: Mapping[str, Any]) -> dict[str, Any]:
    exported.mkdir()
    with progress.step(f"exporting {task} with {'Optimum' if chosen == 'optimum' else 'torch.onnx'}"):
        if chosen == "optimum":
            return _optimum_export(folder, exported, task, metadata[rt.KEY_MODEL_CONFIG], options["opset"],
                                   options["validate"])
        return _torch_export(folder, exported / "model.onnx", task, metadata, options["opset"])


def _exported_graphs(folder: Path, tmp: Path, chosen: str, task: str, metadata: Mapping[str, Any],
                     options: Mapping[str, Any]) -> _Graphs:
    """Export, store tied weights once, quantize each graph (an encoder-decoder's parts before the merge), merge,
    optimize: the plain float32 graph and the final one."""
    quantization: Quantization | None = options["quantize"]
    if chosen == "genai":
        return _genai_graphs(folder, tmp, quantization)
    how = _plain_export(folder, tmp / "export", chosen, task, metadata, options)
    seq2seq = is_seq2seq_export(tmp / "export")
    dynamic = _dynamic(quantization, task, seq2seq)
    with progress.step("storing tied weights once"):
        plain_parts, weights = _shrunk(tmp / "export", tmp / "plain-parts", None)
    plain, layout = _one_graph(plain_parts, tmp, metadata, "plain")
    final, changes = plain, {"weights": weights}
    if quantization is not None and not dynamic:
        # int8 of an encoder-decoder: its encoder runs whole inputs, dynamically quantized (faster there), unless it
        # looks up the token table the decoders share (T5's, BART's): packed once for all of them instead
        encoder = (rt.ENCODER_FILE,) if seq2seq and quantization.mode == "int8" and not _reads_tokens(
            plain_parts / rt.ENCODER_FILE) else ()
        with progress.step(f"quantizing ({quantization.mode})"):
            parts, done = _shrunk(plain_parts, tmp / "quantized-parts", quantization, encoder)
            final, _ = _one_graph(parts, tmp, metadata, "quantized")
        changes["quantize"] = {**quantization.settings(), "nodes": done.get("quantized", {})}
        if encoder:
            changes["quantize"]["encoder_method"] = "dynamic"
    if options["optimize"]:
        with progress.step(f"optimizing ({options['optimize']})"):
            changes["optimize"] = optimize_graph(final, tmp / "optimized.onnx", options["optimize"],
                                                 metadata[rt.KEY_MODEL_CONFIG])
            final = tmp / "optimized.onnx"
    if dynamic:
        with progress.step("quantizing (dynamic int8)"):
            changes["quantize"] = quantize_graph(final, tmp / "quantized.onnx")
            final = tmp / "quantized.onnx"
    return _Graphs(plain, final, how, changes, layout)


def _staged(graphs: _Graphs, tmp: Path, metadata: Mapping[str, Any], output: Path,
            provenance: Mapping[str, Any]) -> tuple[Path, Path, dict[str, Any], Any]:
    """The final graph with its metadata (export_config and, for a changed graph, its quality card) in tmp, and
    the plain one beside it: (staged, plain, export_config, embed report)."""
    libraries = _versions("onnxmeta", "transformers", "torch", "optimum", "optimum-onnx", "onnxruntime", "onnx",
                          "onnxruntime-genai", "tokenizers", "huggingface_hub")
    libraries["onnxmeta"] = rt.__version__
    export_config = {**rt.model_info(graphs.final), **provenance, **graphs.how, **graphs.changes, "libraries": libraries}
    threshold = compress_threshold(metadata[rt.KEY_EMBEDDING_LEVEL], True, None)
    plain = tmp / "plain" / output.name
    embed(graphs.plain, {**metadata, rt.KEY_EXPORT_CONFIG: {**export_config, **rt.model_info(graphs.plain)}}, plain,
          compress_threshold=threshold)
    staged = tmp / "out" / output.name
    if graphs.final != graphs.plain:
        draft = tmp / "draft" / output.name
        embed(graphs.final, {**metadata, rt.KEY_EXPORT_CONFIG: export_config}, draft, compress_threshold=threshold)
        with progress.step("measuring the quality card on probe inputs"):
            card = quality_card(plain, draft)
        export_config = {**export_config, "quality": card.as_dict()}
    else:
        card = None
    report = embed(graphs.final, {**metadata, rt.KEY_EXPORT_CONFIG: export_config}, staged, compress_threshold=threshold)
    return staged, plain, export_config, (report, card)


def export(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    task: str | None = None,
    revision: str | None = None,
    opset: int | None = None,
    level: str = "full",
    optimize: str | None = None,
    quantize: str | Quantization | None = None,
    exporter: str = "auto",
    validate: bool = True,
) -> ExportReport:
    """Export a hub id or local model folder to ONE ONNX file with its metadata embedded.

    The exporter (choose_exporter): onnxruntime-genai's builder for the decoder-only LLMs it supports, else Optimum's
    when it is installed, else torch.onnx.export (tasks of one graph); an encoder-decoder is merged into one file.
    Tied weights are stored once. quantize (a mode of weights.QUANTIZE_MODES, or a Quantization with its settings)
    and optimize ("O1", "O2", "O3") change the graph; the file then carries a quality card against the float32
    export. validate checks the file (and Optimum's exporter its outputs against PyTorch's) before it replaces output.
    """
    quantization = _quantization(quantize)
    _check_choices(optimize, exporter, opset)
    embedding_level(level)
    if importlib.util.find_spec("torch") is None:
        raise MetadataExtractionError(f"export runs the model's PyTorch code, and torch is not installed: {EXPORT_EXTRA}")
    output = Path(output)
    if output.is_dir():
        raise MetadataEmbeddingError(f"{output} is a folder; name the file to write, e.g. {output / 'model.onnx'}")
    folder, provenance = _source(model, revision)  # a download shows huggingface_hub's own progress bars
    with progress.step("discovering its metadata"):
        metadata = MetadataDiscovery().discover_folder(folder, level=level, task=task)
    chosen_task = metadata.get(rt.KEY_PIPELINE_TASK)
    if chosen_task is None:
        raise TaskDetectionError(f"no pipeline task found for {os.fspath(model)}; pass --task")
    if level != "minimal":  # no processor is embedded at the minimal level, by the caller's choice
        _check_processors(chosen_task, metadata)
    config = metadata[rt.KEY_MODEL_CONFIG]
    if optimize and _generates(chosen_task, config):
        raise MetadataExtractionError(f"--optimize is not available for encoder-decoders ({chosen_task}) yet: the "
                                      "transformer optimizer has no fusions for their parts; export without it")
    chosen = choose_exporter(exporter, chosen_task, config)
    if chosen == "genai" and optimize:
        raise MetadataExtractionError("onnxruntime-genai's builder writes fused operators already: --optimize does not "
                                      "apply to --exporter genai")
    options = {"opset": opset, "validate": validate, "quantize": quantization, "optimize": optimize}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", suffix=".export", dir=output.parent) as tmp_name:
        tmp = Path(tmp_name).resolve()  # absolute: onnxruntime's tools run in a scratch folder (_scratch)
        graphs = _exported_graphs(folder, tmp, chosen, chosen_task, metadata, options)
        with progress.step("embedding the metadata"):
            staged, plain, export_config, (report, card) = _staged(graphs, tmp, metadata, output, provenance)
        checks: list[Check] = []
        if validate:
            with progress.step("validating"):
                # an essential-level file cannot rebuild its tokenizer by design: its processor is not checked
                checks = validate_file(staged, check_processor=metadata[rt.KEY_EMBEDDING_LEVEL] == "full")
            failed = [c for c in checks if not c.ok]
            if failed:
                raise MetadataValidationError(
                    f"the exported file fails validation, so {output} was not written: "
                    + "; ".join(f"{c.name}: {c.message}" for c in failed) + " (--no-validate writes it anyway)"
                )
        file_bytes, plain_bytes = _file_bytes(staged), _file_bytes(plain)
        _move_into_place(staged, output)
    return ExportReport(os.fspath(output), chosen_task, export_config["exporter"], export_config, file_bytes, plain_bytes,
                        report.entries, card, checks, graphs.layout)
