"""Embed a corpus with Ray Data: a pickled Runtime rebuilt once in each worker, the same vectors as one process.

    pip install 'ray[data]'
    python examples/ray_embed.py model.onnx corpus.txt vectors.npy [--actors 2] [--batch-size 64]

corpus.txt holds one text a line; vectors.npy gets one row a line, in the file's order. model.onnx is a
feature-extraction model with onnxmeta metadata (a sentence-transformers folder embedded with --include-vocab):
each row is what ``Runtime(model).encode(line)`` gives. Without an address Ray starts a local cluster on this
machine; set RAY_ADDRESS to use a running one. Ray ships the runtime file to the workers (py_modules); the model
is not shipped: every worker must see it at the same path (a shared or copied folder), and a worker refuses a file
whose metadata differs from the pickled Runtime's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))  # a clone; a vendored copy or install also works
import onnxmeta_runtime
from onnxmeta_runtime import Runtime


def start_ray(cpus: int) -> None:
    """Connect to the cluster at RAY_ADDRESS, or start a local one with `cpus` cores. Ray ships the runtime file to
    every worker (py_modules), which needs it to unpickle a Runtime."""
    runtime_env = {"py_modules": [onnxmeta_runtime]}
    if "RAY_ADDRESS" in os.environ:
        ray.init(runtime_env=runtime_env)
    else:
        ray.init(num_cpus=cpus, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)


class Embedder:
    """A Ray Data actor: its Runtime arrives pickled (the path, the options and the metadata digest), is rebuilt once
    from the file, and encodes every batch the actor gets."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"row": batch["row"], "embedding": self.runtime.encode(list(batch["text"]))}


def embed_corpus(runtime: Runtime, texts: list[str], *, actors: int = 2, batch_size: int = 64) -> np.ndarray:
    """The (len(texts), dim) embeddings of texts, computed by `actors` Ray workers with map_batches."""
    dataset = ray.data.from_items([{"row": i, "text": text} for i, text in enumerate(texts)])
    embedded = dataset.map_batches(Embedder, fn_constructor_args=(runtime,), batch_size=batch_size,
                                   batch_format="numpy", concurrency=actors, num_cpus=1)
    rows: dict[int, Any] = {}
    for batch in embedded.iter_batches(batch_format="numpy", batch_size=None):
        rows.update(zip(batch["row"].tolist(), batch["embedding"]))
    return np.stack([rows[i] for i in range(len(texts))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a feature-extraction .onnx with onnxmeta metadata")
    parser.add_argument("corpus", help="a text file, one text a line")
    parser.add_argument("output", help="where to write the embeddings (.npy)")
    parser.add_argument("--actors", type=int, default=2, help="Ray workers, one Runtime each (default 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts a batch (default 64)")
    args = parser.parse_args(argv)
    texts = Path(args.corpus).read_text(encoding="utf-8").splitlines()
    # one onnxruntime thread a worker: the workers share the machine's cores
    runtime = Runtime(args.model, intra_op_num_threads=1)
    start_ray(args.actors + 1)  # a core for each worker and one for the driver
    try:
        vectors = embed_corpus(runtime, texts, actors=args.actors, batch_size=args.batch_size)
    finally:
        ray.shutdown()
    np.save(args.output, vectors)
    print(f"{len(texts)} texts -> {args.output} {vectors.shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
