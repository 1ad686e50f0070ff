"""Tiny random-weight matting models for the background-removal tests: a few convolutions to one foreground map,
saved as the custom-code repositories of RMBG-1.4 and BiRefNet / RMBG-2.0 are (config.json naming the class in
architectures and auto_map, a preprocessor_config.json written for transformers.js's ImageFeatureExtractor), exported
with torch.onnx under those repositories' graph names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# name -> what differs: the graph's names, whether the map is probabilities (a sigmoid in the graph) or logits, the
# map's size relative to the processed image, the processor's normalization, and the config.
FAMILIES: dict[str, dict[str, Any]] = {
    # RMBG-1.4: input "input", its map already a sigmoid, at the processed size, then a side output the pipeline ignores
    "rmbg": {"input": "input", "outputs": ["output", "side"], "sigmoid": True, "stride": 1,
             "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1],
             "config": {"architectures": ["BriaRMBG"], "model_type": "SegformerForSemanticSegmentation",
                        "auto_map": {"AutoConfig": "MyConfig.RMBGConfig",
                                     "AutoModelForImageSegmentation": "briarmbg.BriaRMBG"},
                        "in_ch": 3, "out_ch": 1}},
    # BiRefNet / RMBG-2.0: pixel_values in, logits out at half the processed size, ImageNet's mean and std
    "birefnet": {"input": "pixel_values", "outputs": ["alphas"], "sigmoid": False, "stride": 2,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "config": {"architectures": ["BiRefNet"],
                            "auto_map": {"AutoConfig": "BiRefNet_config.BiRefNetConfig",
                                         "AutoModelForImageSegmentation": "birefnet.BiRefNet"}}},
}


def tiny_matting(folder: Path, family: str, *, size: int = 32, seed: int = 0) -> Any:
    """The torch module (pixels -> (batch, 1, h, w) map, and for RMBG a side output) saved as a model folder: config.json
    and preprocessor_config.json (size x size, bilinear, rescale, the family's mean and std). Its last convolution is
    scaled so that the logits spread over several units on random images: alpha from 0 to 255 within each image."""
    import torch

    spec = FAMILIES[family]

    class Matting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(),
                                                torch.nn.Conv2d(8, 8, 3, stride=spec["stride"], padding=1), torch.nn.Tanh())
            self.head = torch.nn.Conv2d(8, 1, 3, padding=1)

        def forward(self, pixels: Any) -> Any:
            features = self.features(pixels)
            logits = self.head(features)
            matte = torch.sigmoid(logits) if spec["sigmoid"] else logits
            return (matte, features.mean(dim=1, keepdim=True)) if len(spec["outputs"]) > 1 else matte

    torch.manual_seed(seed)
    model = Matting().eval()
    with torch.no_grad():
        logits = model.head(model.features(torch.rand(4, 3, size, size) * 4 - 2))
        model.head.weight.mul_(3.0 / float(logits.std()))
        model.head.bias.sub_(float(model.head(model.features(torch.rand(4, 3, size, size) * 4 - 2)).mean()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(spec["config"]), encoding="utf-8")
    processor = {"feature_extractor_type": "ImageFeatureExtractor", "do_resize": True, "size": {"width": size, "height": size},
                 "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_pad": False,
                 "image_mean": spec["mean"], "image_std": spec["std"]}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor), encoding="utf-8")
    return model


def export_matting_onnx(model: Any, family: str, path: Path, size: int = 32, *, batch: int | None = None) -> Path:
    """torch.onnx.export under the family's graph names, the batch dynamic (the processor gives one size), or fixed at
    batch (as rembg's BiRefNet graph has it: 1)."""
    import torch

    spec = FAMILIES[family]
    names = [spec["input"], *spec["outputs"]]
    torch.onnx.export(model, (torch.rand(batch or 2, 3, size, size),), path, input_names=[spec["input"]],
                      output_names=spec["outputs"], dynamic_axes=None if batch else {name: {0: "batch"} for name in names},
                      opset_version=17, dynamo=False)
    return path
