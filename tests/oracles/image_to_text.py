"""The image-to-text oracle: transformers 4.57's ImageToTextPipeline (transformers 5 turns "image-to-text" into its
image-text-to-text pipeline, which cannot run a VisionEncoderDecoderModel).

Run by the test suite with the Python of the Optimum environment (tests/models/helpers.optimum_python(), which has
transformers 4.57); nothing it computes is checked in:

    python tests/oracles/image_to_text.py MODEL_FOLDER < calls.json > results.json

calls.json is a list of {"args": [...], "kwargs": {...}}, each one call of the pipeline (images as file paths);
results.json the list of what each call returned, or {"error": "..."} where the call raised. The tests import
answers() into the Optimum process that exports the models (tests/models/image_to_text_models.py).
"""

from __future__ import annotations

import json
import sys
import warnings


def answers(folder: str, calls: list[dict]) -> list:
    """What transformers 4.57's image-to-text pipeline on the model folder returns for each call."""
    import transformers
    from transformers import pipeline

    if not transformers.__version__.startswith("4."):
        raise RuntimeError(f"needs transformers 4.x (the last with the image-to-text pipeline), found "
                           f"{transformers.__version__}")
    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    captioner = pipeline("image-to-text", model=folder, device="cpu")
    results = []
    for call in calls:
        try:
            results.append(captioner(*call.get("args", []), **call.get("kwargs", {})))
        except Exception as exc:  # noqa: BLE001 - the error is the oracle's answer for that call
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    return results


def main() -> int:
    json.dump(answers(sys.argv[1], json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
