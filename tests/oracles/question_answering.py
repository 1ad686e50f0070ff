"""The question-answering oracle: transformers 4.57's QuestionAnsweringPipeline (transformers 5 removed it).

Run by the test suite with the Python of the Optimum environment (tests/models/helpers.optimum_python(), which has
transformers 4.57); nothing it computes is checked in:

    python tests/oracles/question_answering.py MODEL_FOLDER [MODEL_FOLDER ...] < cases.json > answers.json

cases.json is a list of {"args": [...], "kwargs": {...}}, each one pipeline call; answers.json has, for each
model folder, the list of what each call returned, numbers as JSON floats and ints, or {"error": "..."}
where the call raised. One process serves every folder: importing transformers and torch is most of its time.
"""

from __future__ import annotations

import json
import sys


def plain(value):
    """numpy scalars (the pipeline returns some) as JSON numbers."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def main() -> int:
    import transformers
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline

    if not transformers.__version__.startswith("4."):
        print(f"needs transformers 4.x (the last with the question-answering pipeline), found {transformers.__version__}",
              file=sys.stderr)
        return 2
    cases = json.load(sys.stdin)
    every = []
    for folder in sys.argv[1:]:
        model = AutoModelForQuestionAnswering.from_pretrained(folder).eval()
        oracle = pipeline("question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(folder), device="cpu")
        answers = []
        for case in cases:
            try:
                answers.append(plain(oracle(*case.get("args", []), **case.get("kwargs", {}))))
            except Exception as exc:  # the error is the oracle's answer for that case
                answers.append({"error": f"{type(exc).__name__}: {exc}"})
        every.append(answers)
    json.dump(every, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
