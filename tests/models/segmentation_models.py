"""Tiny random-weight semantic segmentation models (SegFormer; UperNet with a tiny ConvNext backbone) for the
segmentation tests, saved with SegFormer's PIL image processor, their classifiers calibrated so that several labels
win somewhere in most images (random weights alone leave one label everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = ["sky", "road", "tree", "car", "person", "water"]


def _calibrate(model: Any, classifier: Any, size: int, seed: int) -> None:
    """Scale the classifier up and centre each label's logit over random images, so labels alternate across pixels."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(6, 3, size, size, generator=generator) * 4 - 2
    with torch.no_grad():
        classifier.weight.mul_(8.0)
        classifier.bias.zero_()
        logits = model(pixel_values=images).logits
        classifier.bias.sub_(logits.mean(dim=(0, 2, 3)))


def _save(model: Any, folder: Path, size: int, architecture: str) -> Any:
    from transformers import SegformerImageProcessorPil

    model.config.architectures = [architecture]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    SegformerImageProcessorPil(size={"height": size, "width": size}).save_pretrained(folder)
    return model.eval()


def _labels() -> dict[str, Any]:
    return {"num_labels": len(LABELS), "id2label": dict(enumerate(LABELS)),
            "label2id": {name: i for i, name in enumerate(LABELS)}}


def tiny_segformer(folder: Path, *, seed: int = 0, size: int = 64) -> Any:
    """SegformerForSemanticSegmentation (two encoder blocks; logits at a quarter of the processed size)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
                             strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
                             **_labels())
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(config).eval()
    _calibrate(model, model.decode_head.classifier, size, seed)
    return _save(model, folder, size, "SegformerForSemanticSegmentation")


def tiny_upernet(folder: Path, *, seed: int = 0, size: int = 64) -> Any:
    """UperNetForSemanticSegmentation with a tiny ConvNext backbone (logits at the processed size)."""
    import torch
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, pool_scales=[1, 2],
                           **_labels())
    torch.manual_seed(seed)
    model = UperNetForSemanticSegmentation(config).eval()
    _calibrate(model, model.decode_head.classifier, size, seed)
    return _save(model, folder, size, "UperNetForSemanticSegmentation")


def export_segmentation_onnx(model: Any, path: Path, size: int, *, dynamic_size: bool) -> Path:
    """torch.onnx.export of pixel_values -> logits, the batch dynamic (height and width too where dynamic_size: UperNet's
    pyramid pooling, adaptive average pooling, traces only at a fixed size, which SegFormer's processor gives anyway)."""
    import torch
    from helpers import positional

    Wrapped = positional(model, ["pixel_values"], ["logits"])
    spatial = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    torch.onnx.export(Wrapped().eval(), (torch.rand(2, 3, size, size),), path, input_names=["pixel_values"],
                      output_names=["logits"], dynamic_axes={"pixel_values": spatial, "logits": spatial},
                      opset_version=17, dynamo=False)
    model.eval()
    return path
