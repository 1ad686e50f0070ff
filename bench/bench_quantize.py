"""Benchmark small, fast one files (issue 20): `onnxmeta export --quantize int4` against onnxruntime-genai's int4
build, Optimum's float32 export and llama.cpp's Q4_1, on the same random weights.

    python bench/bench_quantize.py [--passes 3] [--new-tokens 128] [--models smollm2-135m gpt2-124m] [--json FILE]

Models (random weights, built once and cached under ~/.cache/onnxmeta/bench/quantize/; gpt2's tokenizer from
../shared/data, else a byte-level BPE trained here):

* smollm2-135m: SmolLM2-135M-Instruct's shape (LlamaForCausalLM: 30 layers, hidden 576, 9 heads, 3 key-value
  heads, intermediate 1536, vocabulary 49152, tied embeddings), 538 MB of float32 safetensors;
* gpt2-124m: GPT-2 small's shape (12 layers, hidden 768, vocabulary 50257, tied).

Files: "onnxmeta-int4" and "onnxmeta-fp32" are what `onnxmeta export [--quantize int4]` writes (onnxruntime-genai's
builder as the exporter of the Llama; Optimum's export, its weights quantized here, for GPT-2, which the builder does
not take); "genai-int4" is the builder's own folder (`-p int4 -e cpu`: model.onnx + .data + genai_config.json;
for GPT-2, onnxmeta's int4 graph with a genai_config.json, so genai's loop runs the same graph); "optimum-fp32"
Optimum's export folder; "llamacpp-q4_1" the Llama as GGUF Q4_1 (llama.cpp's converter; when llama-cpp-python is
installed in ~/.cache/onnxmeta/venv-llamacpp).

Each contender runs in its own process, in interleaved passes (pass 1 runs every contender once, then pass 2...),
with intra-op threads = the cores. In-process figures (imports done, model loaded, warmed up): tokens/s of a
32-token prompt and 128 new greedy tokens at batch 1 and 8 (min_new_tokens = max_new_tokens, so that eos cannot end
a random model's text early), time to the first token, and for the runtime its own cost per token (wall time minus
onnxruntime's run calls). Whole-process figure: a new process that starts, imports, loads the file and generates
the 128 tokens at batch 1, timed from outside, bytecode caches on. The median pass counts. Targets (issue 20): the
one file <= 1.05x genai's int4 folder, tokens/s >= 1.0x genai at batch 1 and 8.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_cli

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "quantize"
SHARED = Path(os.environ.get("ONNXMETA_SHARED_DATA", ROOT.parent / "shared" / "data"))
LLAMACPP_PYTHON = Path.home() / ".cache" / "onnxmeta" / "venv-llamacpp" / "bin" / "python"
CORES = os.cpu_count() or 1
PROMPT_TOKENS = 32
MODELS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"kind": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rope_theta": 100000.0,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
    "gpt2-124m": {"kind": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12},
}
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "small", "cats",
         "quietly", "sleep", "on", "the", "warm", "red", "mat", "in", "an", "old", "house")


def prompts(batch: int) -> list[str]:
    """batch prompts of PROMPT_TOKENS gpt2 tokens each (one-token words)."""
    return [" ".join(["The", *(WORDS[(i + j) % len(WORDS)] for j in range(PROMPT_TOKENS - 1))]) for i in range(batch)]


# --------------------------------------------------------------------------------------------------------- models

def _tokenizer(folder: Path, vocabulary: int | None) -> None:
    """gpt2's tokenizer (a byte-level BPE trained on the tests' corpus without ../shared/data), cut to a vocabulary
    of `vocabulary` tokens: its first merges (a BPE's ids follow its merges), <|endoftext|> last."""
    sys.path[:0] = [str(ROOT / "tests" / "models"), str(ROOT / "runtime"), str(ROOT)]
    from generation_models import gpt2_tokenizer_folder
    from transformers import GPT2TokenizerFast

    gpt2_tokenizer_folder(folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    if vocabulary is None or len(data["model"]["vocab"]) <= vocabulary:
        return
    eos = "<|endoftext|>"
    vocab = {t: i for t, i in data["model"]["vocab"].items() if i < vocabulary - 1 and t != eos}
    merges = [m for m in data["model"]["merges"]
              if "".join(m if isinstance(m, list) else m.split(" ")) in vocab][: vocabulary - 1 - 256]
    vocab[eos] = vocabulary - 1
    data["model"].update(vocab=vocab, merges=merges)
    data["added_tokens"] = [{**t, "id": vocabulary - 1} for t in data["added_tokens"] if t["content"] == eos]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    GPT2TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token=eos, eos_token=eos, unk_token=eos,
                      model_max_length=8192).save_pretrained(folder)


def _hf(name: str, folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    shape = {k: v for k, v in MODELS[name].items() if k != "kind"}
    _tokenizer(folder, shape.get("vocab_size"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    if MODELS[name]["kind"] == "llama":
        eos = tokenizer.eos_token_id
        model: Any = LlamaForCausalLM(LlamaConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **shape))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, bos_token_id=tokenizer.bos_token_id,
                                           eos_token_id=tokenizer.eos_token_id, **shape))
    model.eval().save_pretrained(folder)


EXPORT = """
import json, sys
from authoring.export import export
folder, out, mode = sys.argv[1:4]
report = export(folder, out, quantize=mode or None)
print(json.dumps({"file_bytes": report.file_bytes, "quality": report.quality.as_dict() if report.quality else None,
                  "exporter": report.exporter}))
"""


def _export(python: Path, folder: Path, out: Path, mode: str | None) -> dict[str, Any]:
    """onnxmeta export in the given environment (Optimum's for GPT-2, this one for the builder)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(python), "-c", EXPORT, str(folder), str(out), mode or ""], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"export of {folder.name} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _genai_config(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime-genai's description of a GPT-2 graph with past_key_values.N.* (genai's decoder type "llama")."""
    session = {"log_id": "onnxruntime-genai", "provider_options": [], "intra_op_num_threads": CORES}
    return {"model": {
        "type": "llama", "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["eos_token_id"], "vocab_size": config["vocab_size"], "context_length": config["n_positions"],
        "decoder": {
            "session_options": session, "filename": "model.onnx", "head_size": config["n_embd"] // config["n_head"],
            "hidden_size": config["n_embd"], "num_attention_heads": config["n_head"], "num_key_value_heads": config["n_head"],
            "num_hidden_layers": config["n_layer"],
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                       "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
            "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
        }},
        "search": {"do_sample": False, "num_beams": 1, "max_length": config["n_positions"], "min_length": 0,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0},
    }


def _genai_folder(name: str, root: Path) -> None:
    """genai's own int4 build of the Llama (threads set to the cores); for GPT-2, onnxmeta's int4 graph."""
    out = root / "genai-int4"
    if MODELS[name]["kind"] == "llama":
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(root / "hf"), "-o", str(out),
                        "-p", "int4", "-e", "cpu", "-c", str(root / "genai-cache")], check=True, capture_output=True)
        config = json.loads((out / "genai_config.json").read_text())
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = CORES
    else:
        sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]
        from authoring import weights

        out.mkdir(exist_ok=True)
        weights.save(weights.load(root / "onnxmeta-int4.onnx"), out / "model.onnx")  # the graph (metadata is ignored)
        config = _genai_config(out, json.loads((root / "hf" / "config.json").read_text()))
        for file in ("tokenizer.json", "tokenizer_config.json"):
            (out / file).write_bytes((root / "hf" / file).read_bytes())
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))


QUANTIZE_GGUF = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
params.nthread = int(sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params))
"""


def llamacpp_python() -> Path | None:
    """The llama.cpp environment: llama-cpp-python built from source (GGML_NATIVE off: the native build crashes on
    these machines), and its converter's needs (sentencepiece, transformers, torch); made on first use (~20 min)."""
    if LLAMACPP_PYTHON.exists():
        return LLAMACPP_PYTHON
    print("  building llama-cpp-python into its own venv (once, ~20 minutes)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(LLAMACPP_PYTHON.parents[1])], check=True)
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF", "CMAKE_BUILD_PARALLEL_LEVEL": str(CORES)}
    done = subprocess.run([str(LLAMACPP_PYTHON), "-m", "pip", "install", "-q", "llama-cpp-python", "numpy", "sentencepiece",
                           "transformers==5.25.*", "torch==2.13.0"], env=env, check=False)
    return LLAMACPP_PYTHON if done.returncode == 0 else None


def _gguf(root: Path) -> Path | None:
    """The Llama as GGUF Q4_1: llama.cpp's convert_hf_to_gguf.py (from llama-cpp-python's source, which vendors
    llama.cpp) to float32, then llama.cpp's quantizer; None where llama-cpp-python cannot be built."""
    out = root / "model-q4_1.gguf"
    python = llamacpp_python()
    if out.is_file() or python is None:
        return out if out.is_file() else None
    source = CACHE / "llama-cpp-src"
    if not source.is_dir():
        import tarfile

        version = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        subprocess.run([str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(CACHE),
                        f"llama-cpp-python=={version}"], check=True)
        with tarfile.open(next(CACHE.glob(f"llama_cpp_python-{version}.tar.gz"))) as archive:
            archive.extractall(source, filter="data")
    llama = next(source.glob("*/vendor/llama.cpp"))
    f32 = root / "model-f32.gguf"
    env = {**os.environ, "PYTHONPATH": str(llama / "gguf-py")}
    subprocess.run([str(python), str(llama / "convert_hf_to_gguf.py"), str(root / "hf"), "--outfile", str(f32),
                    "--outtype", "f32"], check=True, capture_output=True, env=env)
    subprocess.run([str(python), "-c", QUANTIZE_GGUF, str(f32), str(out), str(CORES)], check=True, capture_output=True)
    f32.unlink()
    return out


def build(name: str) -> Path:
    """The cached folder of a model: hf/, onnxmeta-int4.onnx, onnxmeta-fp32.onnx, genai-int4/, optimum-fp32/ and
    (the Llama, where llama.cpp is installed) model-q4_1.gguf; sizes.json."""
    root = CACHE / name
    if (root / "sizes.json").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "hf" / "config.json").is_file():
        _hf(name, root / "hf")
    python = Path(sys.executable) if MODELS[name]["kind"] == "llama" else bench_cli.optimum_python()
    cards = {}
    for mode, file in (("int4", "onnxmeta-int4.onnx"), (None, "onnxmeta-fp32.onnx")):
        if not (root / file).is_file():
            cards[file] = _export(python, root / "hf", root / file, mode)
    _genai_folder(name, root)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(bench_cli.optimum_python()), "-m", "optimum.exporters.onnx", "--model", str(root / "hf"), "--task",
                    "text-generation-with-past", str(root / "optimum-fp32")], check=True, capture_output=True,
                   env={**env, "HF_HUB_OFFLINE": "1"})
    gguf = _gguf(root) if MODELS[name]["kind"] == "llama" else None
    sizes = {"safetensors": (root / "hf" / "model.safetensors").stat().st_size,
             "onnxmeta-int4": (root / "onnxmeta-int4.onnx").stat().st_size,
             "onnxmeta-fp32": (root / "onnxmeta-fp32.onnx").stat().st_size,
             "genai-int4": sum(p.stat().st_size for p in (root / "genai-int4").glob("model.onnx*")),
             "optimum-fp32": sum(p.stat().st_size for p in (root / "optimum-fp32").glob("model.onnx*")),
             **({"llamacpp-q4_1": gguf.stat().st_size} if gguf else {}), "cards": cards}
    (root / "sizes.json").write_text(json.dumps(sizes, indent=2))
    return root


# ------------------------------------------------------------------------------------------------ contenders
# Each runs in its own process: `python bench_quantize.py --contender NAME --model FOLDER [--whole]` prints one line
# RESULT {batch: {"seconds", "first_token", "onnxruntime_seconds", "tokens"}}; --whole generates once at batch 1.

def _runtime(root: Path, file: str, new_tokens: int, batches: tuple[int, ...], warm: bool) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT / "runtime")]
    import onnxmeta_runtime as rt

    runtime = rt.Runtime(root / file, intra_op_num_threads=CORES)
    timer = bench_cli.Timed([runtime.session], ("run_with_iobinding",))
    options = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "return_tensors": True}
    out: dict[str, Any] = {}
    for batch in batches:
        texts = prompts(batch)
        if warm:
            runtime(texts, **{**options, "max_new_tokens": 8, "min_new_tokens": 8})
            start = time.perf_counter()  # the first token: a whole call (prompt in, ids out) that makes one
            runtime(texts, **{**options, "max_new_tokens": 1, "min_new_tokens": 1})
            first = time.perf_counter() - start
        timer.seconds = 0.0
        start = time.perf_counter()
        result = runtime(texts, **options)
        seconds = time.perf_counter() - start
        out[str(batch)] = {"seconds": seconds, "first_token": first if warm else None, "onnxruntime_seconds": timer.seconds,
                           "tokens": sum(len(r[0]["generated_token_ids"]) - PROMPT_TOKENS for r in result)}
    return out


def _genai(root: Path, new_tokens: int, batches: tuple[int, ...], warm: bool) -> dict[str, Any]:
    import numpy as np
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    model = og.Model(str(root / "genai-int4"))
    tokenizer = Tokenizer.from_file(str(root / "hf" / "tokenizer.json"))

    def generate(ids: Any, steps: int) -> tuple[int, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=ids.shape[1] + steps, min_length=ids.shape[1] + steps,
                                  batch_size=len(ids))
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        first, count = 0.0, 0
        while not generator.is_done():
            generator.generate_next_token()
            count += 1
            if count == 1:
                first = time.perf_counter() - start
        return count * len(ids), first

    out: dict[str, Any] = {}
    for batch in batches:
        ids = np.array([e.ids for e in tokenizer.encode_batch(prompts(batch))], dtype=np.int32)
        if warm:
            generate(ids, 8)
        start = time.perf_counter()
        tokens, first = generate(ids, new_tokens)
        out[str(batch)] = {"seconds": time.perf_counter() - start, "first_token": first, "onnxruntime_seconds": None,
                           "tokens": tokens}
    return out


def _optimum(root: Path, new_tokens: int, batches: tuple[int, ...], warm: bool) -> dict[str, Any]:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = CORES
    model = ORTModelForCausalLM.from_pretrained(root / "optimum-fp32", session_options=options, provider="CPUExecutionProvider")
    tokenizer = AutoTokenizer.from_pretrained(root / "optimum-fp32")
    out: dict[str, Any] = {}
    for batch in batches:
        inputs = tokenizer(prompts(batch), return_tensors="pt")
        settings = {"do_sample": False, "pad_token_id": tokenizer.eos_token_id}
        if warm:
            model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, **settings)
        start = time.perf_counter()
        result = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **settings)
        out[str(batch)] = {"seconds": time.perf_counter() - start, "first_token": None, "onnxruntime_seconds": None,
                           "tokens": int(result[:, PROMPT_TOKENS:].numel())}
    return out


def _llamacpp(root: Path, new_tokens: int, batches: tuple[int, ...], warm: bool) -> dict[str, Any]:
    from llama_cpp import Llama

    model = Llama(str(root / "model-q4_1.gguf"), n_ctx=512, n_threads=CORES, n_batch=512, verbose=False)
    tokens = model.tokenize(prompts(1)[0].encode(), add_bos=False)

    def generate(steps: int) -> tuple[int, float]:
        model.reset()
        start, first, count = time.perf_counter(), 0.0, 0
        for _ in model.generate(tokens, temp=0.0, top_k=1, reset=True):
            count += 1
            if count == 1:
                first = time.perf_counter() - start
            if count == steps:
                break
        return count, first

    if warm:
        generate(8)
    start = time.perf_counter()
    count, first = generate(new_tokens)
    return {"1": {"seconds": time.perf_counter() - start, "first_token": first, "onnxruntime_seconds": None, "tokens": count}}


def contender_main(name: str, root: Path, new_tokens: int, whole: bool) -> None:
    batches = (1,) if whole or name == "llamacpp-q4_1" else (1, 8)
    if name.startswith("onnxmeta"):
        out = _runtime(root, f"{name}.onnx", new_tokens, batches, not whole)
    elif name == "genai-int4":
        out = _genai(root, new_tokens, batches, not whole)
    elif name == "optimum-fp32":
        out = _optimum(root, new_tokens, batches, not whole)
    else:
        out = _llamacpp(root, new_tokens, batches, not whole)
    print("RESULT " + json.dumps(out))


# ------------------------------------------------------------------------------------------------ orchestration

def _python(name: str) -> Path | None:
    if name == "optimum-fp32":
        return bench_cli.optimum_python()
    if name == "llamacpp-q4_1":
        return llamacpp_python()
    return Path(sys.executable)


def contender(name: str, root: Path, new_tokens: int, whole: bool = False) -> dict[str, Any] | None:
    """One contender's process: its RESULT, and the process's wall time (start, imports, load, work)."""
    python = _python(name)
    if python is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [str(python), __file__, "--contender", name, "--model", str(root), "--new-tokens", str(new_tokens)]
    start = time.perf_counter()
    done = subprocess.run([*command, *(["--whole"] if whole else [])], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1"}, check=False)
    wall = time.perf_counter() - start
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        print(f"  {name} failed:\n{done.stderr[-1500:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    result["process_seconds"] = wall
    return result


def _contenders(root: Path) -> list[str]:
    names = ["onnxmeta-int4", "genai-int4", "onnxmeta-fp32", "optimum-fp32"]
    return [*names, "llamacpp-q4_1"] if (root / "model-q4_1.gguf").is_file() and LLAMACPP_PYTHON.exists() else names


def run(passes: int, new_tokens: int, models: tuple[str, ...]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for model in models:
        root = build(model)
        names = _contenders(root)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        whole: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(passes):
            for name in names:
                got = contender(name, root, new_tokens)
                if got is not None:
                    runs[name].append(got)
                got = contender(name, root, new_tokens, whole=True)
                if got is not None:
                    whole[name].append(got["process_seconds"])
        results[model] = summarize(model, root, runs, whole, new_tokens)
    return results


def summarize(model: str, root: Path, runs: dict[str, list[dict[str, Any]]], whole: dict[str, list[float]],
              new_tokens: int) -> dict[str, Any]:
    """Medians per contender and batch, printed, with the ratios to genai."""
    sizes = json.loads((root / "sizes.json").read_text())
    out: dict[str, Any] = {"sizes_mb": {k: v / 1e6 for k, v in sizes.items() if isinstance(v, int)}, "contenders": {}}
    print(f"\n== {model}: {PROMPT_TOKENS}-token prompt, {new_tokens} new tokens, greedy, {CORES} threads ==")
    print(f"{'contender':<15}{'file MB':>9}{'b1 tok/s':>10}{'b8 tok/s':>10}{'1st token':>11}{'loop/tok':>10}{'process':>9}")
    for name, outs in runs.items():
        if not outs:
            continue
        entry: dict[str, Any] = {}
        for batch in ("1", "8"):
            got = [o[batch] for o in outs if batch in o]
            if got:
                entry[f"bs{batch}_tokens_per_second"] = statistics.median(g["tokens"] / g["seconds"] for g in got)
                firsts = [g["first_token"] for g in got if g["first_token"] is not None]
                entry[f"bs{batch}_first_token_ms"] = 1000 * statistics.median(firsts) if firsts else None
                loops = [(g["seconds"] - g["onnxruntime_seconds"]) / new_tokens for g in got if g["onnxruntime_seconds"]]
                entry[f"bs{batch}_loop_ms_per_token"] = 1000 * statistics.median(loops) if loops else None
        entry["whole_process_seconds"] = statistics.median(whole[name]) if whole[name] else None
        out["contenders"][name] = entry
        loop = entry.get("bs1_loop_ms_per_token")
        first = entry.get("bs1_first_token_ms")
        print(f"{name:<15}{out['sizes_mb'].get(name, 0):>9.1f}{entry.get('bs1_tokens_per_second', 0):>10.1f}"
              f"{entry.get('bs8_tokens_per_second', 0):>10.1f}{'-' if first is None else f'{first:.0f} ms':>11}"
              f"{'-' if loop is None else f'{loop:.2f} ms':>10}{entry['whole_process_seconds'] or 0:>8.2f}s")
    ours, genai = out["contenders"].get("onnxmeta-int4"), out["contenders"].get("genai-int4")
    if ours and genai:
        out["ratios"] = {
            "size_vs_genai": sizes["onnxmeta-int4"] / sizes["genai-int4"],
            "bs1_vs_genai": ours["bs1_tokens_per_second"] / genai["bs1_tokens_per_second"],
            "bs8_vs_genai": ours["bs8_tokens_per_second"] / genai["bs8_tokens_per_second"],
            "whole_process_vs_genai": ours["whole_process_seconds"] / genai["whole_process_seconds"],
            "int4_size_vs_fp32": sizes["onnxmeta-int4"] / sizes["onnxmeta-fp32"],
            "fp32_size_vs_safetensors": sizes["onnxmeta-fp32"] / sizes["safetensors"],
        }
        for peer in ("optimum-fp32", "llamacpp-q4_1"):
            if peer in out["contenders"]:
                out["ratios"][f"bs1_vs_{peer}"] = ours["bs1_tokens_per_second"] / out["contenders"][peer]["bs1_tokens_per_second"]
        print("ratios (onnxmeta-int4 / peer): " + ", ".join(f"{k} {v:.2f}x" for k, v in out["ratios"].items()))
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results-quantize.json"))
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contender:
        contender_main(args.contender, args.model, args.new_tokens, args.whole)
        return 0
    results = run(args.passes, args.new_tokens, tuple(args.models))
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
