"""Tiny random-weight object detectors for the object-detection tests: DETR (a tiny ResNet backbone, no timm),
Conditional DETR and YOLOS, built offline, their class heads calibrated so that several detections pass the
pipeline's threshold of 0.5 and differ from image to image; exported with torch.onnx (dynamic batch, height and
width)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers import positional

LABELS = dict(enumerate(["cat", "dog", "bird", "fish", "car"]))
# Small images: the shortest edge resized to 48, the longest capped at 80 (the pipeline's default is 800 / 1333).
SIZE = {"shortest_edge": 48, "longest_edge": 80}


def _labels() -> dict[str, Any]:
    return {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}


def _calibrate(layers: Sequence[Any], gain: float, seed: int) -> None:
    """Class head layers drawn afresh (normal, gain / sqrt(fan in), no bias): logits large enough for confident,
    image-dependent classes."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * gain / layer.weight.shape[1] ** 0.5)
            layer.bias.zero_()


def _detr_config(cls: Any, **config: Any) -> Any:
    from transformers import ResNetConfig

    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    return cls(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=16, encoder_layers=1,
               decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
               num_queries=12, init_std=0.5, init_xavier_std=1.0, **_labels(), **config)


def _detr_family(folder: Path, seed: int, names: tuple[str, str, str]) -> Any:
    """A random-weight model of the DETR family (config, model and image processor class names in transformers),
    its class head calibrated, saved in folder with its image processor (PIL backend); returns it."""
    import torch
    import transformers

    config_class, model_class, processor_class = (getattr(transformers, name) for name in names)
    config = _detr_config(config_class)
    config.architectures = [names[1]]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    _calibrate([model.class_labels_classifier], 4.0, seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor_class(size=SIZE).save_pretrained(folder)
    return model


def tiny_detr(folder: Path, *, seed: int = 0) -> Any:
    """A random-weight DetrForObjectDetection saved in folder with a DETR image processor; returns it."""
    return _detr_family(folder, seed, ("DetrConfig", "DetrForObjectDetection", "DetrImageProcessorPil"))


def tiny_conditional_detr(folder: Path, *, seed: int = 0) -> Any:
    """A random-weight ConditionalDetrForObjectDetection (sigmoid scores, no no-object class) with its image
    processor; returns it."""
    return _detr_family(folder, seed, ("ConditionalDetrConfig", "ConditionalDetrForObjectDetection",
                                       "ConditionalDetrImageProcessorPil"))


def tiny_yolos(folder: Path, *, seed: int = 0) -> Any:
    """A random-weight YolosForObjectDetection saved in folder with a YOLOS image processor (PIL backend); returns it.
    Its detection tokens and position embeddings (zeros at initialisation: every token would answer alike) are drawn
    at random."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    config = YolosConfig(image_size=[32, 48], patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, num_detection_tokens=10, initializer_range=0.1, **_labels())
    config.architectures = ["YolosForObjectDetection"]
    torch.manual_seed(seed)
    model = YolosForObjectDetection(config).eval()
    generator = torch.Generator().manual_seed(seed + 2)
    embeddings = model.vit.embeddings
    with torch.no_grad():
        embeddings.detection_tokens.copy_(torch.randn(embeddings.detection_tokens.shape, generator=generator))
        embeddings.position_embeddings.copy_(torch.randn(embeddings.position_embeddings.shape, generator=generator) * 0.1)
    _calibrate(list(model.class_labels_classifier.layers), 3.0, seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    YolosImageProcessorPil(size=SIZE).save_pretrained(folder)
    return model


def export_detection_onnx(model: Any, path: Path, input_names: Sequence[str]) -> Path:
    """torch.onnx.export of a detector: pixel_values (and pixel_mask when named) with dynamic batch, height and width;
    logits and pred_boxes out."""
    import torch

    outputs = ("logits", "pred_boxes")
    dummies = {"pixel_values": torch.randn(2, 3, 48, 64), "pixel_mask": torch.ones((2, 48, 64), dtype=torch.long)}
    axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "pixel_mask": {0: "batch", 1: "height", 2: "width"},
            "logits": {0: "batch"}, "pred_boxes": {0: "batch"}}
    torch.onnx.export(positional(model, input_names, outputs)().eval(), tuple(dummies[n] for n in input_names), path,
                      input_names=list(input_names), output_names=list(outputs),
                      dynamic_axes={n: axes[n] for n in (*input_names, *outputs)}, opset_version=17, dynamo=False)
    model.eval()
    return path


def detection_images(root: Path) -> list[Any]:
    """Images of many sizes and modes (RGBA, greyscale, palette, CMYK, tiny, thin, odd), and EXIF-rotated JPEGs in root."""
    from image_helpers import exif_rotated_jpeg, synthetic

    items: list[Any] = [synthetic(w, h, mode, seed=i) for i, (w, h, mode) in enumerate(
        [(64, 48, "RGB"), (20, 90, "L"), (120, 40, "RGBA"), (7, 5, "P"), (48, 64, "CMYK"), (300, 200, "RGB"),
         (17, 33, "LA"), (225, 223, "RGB"), (3, 120, "RGB")])]
    items += [str(exif_rotated_jpeg(root / f"rotated-{o}.jpg", o, (90, 50))) for o in (3, 6, 8)]
    return items


def assert_detections(actual: Any, expected: Any, tol: float = 1e-4) -> float:
    """Detections of each image alike: labels and boxes identical, in order, scores within tol; the largest score
    difference."""
    assert [[(d["label"], d["box"]) for d in image] for image in actual] == \
        [[(d["label"], d["box"]) for d in image] for image in expected]
    differences = [abs(a["score"] - e["score"]) for x, y in zip(actual, expected) for a, e in zip(x, y)]
    assert max(differences, default=0.0) <= tol
    return max(differences, default=0.0)
