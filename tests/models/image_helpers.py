"""Images and tiny vision models for the image tests: photos, synthetic images of many sizes and modes,
random-weight ViT and CLIP models exported with torch.onnx."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helpers import SHARED, positional

ASSETS = SHARED / "_assets"
PHOTOS = ("australia.jpg", "pineapple.jpg")  # a JPEG, and a PNG (RGBA) despite its name
# Sizes (width, height) the synthetic images come in: tiny, thin both ways, odd, around and below the crops.
SIZES = ((1, 1), (3, 120), (120, 3), (17, 33), (225, 223), (100, 60), (640, 480), (31, 257))
MODES = ("RGB", "RGBA", "LA", "L", "P", "PA", "CMYK", "I;16", "1", "F")


def photo_paths() -> list[Path]:
    """The real photos of ../shared/data/_assets, or an empty list when they are absent."""
    return [ASSETS / name for name in PHOTOS if (ASSETS / name).is_file()]


def synthetic(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Any:
    """A PIL image of random smooth-ish content (gradients and noise) in a mode."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed + width * 7 + height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), (x + y) % 256], axis=-1)
    noise = rng.integers(0, 64, (height, width, 3))
    rgb = Image.fromarray(((base + noise) % 256).astype(np.uint8))
    if mode in ("RGBA", "LA", "PA"):
        alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
        rgba = rgb.convert("RGBA")
        rgba.putalpha(alpha)
        return rgba.convert(mode) if mode != "PA" else rgba.convert("P").convert("PA")
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
    if mode == "F":
        return Image.fromarray(np.asarray(rgb.convert("L")).astype(np.float32) * 1.5)
    return rgb.convert(mode)


def json_lines_answer(runtime: Any, json_lines: Any, folder: Path) -> tuple[Any, str]:
    """The runtime's JSON-lines answer (json_lines: the runtime module's _json_lines) for a 50x40 photo saved in
    folder, and the photo's path."""
    path = folder / "photo.png"
    synthetic(50, 40, seed=3).save(path)
    out = io.StringIO()
    assert json_lines(runtime, {}, io.StringIO(json.dumps(str(path)) + "\n"), out) == 0
    return json.loads(out.getvalue()), str(path)


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def exif_rotated_jpeg(path: Path, orientation: int, size: tuple[int, int] = (60, 40)) -> Path:
    """A JPEG whose EXIF Orientation tag says how to turn it upright."""
    image = synthetic(*size, seed=orientation)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)
    return path


def image_set(root: Path, sizes: Sequence[tuple[int, int, str]]) -> list[Any]:
    """Real photos (paths) when present, synthetic images of the (width, height, mode) sizes, an EXIF-rotated JPEG."""
    items: list[Any] = [str(p) for p in photo_paths()]
    items += [synthetic(w, h, mode, seed=i) for i, (w, h, mode) in enumerate(sizes)]
    items.append(str(exif_rotated_jpeg(root / "rotated.jpg", 6, size=(70, 45))))
    return items


def export_vision_onnx(model: Any, path: Path, input_names: Sequence[str], outputs: Sequence[str], image_size: int) -> Path:
    """torch.onnx.export of a vision (or CLIP) model: dynamic batch (and text) axes; model left in eval mode."""
    import torch

    Wrapped = positional(model, input_names, outputs)
    model.eval()
    dummies = {"pixel_values": torch.randn(2, 3, image_size, image_size), "input_ids": torch.ones((3, 7), dtype=torch.long),
               "attention_mask": torch.ones((3, 7), dtype=torch.long)}
    axes = {"pixel_values": {0: "batch"}, "input_ids": {0: "texts", 1: "sequence"}, "attention_mask": {0: "texts", 1: "sequence"},
            "logits_per_image": {0: "batch", 1: "texts"}}
    dynamic = {name: axes.get(name, {0: "batch"}) for name in (*input_names, *outputs)}
    torch.onnx.export(Wrapped().eval(), tuple(dummies[n] for n in input_names), path, input_names=list(input_names),
                      output_names=list(outputs), dynamic_axes=dynamic, opset_version=17, dynamo=False)
    model.eval()  # export restores training mode; the oracle must not run dropout
    return path


def tiny_vit(folder: Path, head: str, *, seed: int = 0, num_labels: int = 6, image_size: int = 32, **config: Any) -> Any:
    """A random-weight ViT (head "classification": ViTForImageClassification, "base": ViTModel with pooler) saved in
    folder with a ViT image processor for image_size; returns the model."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

    names = ["cat", "dog", "bird", "fish", "tree", "car", "boat", "lamp"][:num_labels]
    labels = {i: n for i, n in enumerate(names)}
    model_config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, initializer_range=0.5, id2label=labels,
                             label2id={v: k for k, v in labels.items()}, **config)
    cls = ViTForImageClassification if head == "classification" else ViTModel
    model_config.architectures = [cls.__name__]
    torch.manual_seed(seed)
    model = cls(model_config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return model


def clip_tokenizer_folder(folder: Path) -> None:
    """The real CLIP tokenizer (openai/clip-vit-base-patch32) when ../shared is present, else a CLIP-style byte-level
    BPE (start and end of text around each text, padded with the end token) trained here."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = SHARED / "openai__clip-vit-base-patch32"
    if source.exists():
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
        return
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["a photo of a cat", "a photo of a dog", "this is a picture of the sea", "a map of a country",
              "a very long description of a scene with many words", "a pineapple on a table"] * 20
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos, eos = tok.token_to_id(specials[0]), tok.token_to_id(specials[1])
    tok.post_processor = processors.TemplateProcessing(single=f"{specials[0]} $A {specials[1]}",
                                                       special_tokens=[(specials[0], bos), (specials[1], eos)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1], pad_token=specials[1],
                            unk_token=specials[1], model_max_length=77).save_pretrained(folder)


def tiny_clip(folder: Path, *, seed: int = 0, image_size: int = 32) -> Any:
    """A random-weight CLIPModel with the CLIP tokenizer and a CLIP image processor, saved as transformers 5 saves a
    CLIPProcessor (processor_config.json); returns the model."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    clip_tokenizer_folder(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                pad_token_id=tok.pad_token_id)
    vision = dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, initializer_range=0.5, initializer_factor=5.0)
    config.architectures = ["CLIPModel"]
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # random class and position embeddings outweigh the pixels: every image would look alike
        model.vision_model.embeddings.class_embedding.zero_()
        model.vision_model.embeddings.position_embedding.weight.zero_()
    model.save_pretrained(folder)
    processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": processor.to_dict(),
                                                              "processor_class": "CLIPProcessor"}, default=list))
    return model


def copy_folder_with(folder: Path, target: Path, **config: Any) -> Path:
    """A copy of a model folder whose config.json has the given fields changed."""
    shutil.copytree(folder, target)
    path = target / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return target
