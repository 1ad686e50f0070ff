"""A tiny random-weight OwlViTForObjectDetection for the zero-shot-object-detection tests: tiny text and vision
towers (32-pixel images, 8-pixel patches: 16 boxes), the CLIP tokenizer (tests/models/image_helpers.py) and an OwlViT
image processor, saved as transformers 5 saves an OwlViTProcessor; its class head calibrated so that detections pass the
pipeline's threshold of 0.1 and differ between images and labels. Exported with torch.onnx: both towers in one graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import positional
from image_helpers import clip_tokenizer_folder

IMAGE_SIZE = 32


def _owl_tokenizer_folder(folder: Path) -> None:
    """A CLIP-style byte-level BPE trained here, as OwlViT's tokenizer has it: a padding token of id 0 ("!" in the real
    one), the start and end of text around each text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["a photo of a cat", "a photo of a dog", "this is a picture of the sea", "a map of a country",
              "a very long description of a scene with many words", "a pineapple on a table", "a bird"] * 20
    specials = ["<|pad|>", "<|startoftext|>", "<|endoftext|>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos, eos = tok.token_to_id(specials[1]), tok.token_to_id(specials[2])
    tok.post_processor = processors.TemplateProcessing(single=f"{specials[1]} $A {specials[2]}",
                                                       special_tokens=[(specials[1], bos), (specials[2], eos)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[1], eos_token=specials[2], pad_token=specials[0],
                            unk_token=specials[2], model_max_length=77).save_pretrained(folder)


def _calibrate(model: Any, seed: int) -> None:
    """Class and box heads drawn so that scores spread around the threshold and boxes vary."""
    import torch

    owl = getattr(model, "owlvit", None) or model.owlv2
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random class and position embeddings outweigh the pixels: every image would look alike
        owl.vision_model.embeddings.class_embedding.zero_()
        owl.vision_model.embeddings.position_embedding.weight.mul_(0.1)
        head = model.class_head  # logits (cosine + shift) * scale of moderate size: scores spread around 0.1
        head.logit_shift.weight.copy_(torch.randn(head.logit_shift.weight.shape, generator=generator) * 0.05)
        head.logit_shift.bias.fill_(-0.5)
        head.logit_scale.weight.copy_(torch.randn(head.logit_scale.weight.shape, generator=generator) * 0.05)
        head.logit_scale.bias.fill_(3.0)
        box = model.box_head.dense2  # boxes near each patch's prior, not saturated at the image's edges
        box.weight.mul_(0.02)
        box.bias.zero_()


def tiny_owlvit(folder: Path, *, seed: int = 0) -> Any:
    """A random-weight OwlViTForObjectDetection saved in folder with the CLIP tokenizer and an OwlViT image processor
    (processor_config.json); returns the model."""
    return _owl(folder, seed, "OwlViT", crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _owl(folder: Path, seed: int, family: str, **processor: Any) -> Any:
    """A random-weight OWL model (OwlViT or Owlv2 ForObjectDetection: tiny towers, calibrated) saved in folder with a
    CLIP tokenizer and the family's processor (PIL backend); returns the model."""
    import torch
    import transformers

    config_class, model_class, image_class, processor_class = (getattr(transformers, f"{family}{part}") for part in (
        "Config", "ForObjectDetection", "ImageProcessorPil", "Processor"))
    folder.mkdir(parents=True, exist_ok=True)
    clip_tokenizer_folder(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    if tok.bos_token_id == 0:  # the trained CLIP-style BPE: OWL masks a query whose first token is 0
        _owl_tokenizer_folder(folder)
        tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": tok.eos_token_id,
            "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id}
    vision = {"image_size": IMAGE_SIZE, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2}
    config = config_class(text_config=text, vision_config=vision, projection_dim=32, initializer_range=0.5,
                          initializer_factor=5.0)
    config.architectures = [f"{family}ForObjectDetection"]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    _calibrate(model, seed)
    model.save_pretrained(folder)
    image_processor = image_class(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, **processor)
    processor_class(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return model


def export_owlvit_onnx(model: Any, path: Path) -> Path:
    """torch.onnx.export of OwlViTForObjectDetection: input_ids and attention_mask (batch x queries texts, dynamic
    length), pixel_values (dynamic batch) in; logits (batch, patches, queries) and pred_boxes (batch, patches, 4) out."""
    import torch

    names, outputs = ("input_ids", "attention_mask", "pixel_values"), ("logits", "pred_boxes")
    dummies = (torch.ones((6, 7), dtype=torch.long), torch.ones((6, 7), dtype=torch.long),
               torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    axes = {"input_ids": {0: "texts", 1: "sequence"}, "attention_mask": {0: "texts", 1: "sequence"},
            "pixel_values": {0: "batch"}, "logits": {0: "batch", 2: "queries"}, "pred_boxes": {0: "batch"}}
    torch.onnx.export(positional(model, names, outputs)().eval(), dummies, path, input_names=list(names),
                      output_names=list(outputs), dynamic_axes=axes, opset_version=17, dynamo=False)
    model.eval()
    return path


def tiny_owlv2(folder: Path, *, seed: int = 0) -> Any:
    """A random-weight Owlv2ForObjectDetection (the same tiny towers, calibrated alike) saved in folder with the CLIP
    tokenizer and an OWLv2 image processor (pad to a square, scikit-image's resize); returns the model."""
    return _owl(folder, seed, "Owlv2")
