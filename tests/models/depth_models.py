"""Tiny random-weight depth-estimation (DPT, Depth Anything with a Dinov2 backbone, GLPN) and super-resolution
(Swin2SR) models for the dense image tests, saved with their PIL image processors and exported with torch.onnx
with dynamic height and width (the processors of all but DPT keep each image's aspect ratio; Depth Anything's head
traced as authoring's export traces it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers import positional


def export_dense_onnx(model: Any, path: Path, output: str, height: int, width: int) -> Path:
    """torch.onnx.export of pixel_values -> one (batch, ..., height, width) output, batch, height and width dynamic."""
    import torch

    from authoring.export import traceable_depth_anything

    Wrapped = positional(model, ["pixel_values"], [output])
    model.eval()
    spatial = {0: "batch", 1: "height", 2: "width"} if output == "predicted_depth" else {0: "batch", 2: "height", 3: "width"}
    with traceable_depth_anything():
        torch.onnx.export(Wrapped().eval(), (torch.rand(2, 3, height, width),), path, input_names=["pixel_values"],
                          output_names=[output], dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"},
                                                               output: spatial},
                          opset_version=17, dynamo=False)
    model.eval()
    return path


def _save(model: Any, processor: Any, folder: Path, architectures: Sequence[str]) -> Any:
    model.config.architectures = list(architectures)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


def tiny_dpt(folder: Path, *, seed: int = 0, size: int = 32) -> Any:
    """DPTForDepthEstimation (a ViT backbone, 4 layers) with DPT's processor at size x size (no kept aspect ratio:
    the ViT backbone wants square images)."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    config = DPTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64, neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16,
                       backbone_out_indices=[0, 1, 2, 3])
    torch.manual_seed(seed)
    model = DPTForDepthEstimation(config).eval()
    processor = DPTImageProcessorPil(size={"height": size, "width": size})
    return _save(model, processor, folder, ["DPTForDepthEstimation"])


def tiny_depth_anything(folder: Path, *, seed: int = 0, size: int = 42, **processor: Any) -> Any:
    """DepthAnythingForDepthEstimation with a tiny Dinov2 backbone; its processor is DPT's as Depth Anything ships
    it (keep_aspect_ratio, ensure_multiple_of 14, bicubic), at size."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    backbone = Dinov2Config(image_size=size, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=64, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16, head_hidden_size=8)
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    image_processor = DPTImageProcessorPil(**{"size": {"height": size, "width": size}, "keep_aspect_ratio": True,
                                              "ensure_multiple_of": 14, **processor})
    return _save(model, image_processor, folder, ["DepthAnythingForDepthEstimation"])


def tiny_glpn(folder: Path, *, seed: int = 0) -> Any:
    """GLPNForDepthEstimation (two encoder blocks) with GLPN's processor (size_divisor 32, bilinear)."""
    import torch
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessorPil

    config = GLPNConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
                        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16, max_depth=10,
                        head_in_index=-1)
    torch.manual_seed(seed)
    model = GLPNForDepthEstimation(config).eval()
    return _save(model, GLPNImageProcessorPil(), folder, ["GLPNForDepthEstimation"])


def tiny_swin2sr(folder: Path, *, seed: int = 0, upscale: int = 2) -> Any:
    """Swin2SRForImageSuperResolution (pixel shuffle, window 4) with Swin2SR's processor (pad to a multiple of 8)."""
    import torch
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution, Swin2SRImageProcessorPil

    config = Swin2SRConfig(image_size=16, patch_size=1, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                           upscale=upscale, upsampler="pixelshuffle", mlp_ratio=2.0)
    torch.manual_seed(seed)
    model = Swin2SRForImageSuperResolution(config).eval()
    return _save(model, Swin2SRImageProcessorPil(), folder, ["Swin2SRForImageSuperResolution"])


def optimum_export_file(folder: Path, output: Path) -> dict[str, Any]:
    """authoring's export of folder with Optimum's exporter, run in the Optimum environment; the report's exporter,
    task and failed checks."""
    import json
    import os
    import subprocess

    from helpers import ROOT, optimum_python

    script = ("import json, sys\nfrom authoring.export import export\n"
              "r = export(sys.argv[1], sys.argv[2], exporter='optimum')\n"
              "print(json.dumps({'exporter': r.exporter, 'task': r.task, 'failed': [c.name for c in r.checks if not c.ok]}))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(optimum_python()), "-c", script, str(folder), str(output)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
