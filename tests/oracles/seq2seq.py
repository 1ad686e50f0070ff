"""The text-to-text oracle: transformers 4.57's Text2TextGenerationPipeline, SummarizationPipeline and
TranslationPipeline (transformers 5 removed them).

Run by the test suite with the Python of the Optimum environment (tests/models/helpers.optimum_python(), which has
transformers 4.57); nothing it computes is checked in:

    python tests/oracles/seq2seq.py MODEL_FOLDER < calls.json > results.json

calls.json is a list of {"task": ..., "args": [...], "kwargs": {...}}, each one call of the pipeline for that task
(text2text-generation, summarization, translation, translation_xx_to_yy; one pipeline per task, built on first use);
results.json the list of what each call returned (token id tensors as lists of ints), or {"error": "..."} where the
call raised.
"""

from __future__ import annotations

import json
import sys
import warnings


def plain(value):
    """Tensors (return_tensors) as lists of ints."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.tolist() if hasattr(value, "tolist") else value


def main() -> int:
    import transformers
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

    if not transformers.__version__.startswith("4."):
        print(f"needs transformers 4.x (the last with the text-to-text pipelines), found {transformers.__version__}",
              file=sys.stderr)
        return 2
    transformers.logging.set_verbosity_error()
    warnings.simplefilter("ignore")
    folder = sys.argv[1]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pipelines = {}
    results = []
    for call in json.load(sys.stdin):
        task = call["task"]
        if task not in pipelines:
            # a model per pipeline: building one pops the prefix out of the model config's task_specific_params
            model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
            pipelines[task] = pipeline(task, model=model, tokenizer=tokenizer, device="cpu")
        try:
            results.append(plain(pipelines[task](*call.get("args", []), **call.get("kwargs", {}))))
        except Exception as exc:  # the error is the oracle's answer for that call
            results.append({"error": f"{type(exc).__name__}: {exc}"})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
