"""An offline demo: build a tiny bag-of-words sentiment model, embed its metadata, run it.

Nothing is downloaded: the vocabulary and weights are written here, the tokenizer is assembled with
the tokenizers library and saved as a Hugging Face folder (tokenizer.json, tokenizer_config.json), and
the graph is built with onnx.helper. The result is one self-contained .onnx file that the runtime runs
on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import onnxmeta_runtime as rt

from .discovery import MetadataDiscovery
from .embedder import compress_threshold, embed

POSITIVE = ("love", "loved", "great", "good", "excellent", "wonderful", "amazing", "best", "happy", "fantastic",
            "enjoyed", "like", "brilliant", "delightful", "fun")
NEGATIVE = ("hate", "hated", "terrible", "bad", "awful", "worst", "boring", "sad", "horrible", "disappointing",
            "poor", "dull", "waste", "broken", "slow")
NEUTRAL = ("i", "you", "we", "this", "that", "it", "movie", "film", "book", "food", "service", "place", "was",
           "is", "the", "a", "an", "and", "but", "very", "really", "so", "of", "to", "my", "!", ".", ",")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
EXAMPLES = ("I love this movie!", "This was a terrible waste of time.", "The food was good but the service was slow.")


def build_source(folder: Path) -> None:
    """Write a Hugging Face model folder: config.json and a BERT-style WordPiece tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {token: i for i, token in enumerate(SPECIAL + POSITIVE + NEGATIVE + NEUTRAL)}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL])
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64,
        "unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
    }
    config = {
        "architectures": ["BagOfWordsForSequenceClassification"],
        "model_type": "onnxmeta-demo",
        "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
        "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
        "vocab_size": len(vocab),
        "max_position_embeddings": 64,
    }
    for name, value in (("tokenizer_config.json", tokenizer_config), ("config.json", config)):
        (folder / name).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def build_graph(path: Path, vocab_size: int) -> None:
    """logits = sum over tokens of a per-word (negative, positive) score, masked by attention_mask."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((vocab_size, 2), dtype=np.float32)
    first = len(SPECIAL)
    weights[first: first + len(POSITIVE)] = (-1.5, 1.5)
    weights[first + len(POSITIVE): first + len(POSITIVE) + len(NEGATIVE)] = (1.5, -1.5)
    nodes = [
        helper.make_node("Gather", ["word_scores", "input_ids"], ["scores"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["scores", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "token_axis"], ["summed"], keepdims=0),
        helper.make_node("Add", ["summed", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "bag_of_words_sentiment",
        inputs=[helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
                for n in ("input_ids", "attention_mask")],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(weights, "word_scores"),
            numpy_helper.from_array(np.array([0.1, 0.0], dtype=np.float32), "bias"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "token_axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxmeta-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def run_demo(output_dir: str | Path = "onnxmeta-demo") -> list[dict[str, object]]:
    """Build, embed and run the demo model; print what happens and return the results."""
    out = Path(output_dir)
    source = out / "hf-model"
    source.mkdir(parents=True, exist_ok=True)
    build_source(source)
    plain = out / "model.onnx"
    build_graph(plain, json.loads((source / "config.json").read_text())["vocab_size"])
    print(f"built a Hugging Face folder ({source}) and a plain ONNX graph ({plain})")

    metadata = MetadataDiscovery().discover(source, level="full")
    final = out / "sentiment.onnx"
    report = embed(plain, metadata, final, compress_threshold=compress_threshold("full", True, None))
    print(f"embedded {len(report.entries)} metadata entries ({report.total_bytes / 1024:.1f} KB) -> {final}")
    print(f"detected task: {metadata[rt.KEY_PIPELINE_TASK]}")

    runtime = rt.Runtime(final)
    results: list[dict[str, object]] = runtime(list(EXAMPLES))
    print(f"\n{runtime!r} with only the runtime file, onnxruntime and tokenizers:")
    for text, result in zip(EXAMPLES, results):
        print(f"  {text!r:50} -> {result['label']} ({result['score']:.3f})")
    # -m: the runtime file is wherever it was installed (runtime/ in a clone, site-packages from a wheel)
    print(f"\ntry: python -m onnxmeta_runtime {final} \"what a wonderful day\"")
    return results
