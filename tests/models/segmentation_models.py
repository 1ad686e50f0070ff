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


# --- MaskFormer and Mask2Former: a mask and a label per query ------------------------------------------------------
# Small images: MaskFormer's shortest edge resized to 64, the longest capped at 96, then up to multiples of 32;
# Mask2Former's to 64 x 96 (its deformable attention traces at one size only: torch.onnx bakes the feature maps' sizes).
QUERY_SIZES = {"maskformer": {"shortest_edge": 64, "longest_edge": 96}, "mask2former": {"height": 64, "width": 96}}
QUERY_ARCHITECTURES = {"maskformer": "MaskFormerForInstanceSegmentation", "mask2former": "Mask2FormerForUniversalSegmentation"}


def _tiny_swin() -> Any:
    from transformers import SwinConfig

    return SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=2,
                      out_features=["stage1", "stage2", "stage3", "stage4"])


def tiny_query_segmenter(folder: Path, family: str, *, seed: int = 0, gain: float = 8.0, spread: float = 4.0) -> Any:
    """A random-weight MaskFormerForInstanceSegmentation or Mask2FormerForUniversalSegmentation (a tiny Swin backbone,
    12 queries; GroupNorm's 32 groups set the feature sizes), saved in folder with its PIL image processor; its weights
    drawn wide (init_std 1) and its label head drawn afresh (normal, gain / sqrt(fan in)), so that queries differ, some
    labels score above the pipeline's threshold of 0.9 and the masks change with the image."""
    import torch
    import transformers
    from transformers import DetrConfig

    if family == "maskformer":
        decoder = DetrConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                             decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=12, init_std=1.0)
        config: Any = transformers.MaskFormerConfig(backbone_config=_tiny_swin(), decoder_config=decoder, fpn_feature_size=32,
                                                    mask_feature_size=32, init_std=1.0, **_labels())
    else:
        config = transformers.Mask2FormerConfig(backbone_config=_tiny_swin(), feature_size=32, mask_feature_size=32,
                                                hidden_dim=32, encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2,
                                                num_attention_heads=2, dim_feedforward=32, num_queries=12, init_std=1.0,
                                                **_labels())
    config.architectures = [QUERY_ARCHITECTURES[family]]
    torch.manual_seed(seed)
    model = getattr(transformers, QUERY_ARCHITECTURES[family])(config).eval()
    head = model.class_predictor
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * gain / head.weight.shape[1] ** 0.5)
        head.bias.zero_()
        # the mask embedder's last layer scaled so that mask logits spread as asked (unsaturated sigmoids: few exact ties)
        last = [m for m in next(m for n, m in model.named_modules() if n.endswith("mask_embedder")).modules()
                if isinstance(m, torch.nn.Linear)][-1]
        images = torch.rand(4, 3, 64, 96, generator=generator) * 4 - 2
        std = model(pixel_values=images).masks_queries_logits.std()
        last.weight.mul_(spread / std)
        last.bias.mul_(spread / std)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor = {"maskformer": "MaskFormerImageProcessorPil", "mask2former": "Mask2FormerImageProcessorPil"}[family]
    getattr(transformers, processor)(size=QUERY_SIZES[family]).save_pretrained(folder)
    return model



def tiny_detr_segmenter(folder: Path, *, seed: int = 0, gain: float = 4.0) -> Any:
    """A random-weight DetrForSegmentation (DETR with its panoptic mask head; a tiny four-stage ResNet backbone, no timm:
    the mask head reads three of its stages; d_model plus heads a multiple of 8), 12 queries, saved in folder with
    DETR's PIL image processor; its label head drawn afresh (normal, gain / sqrt(fan in)) so that segments pass the
    thresholds."""
    import torch
    from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessorPil, ResNetConfig

    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=64,
                        encoder_layers=1, decoder_layers=1, encoder_attention_heads=8, decoder_attention_heads=8,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=12, init_std=0.5, init_xavier_std=1.0,
                        **_labels())
    config.architectures = ["DetrForSegmentation"]
    torch.manual_seed(seed)
    model = DetrForSegmentation(config).eval()
    head = model.detr.class_labels_classifier
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * gain / head.weight.shape[1] ** 0.5)
        head.bias.zero_()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    DetrImageProcessorPil(size={"shortest_edge": 48, "longest_edge": 80}).save_pretrained(folder)
    return model
