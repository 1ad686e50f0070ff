"""Benchmark the runtime's OpenAI-compatible server (`onnxmeta_runtime.py serve`): batching, streaming, cold start.

    python bench/bench_serve.py [--quick] [--rounds 5] [--json bench/results-serve.json]

Models (built once, offline, cached under ~/.cache/onnxmeta/bench/serve/):

* minilm.onnx: all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, vocabulary 30522; mean pooling, normalized) as
  sentence-transformers has it: its real weights from ../shared/data, else random weights of its shape with a
  WordPiece tokenizer trained here; exported with torch.onnx, metadata embedded (feature-extraction);
* smollm2-chat.onnx: the SmolLM2-135M-shape int4 one file that bench_quantize.py caches (random weights; built
  here if that cache is absent: `onnxmeta export --quantize int4`), with a ChatML chat template added to its
  embedded tokenizer config so that /v1/chat/completions serves it.

Every server is a whole `python runtime/onnxmeta_runtime.py serve MODEL --port 0 --threads CORES` process; the
load comes from threads of this process over http.client (one keep-alive connection per client thread, as an
OpenAI client keeps one). In-process figures (servers started and warmed up, then timed; rounds interleaved,
medians reported):

1. embeddings: 32 clients each sending single-sentence POST /v1/embeddings requests (short sentences of 3-30
   words) to (A) a server with batching (default --max-batch 32 and --batch-wait-ms) and (B) the same server with
   --max-batch 1: requests/s, the ratio A/B (target >= 3x), p50 and p99 latency; and the same at 1 client (target:
   batching costs a lone client little, A/B >= 0.9x). Both servers run at once, idle in turn; rounds alternate.
   Beside them the model alone: Runtime.encode in a fresh process, one sentence at a time and the 32 clients' first
   sentences as one batch (texts/s): what batching can gain on compute, and each server's share of it.
2. generation: 1, 4 and 8 concurrent streaming chat clients (stream, temperature 0, max_tokens 64, include_usage)
   on the chat model: aggregate tokens/s (usage's completion_tokens over the wall time of the level), time to the
   first content token (p50); beside it the same generation in a separate process through `Runtime(path).stream(
   messages, max_new_tokens=64, do_sample=False)` (same threads), the peer for the server's own overhead at 1
   client; the streamed texts are checked equal.

Whole-process figure:

3. cold start: from launching `python onnxmeta_runtime.py serve MODEL --port 0` to the first 200 from GET /health,
   median of 3 (bytecode caches on; one untimed launch first writes them), for each model; beside it the same
   command with `python -m onnxmeta_runtime`, and a process that only imports the runtime and builds a Runtime.

The client side's CPU (this process, all threads), the server's (its /proc stat) and every other process's (the
machine's /proc/stat less those) are recorded per measurement: a load generator that was the bottleneck, or a
neighbour that took the cores, shows. Ratios are given three ways: of the medians, paired round by round, and paired
over the quiet rounds only (others below 0.25 cores during both measurements), the fairest on a shared machine; the
verdicts use the quiet figure where there is one. --quick runs a small version (< 2 minutes).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime" / "onnxmeta_runtime.py"
CACHE = Path.home() / ".cache" / "onnxmeta" / "bench" / "serve"
QUANTIZE = Path.home() / ".cache" / "onnxmeta" / "bench" / "quantize" / "smollm2-135m"
SHARED = Path(os.environ.get("ONNXMETA_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINILM = SHARED / "sentence-transformers__all-MiniLM-L6-v2"
CORES = os.cpu_count() or 1
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MAX_TOKENS = 64

SENTENCES = [
    "How do I reset my password?",
    "The weather is lovely today.",
    "Where is the nearest train station?",
    "A man is playing a guitar on the street corner.",
    "Can you recommend a good book about the history of Rome?",
    "The quarterly report shows that revenue grew by eight percent compared with last year.",
    "My order arrived damaged and I would like a refund.",
    "Cats sleep for most of the day.",
    "What time does the museum open on Sundays?",
    "She finished the marathon in just under four hours despite the heat and a sore knee.",
    "Please send me the invoice.",
    "The new phone has a brighter screen, a faster processor and a battery that lasts two days.",
    "Is this restaurant open late?",
    "Researchers found that regular exercise improves sleep quality in older adults.",
    "I forgot my umbrella at the office again.",
    "How many calories are in a banana?",
    "The committee will meet next Tuesday to discuss the budget for the coming year and the hiring plan.",
    "Turn left at the second traffic light.",
    "This movie was much better than I expected.",
    "The server returned an error after the latest update, and users could not log in for about an hour.",
    "Best hiking trails near Denver",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Why is the sky blue?",
    "Our flight was delayed by three hours because of a storm over the Atlantic.",
    "The cake needs another ten minutes in the oven.",
    "Translate this sentence into French, please.",
    "He repaired the old bicycle with parts he found in his grandfather's garage.",
    "What is the difference between a virus and a bacterium?",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "I love the smell of fresh coffee in the morning.",
    "Children learn languages faster than adults do, according to several studies published over the last decade.",
    "Cheap flights to Lisbon in May",
]
CHATS = [
    "Write a short story about a cat who learns to sail.",
    "Explain how a refrigerator works in simple terms.",
    "Give me three ideas for a birthday party for a ten-year-old.",
    "What are the main causes of inflation?",
    "Summarize the plot of a detective novel you like.",
    "How should I prepare for a job interview at a software company?",
    "Describe the water cycle to a child.",
    "List some tips for growing tomatoes on a balcony.",
]


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": CHATS[i % len(CHATS)]}]


# --------------------------------------------------------------------------------------------------------- models

def _minilm(out: Path) -> None:
    """all-MiniLM-L6-v2 as one file: the real folder (../shared/data) or random weights of its shape."""
    import torch
    from transformers import AutoModel, BertConfig, BertModel

    sys.path[:0] = [str(ROOT / "tests" / "models"), str(ROOT / "runtime"), str(ROOT)]
    from helpers import export_onnx, trained_wordpiece

    from authoring import embed_metadata

    folder = out.parent / "minilm-hf"
    for path in (folder, *folder.rglob("*")) if folder.is_dir() else ():
        path.chmod(path.stat().st_mode | 0o700)  # ../shared/data is read-only, and so were the copies
    shutil.rmtree(folder, ignore_errors=True)
    if MINILM.is_dir():
        shutil.copytree(MINILM, folder, ignore=shutil.ignore_patterns("onnx*"), copy_function=shutil.copyfile)
        for path in (folder, *folder.rglob("*")):
            path.chmod(path.stat().st_mode | 0o700)
        model = AutoModel.from_pretrained(folder).eval()
    else:  # random weights of the same shape, a sentence-transformers folder around them
        folder.mkdir(parents=True)
        trained_wordpiece(folder)
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536, max_position_embeddings=512,
                                     architectures=["BertModel"])).eval()
        model.save_pretrained(folder)
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384,
                                                                       "pooling_mode_mean_tokens": True}))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    plain = out.with_name("minilm-plain.onnx")
    export_onnx(model, plain, ["input_ids", "attention_mask", "token_type_ids"], output="last_hidden_state")
    embed_metadata(plain, folder, out, include_vocab=True)
    plain.unlink()


def _chat_model(out: Path) -> None:
    """bench_quantize's SmolLM2-shape int4 file (built there if absent), its tokenizer config given a chat template."""
    sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]
    import onnxmeta_runtime as rt
    from authoring import embed

    source = QUANTIZE / "onnxmeta-int4.onnx"
    if not source.is_file():
        import bench_quantize

        if not (QUANTIZE / "hf" / "config.json").is_file():
            bench_quantize._hf("smollm2-135m", QUANTIZE / "hf")
        bench_quantize._export(Path(sys.executable), QUANTIZE / "hf", source, "int4")
    metadata = dict(rt.read_metadata(source))
    metadata.pop(rt.KEY_DIGEST, None)
    metadata[rt.KEY_TOKENIZER_CONFIG] = {**metadata[rt.KEY_TOKENIZER_CONFIG], "chat_template": CHAT_TEMPLATE}
    embed(source, metadata, out)


def build() -> dict[str, Path]:
    """The cached model files: {"embeddings": minilm.onnx, "chat": smollm2-chat.onnx}."""
    files = {"embeddings": CACHE / "minilm.onnx", "chat": CACHE / "smollm2-chat.onnx"}
    CACHE.mkdir(parents=True, exist_ok=True)
    if not files["embeddings"].is_file():
        _minilm(files["embeddings"])
    if not files["chat"].is_file():
        _chat_model(files["chat"])
    return files


def ensure_built() -> dict[str, Path]:
    """Build in a fresh process (torch and transformers stay out of this one)."""
    files = {"embeddings": CACHE / "minilm.onnx", "chat": CACHE / "smollm2-chat.onnx"}
    if not all(f.is_file() for f in files.values()):
        print("building the models (once)...", flush=True)
        subprocess.run([sys.executable, __file__, "--build"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return files


# --------------------------------------------------------------------------------------------------------- server

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (all processes), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal: all but idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_env() -> dict[str, str]:
    """This environment (bytecode caches on: bench_cli dropped PYTHONDONTWRITEBYTECODE), hub off, the checkout's runtime."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "runtime")}


class ServerProcess:
    """`python onnxmeta_runtime.py serve MODEL --port 0 ...` as a child: .url once it printed its line; .stop() sends
    SIGTERM and records the exit code and how long the graceful stop took. stderr goes to a log file (never a pipe
    nobody reads, which would block a server that logs each request)."""

    def __init__(self, model: Path, *flags: str, command: list[str] | None = None, log: Path | None = None) -> None:
        self.argv = [*(command or [sys.executable, str(RUNTIME)]), "serve", str(model), "--port", "0", *flags]
        self.log = log or CACHE / "logs" / f"{model.stem}{''.join(flags).replace('-', '_')}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        with open(self.log, "wb") as stderr:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=stderr, env=child_env(), text=True,
                                         bufsize=1)
        self.url, self.line_seconds = self._read_url(timeout=180)
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None

    def _read_url(self, timeout: float) -> tuple[str, float]:
        found: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if not found:
                    match = re.search(r"on (http://\S+)", line)
                    if match:
                        found.append(match.group(1))
            # keep draining stdout until the process ends

        threading.Thread(target=read, daemon=True).start()
        deadline = time.perf_counter() + timeout
        while not found:
            if self.proc.poll() is not None or time.perf_counter() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{' '.join(self.argv)} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.002)
        return found[0].rstrip("/"), time.perf_counter() - self.started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            start = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.exit_code = self.proc.wait()
            self.stop_seconds = time.perf_counter() - start
        else:
            self.exit_code = self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------------- clients

class Client:
    """One client: one keep-alive HTTP/1.1 connection (http.client reconnects where the server closes it)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
        self.reconnects = 0

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.conn.sock is None:
            self.reconnects += 1
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.will_close:
            self.conn.close()
        return response.status, data

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        data = response.read()
        if response.will_close:
            self.conn.close()
        return response.status, data

    def stream(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A streaming request: status, the time to the first non-empty content, the content pieces' times, the
        joined text, usage and finish_reason, the chunk count."""
        if self.conn.sock is None:
            self.reconnects += 1
        start = time.perf_counter()
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        out: dict[str, Any] = {"status": response.status, "first": None, "times": [], "text": "", "usage": None,
                               "finish_reason": None, "chunks": 0, "done": False}
        if response.status != 200:
            out["error"] = response.read().decode(errors="replace")[:500]
            if response.will_close:
                self.conn.close()
            return out
        pieces = []
        while True:
            line = response.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                out["done"] = True
                break
            chunk = json.loads(payload)
            out["chunks"] += 1
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content") or (choice.get("text") or "")
                if content:
                    now = time.perf_counter() - start
                    out["first"] = now if out["first"] is None else out["first"]
                    out["times"].append(now)
                    pieces.append(content)
                if choice.get("finish_reason"):
                    out["finish_reason"] = choice["finish_reason"]
        response.read()  # the rest, if any
        if response.will_close:
            self.conn.close()
        out["seconds"] = time.perf_counter() - start
        out["text"] = "".join(pieces)
        return out

    def close(self) -> None:
        self.conn.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_clients(server: ServerProcess, clients: int, work: Any) -> dict[str, Any]:
    """`clients` threads, each with its own connection, started together; work(client, index) -> list of records.
    Returns the records, the wall time from the start to the last thread's end, and both sides' CPU seconds."""
    connections = [Client(server.url) for _ in range(clients)]
    health = []
    for c in connections:  # connect (and check) before timing
        status, data = c.get("/health")
        if status != 200:
            raise RuntimeError(f"/health answered {status}")
        health.append(json.loads(data))
    results: list[list[dict[str, Any]]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(connections[i], i)
        except BaseException as exc:  # noqa: BLE001 -- reported below, with the others' figures
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    server_cpu, client_cpu, total_cpu = server.cpu(), self_cpu(), machine_cpu()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server_cpu, client_cpu = server.cpu() - server_cpu, self_cpu() - client_cpu
    other_cpu = machine_cpu() - total_cpu - server_cpu - client_cpu
    reconnects = sum(c.reconnects for c in connections)
    status, data = connections[0].get("/health")
    after = json.loads(data) if status == 200 else {}
    batches = after.get("batches", 0) - health[-1].get("batches", 0)  # /health counts the batcher's batches, if it says
    batched = after.get("batched_requests", 0) - health[-1].get("batched_requests", 0)
    for c in connections:
        c.close()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    return {"records": [r for rs in results for r in rs], "wall": wall, "server_cpu": server_cpu,
            "client_cpu": client_cpu, "other_cpu": max(other_cpu, 0.0), "reconnects": reconnects,
            "mean_batch": batched / batches if batches > 0 else None}


# --------------------------------------------------------------------------------------------------------- 1. embeddings

def embedding_work(model_id: str, requests: int, vectors: dict[int, list[float]] | None = None) -> Any:
    """Each client sends `requests` single-sentence requests, one after the other (client i starts at sentence 7i)."""

    def work(client: Client, i: int) -> list[dict[str, Any]]:
        out = []
        for j in range(requests):
            k = (7 * i + j) % len(SENTENCES)
            start = time.perf_counter()
            status, data = client.post("/v1/embeddings", {"model": model_id, "input": SENTENCES[k]})
            seconds = time.perf_counter() - start
            record: dict[str, Any] = {"seconds": seconds, "status": status}
            if status != 200:
                record["error"] = data.decode(errors="replace")[:500]
            else:
                answer = json.loads(data)
                embedding = answer["data"][0]["embedding"]
                if len(answer["data"]) != 1 or answer["data"][0]["index"] != 0 or len(embedding) != 384:
                    record["status"], record["error"] = -1, f"unexpected answer: {str(answer)[:300]}"
                if vectors is not None:
                    vectors.setdefault(k, embedding)
            out.append(record)
        return out

    return work


def summarize_load(run: dict[str, Any]) -> dict[str, Any]:
    records = run["records"]
    good = [r["seconds"] for r in records if r["status"] == 200]
    bad = [r for r in records if r["status"] != 200]
    return {"requests": len(records), "failed": len(bad), "first_error": bad[0].get("error") if bad else None,
            "requests_per_s": len(good) / run["wall"], "p50_ms": 1000 * percentile(good, 50) if good else None,
            "p99_ms": 1000 * percentile(good, 99) if good else None, "wall_s": run["wall"],
            "server_cpu_cores": run["server_cpu"] / run["wall"], "client_cpu_cores": run["client_cpu"] / run["wall"],
            "other_cpu_cores": run["other_cpu"] / run["wall"], "mean_batch": run["mean_batch"],
            "client_cpu_ms_per_request": 1000 * run["client_cpu"] / max(len(records), 1), "reconnects": run["reconnects"]}


ENCODE = """
import json, resource, sys, time
import onnxmeta_runtime as rt
sys.path.insert(0, {bench!r})
from bench_serve import SENTENCES, machine_cpu
path, threads, singles, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runtime = rt.Runtime(path, intra_op_num_threads=threads)
runtime.encode(SENTENCES)
for s in SENTENCES:
    runtime.encode([s])
own = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
total, mine, begin = machine_cpu(), own(), time.perf_counter()
start = time.perf_counter()
for i in range(singles):
    runtime.encode([SENTENCES[i % len(SENTENCES)]])
one = singles / (time.perf_counter() - start)
order = [SENTENCES[(7 * i) % len(SENTENCES)] for i in range(32)]  # the 32 clients' first sentences, as they arrive
start = time.perf_counter()
for _ in range(batches):
    runtime.encode(order)
bs32 = 32 * batches / (time.perf_counter() - start)
wall, mine = time.perf_counter() - begin, own() - mine
print("RESULT " + json.dumps({{"bs1_texts_per_s": one, "bs32_texts_per_s": bs32,
                              "other_cpu_cores": max(machine_cpu() - total - mine, 0.0) / wall}}))
"""


def fresh_process(script: str, what: str, *args: object) -> Any:
    """What a script prints on its RESULT line, run in a fresh process with the bench's environment."""
    code = script.format(bench=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=child_env(), check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"in-process {what} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def encode_in_process(model: Path, singles: int, batches: int) -> dict[str, float]:
    """The model alone, no HTTP: Runtime.encode texts/s one sentence at a time and 32 at a time (a fresh process)."""
    result: dict[str, float] = fresh_process(ENCODE, "encode", model, CORES, singles, batches)
    return result


QUIET = 0.25  # CPU cores other processes may use during a measurement of a quiet round


def paired(ours: list[dict[str, Any]], peers: list[dict[str, Any]], field: str) -> dict[str, Any]:
    """Ratios of two contenders measured in the same rounds, round by round: their median over every round and over
    the quiet rounds (other processes below QUIET cores during both measurements): on a shared machine the fairest."""
    ratios = [a[field] / b[field] for a, b in zip(ours, peers)]
    quiet = [r for r, a, b in zip(ratios, ours, peers) if max(a.get("other_cpu_cores", 0), b.get("other_cpu_cores", 0)) < QUIET]
    return {"median": statistics.median(ratios), "quiet_median": statistics.median(quiet) if quiet else None,
            "quiet_rounds": len(quiet), "per_round": ratios}


def embeddings(model: Path, rounds: int, requests: int, lone: int) -> dict[str, Any]:
    """(A) batching on (defaults) and (B) --max-batch 1, both running; interleaved rounds of 32 clients x
    `requests` and 1 client x `lone` requests each; medians over rounds."""
    threads = ("--threads", str(CORES))
    model_id = model.name
    with ServerProcess(model, *threads) as a, ServerProcess(model, *threads, "--max-batch", "1") as b:
        servers = {"batched": a, "unbatched": b}
        print(f"  servers up: batched {a.url} ({a.line_seconds:.1f} s), unbatched {b.url} ({b.line_seconds:.1f} s)",
              flush=True)
        vectors: dict[str, dict[int, list[float]]] = {name: {} for name in servers}
        for name, server in servers.items():  # warm-up: every sentence, both shapes of load; the answers kept
            run_clients(server, 32, embedding_work(model_id, len(SENTENCES) // 4, vectors[name]))
            run_clients(server, 1, embedding_work(model_id, len(SENTENCES), vectors[name]))
        common = sorted(set(vectors["batched"]) & set(vectors["unbatched"]))
        difference = max((abs(x - y) for k in common for x, y in zip(vectors["batched"][k], vectors["unbatched"][k])),
                         default=float("nan"))
        runs: dict[str, list[dict[str, Any]]] = {f"{n}_{c}": [] for n in servers for c in ("32", "1")}
        idle: dict[str, list[float]] = {n: [] for n in servers}
        limit: list[dict[str, float]] = []
        for r in range(rounds):
            limit.append(encode_in_process(model, lone, max(1, requests // 4)))
            print(f"  round {r + 1} in-process Runtime.encode: {limit[-1]['bs1_texts_per_s']:7.1f} texts/s one at a time, "
                  f"{limit[-1]['bs32_texts_per_s']:7.1f} texts/s 32 at a time", flush=True)
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            for clients, count in ((32, requests), (1, lone)):
                for name in order:
                    other = servers["unbatched" if name == "batched" else "batched"]
                    other_cpu = other.cpu()
                    got = summarize_load(run_clients(servers[name], clients, embedding_work(model_id, count)))
                    idle["unbatched" if name == "batched" else "batched"].append((other.cpu() - other_cpu) / got["wall_s"])
                    runs[f"{name}_{clients}"].append(got)
                    print(f"  round {r + 1} {name:>9} {clients:>2} clients: {got['requests_per_s']:7.1f} req/s, "
                          f"p50 {got['p50_ms']:6.1f} ms, p99 {got['p99_ms']:6.1f} ms, server CPU "
                          f"{got['server_cpu_cores']:.2f} cores, client CPU {got['client_cpu_cores']:.2f}, other processes "
                          f"{got['other_cpu_cores']:.2f}, mean batch {got['mean_batch'] or 0:.1f}"
                          + (f", {got['failed']} FAILED: {got['first_error']}" if got["failed"] else ""), flush=True)
    out: dict[str, Any] = {"model": str(model), "requests_per_client": requests, "lone_requests": lone, "rounds": rounds,
                           "max_abs_difference_batched_vs_unbatched": difference, "sentences_compared": len(common),
                           "idle_server_cpu_cores": {n: statistics.median(v) for n, v in idle.items() if v},
                           "exit_codes": {n: s.exit_code for n, s in servers.items()},
                           "stop_seconds": {n: s.stop_seconds for n, s in servers.items()}}
    for key, got in runs.items():
        out[key] = {field: statistics.median(g[field] for g in got) for field in
                    ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_cores", "client_cpu_cores", "other_cpu_cores",
                     "client_cpu_ms_per_request")}
        batches = [g["mean_batch"] for g in got if g["mean_batch"] is not None]
        out[key]["mean_batch"] = statistics.median(batches) if batches else None
        out[key].update(failed=sum(g["failed"] for g in got), reconnects=sum(g["reconnects"] for g in got),
                        first_error=next((g["first_error"] for g in got if g["first_error"]), None),
                        runs_requests_per_s=[g["requests_per_s"] for g in got])
    out["in_process"] = {key: statistics.median(x[key] for x in limit) for key in limit[0]}
    out["in_process"]["runs"] = limit
    bs1, bs32 = out["in_process"]["bs1_texts_per_s"], out["in_process"]["bs32_texts_per_s"]
    out["paired"] = {
        "batched_vs_unbatched_32_clients": paired(runs["batched_32"], runs["unbatched_32"], "requests_per_s"),
        "batched_vs_unbatched_1_client": paired(runs["batched_1"], runs["unbatched_1"], "requests_per_s"),
        "in_process_bs32_vs_bs1": paired([{**x, "v": x["bs32_texts_per_s"]} for x in limit],
                                         [{**x, "v": x["bs1_texts_per_s"]} for x in limit], "v"),
    }
    out["ratios"] = {
        "batched_vs_unbatched_32_clients": out["batched_32"]["requests_per_s"] / out["unbatched_32"]["requests_per_s"],
        "batched_vs_unbatched_1_client": out["batched_1"]["requests_per_s"] / out["unbatched_1"]["requests_per_s"],
        "in_process_bs32_vs_bs1": bs32 / bs1,
        "batched_32_clients_vs_in_process_bs32": out["batched_32"]["requests_per_s"] / bs32,
        "unbatched_32_clients_vs_in_process_bs1": out["unbatched_32"]["requests_per_s"] / bs1,
        "unbatched_1_client_vs_in_process_bs1": out["unbatched_1"]["requests_per_s"] / bs1,
    }
    return out


# --------------------------------------------------------------------------------------------------------- 2. generation

def chat_body(model_id: str, i: int) -> dict[str, Any]:
    return {"model": model_id, "messages": chat(i), "stream": True, "temperature": 0, "max_tokens": MAX_TOKENS,
            "stream_options": {"include_usage": True}}


def generation_work(model_id: str, requests: int) -> Any:
    """Each client streams `requests` chats one after the other (client i's k-th: chat i + k)."""

    def work(client: Client, i: int) -> list[dict[str, Any]]:
        out = []
        for k in range(requests):
            got = client.stream("/v1/chat/completions", chat_body(model_id, i + k))
            got["chat"] = (i + k) % len(CHATS)
            out.append(got)
        return out

    return work


IN_PROCESS = """
import json, resource, sys, time
import onnxmeta_runtime as rt
sys.path.insert(0, {bench!r})
from bench_serve import chat, machine_cpu
path, threads, requests, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runtime = rt.Runtime(path, intra_op_num_threads=threads)
"".join(runtime.stream(chat(0), max_new_tokens=8, do_sample=False))  # warm-up
own = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
out, total, mine, wall = [], machine_cpu(), own(), time.perf_counter()
for k in range(requests):
    start, first, pieces = time.perf_counter(), None, []
    for piece in runtime.stream(chat(k), max_new_tokens=new_tokens, do_sample=False):
        first = time.perf_counter() - start if first is None else first
        pieces.append(piece)
    out.append({{"seconds": time.perf_counter() - start, "first": first, "text": "".join(pieces), "chat": k}})
wall, mine = time.perf_counter() - wall, own() - mine
print("RESULT " + json.dumps({{"records": out, "cpu_cores": mine / wall,
                              "other_cpu_cores": max(machine_cpu() - total - mine, 0.0) / wall}}))
"""


def in_process(model: Path, requests: int) -> dict[str, Any]:
    """The same single-stream generations through Runtime.stream in a fresh process (load not timed)."""
    result: dict[str, Any] = fresh_process(IN_PROCESS, "generation", model, CORES, requests, MAX_TOKENS)
    return result


def summarize_streams(records: list[dict[str, Any]], wall: float, tokens_of: dict[int, int]) -> dict[str, Any]:
    good = [r for r in records if r.get("status", 200) == 200 and r.get("text")]
    bad = [r for r in records if r not in good]
    tokens = sum(tokens_of.get(r["chat"], 0) if r.get("usage") is None else r["usage"]["completion_tokens"] for r in good)
    decode = [(tokens_of.get(r["chat"], 0) - 1) / (r["seconds"] - r["first"]) for r in good
              if r["seconds"] > r["first"] and tokens_of.get(r["chat"])]
    return {"requests": len(records), "failed": len(bad),
            "first_error": (bad[0].get("error") or f"empty answer: {bad[0]}"[:300]) if bad else None,
            "tokens": tokens, "tokens_per_s": tokens / wall, "wall_s": wall,
            "ttft_p50_ms": 1000 * statistics.median(r["first"] for r in good) if good else None,
            "ttft_max_ms": 1000 * max(r["first"] for r in good) if good else None,
            "per_stream_decode_tokens_per_s": statistics.median(decode) if decode else None,
            "content_chunks_median": statistics.median(len(r.get("times", ())) for r in good) if good else None}


def generation(model: Path, rounds: int, levels: tuple[int, ...], requests: int) -> dict[str, Any]:
    """Streaming chat at each concurrency level (each client `requests` chats in a row), and the in-process peer
    at one stream; interleaved rounds, medians."""
    model_id = model.name
    runs: dict[str, list[dict[str, Any]]] = {**{f"server_{n}": [] for n in levels}, "in_process_1": []}
    texts: dict[str, dict[int, str]] = {"server": {}, "in_process": {}}
    checks: dict[str, Any] = {}
    with ServerProcess(model, "--threads", str(CORES)) as server:
        print(f"  server up: {server.url} ({server.line_seconds:.1f} s)", flush=True)
        warm = run_clients(server, 1, generation_work(model_id, 1))["records"][0]  # warm-up, and the contract's shape
        checks["usage_reported"] = warm.get("usage") is not None
        checks["finish_reason"] = warm.get("finish_reason")
        checks["done_sent"] = warm.get("done")
        tokens_of: dict[int, int] = {}
        for r in range(rounds):
            for level in (*levels[:1], "in_process", *levels[1:]):
                if level == "in_process":
                    result = in_process(model, requests)
                    wall = sum(x["seconds"] for x in result["records"])
                    for x in result["records"]:
                        texts["in_process"].setdefault(x["chat"], x["text"])
                    got = summarize_streams(result["records"], wall, tokens_of)
                    got.update(server_cpu_cores=result["cpu_cores"], other_cpu_cores=result["other_cpu_cores"])
                    runs["in_process_1"].append(got)
                    name = "in-process"
                else:
                    run = run_clients(server, int(level), generation_work(model_id, requests))
                    for x in run["records"]:
                        if x.get("usage"):
                            tokens_of.setdefault(x["chat"], x["usage"]["completion_tokens"])
                        if x.get("text"):
                            texts["server"].setdefault(x["chat"], x["text"])
                    got = summarize_streams(run["records"], run["wall"], tokens_of)
                    got.update(server_cpu_cores=run["server_cpu"] / run["wall"],
                               client_cpu_cores=run["client_cpu"] / run["wall"], other_cpu_cores=run["other_cpu"] / run["wall"])
                    runs[f"server_{level}"].append(got)
                    name = f"server {level} clients"
                print(f"  round {r + 1} {name:>17}: {got['tokens_per_s']:6.1f} tokens/s, TTFT p50 "
                      f"{got['ttft_p50_ms'] or 0:6.1f} ms, per stream {got['per_stream_decode_tokens_per_s'] or 0:5.1f} "
                      f"tokens/s, its CPU {got['server_cpu_cores']:.2f} cores, other processes {got['other_cpu_cores']:.2f}"
                      + (f", {got['failed']} FAILED: {got['first_error']}" if got["failed"] else ""), flush=True)
    out: dict[str, Any] = {"model": str(model), "max_tokens": MAX_TOKENS, "requests_per_client": requests,
                           "rounds": rounds, "exit_code": server.exit_code, "stop_seconds": server.stop_seconds,
                           "checks": checks}
    for key, got in runs.items():
        fields = ("tokens_per_s", "ttft_p50_ms", "ttft_max_ms", "per_stream_decode_tokens_per_s", "server_cpu_cores",
                  "client_cpu_cores", "other_cpu_cores")
        out[key] = {field: statistics.median(g[field] for g in got if g.get(field) is not None)
                    for field in fields if any(g.get(field) is not None for g in got)}
        out[key].update(failed=sum(g["failed"] for g in got), tokens=got[0]["tokens"],
                        first_error=next((g["first_error"] for g in got if g["first_error"]), None),
                        runs_tokens_per_s=[g["tokens_per_s"] for g in got])
    same = [k for k in texts["in_process"] if texts["server"].get(k) == texts["in_process"][k]]
    checks["server_text_equals_in_process"] = f"{len(same)}/{len(texts['in_process'])}"
    one, peer = out[f"server_{levels[0]}"], out["in_process_1"]
    out["paired"] = {"server_vs_in_process_1_stream": paired(runs[f"server_{levels[0]}"], runs["in_process_1"], "tokens_per_s"),
                     **{f"server_{n}_vs_1_clients": paired(runs[f"server_{n}"], runs[f"server_{levels[0]}"], "tokens_per_s")
                        for n in levels[1:]}}
    out["ratios"] = {"server_vs_in_process_1_stream": one["tokens_per_s"] / peer["tokens_per_s"],
                     "ttft_server_vs_in_process": one["ttft_p50_ms"] / peer["ttft_p50_ms"],
                     **{f"server_{n}_vs_1_clients": out[f"server_{n}"]["tokens_per_s"] / one["tokens_per_s"]
                        for n in levels[1:]}}
    return out


# --------------------------------------------------------------------------------------------------------- 3. cold start

def _health_poll(url: str, deadline: float) -> None:
    parts = urlsplit(url)
    while time.perf_counter() < deadline:
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.001)
    raise RuntimeError(f"{url}/health never answered 200")


def cold_start_once(model: Path, form: str) -> dict[str, float]:
    """One whole process: the launch to the first 200 from /health (a server), or to its exit (the Runtime alone)."""
    if form == "runtime_only":
        code = "import sys, onnxmeta_runtime as rt; rt.Runtime(sys.argv[1])"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, str(model)], env=child_env(), check=True, capture_output=True)
        return {"seconds": time.perf_counter() - start}
    command = [sys.executable, str(RUNTIME)] if form == "script" else [sys.executable, "-m", "onnxmeta_runtime"]
    log = CACHE / "logs" / f"cold-{model.stem}-{form}.log"
    server = ServerProcess(model, command=command, log=log)
    try:
        _health_poll(server.url, time.perf_counter() + 60)
        seconds = time.perf_counter() - server.started
    finally:
        server.stop()
    return {"seconds": seconds, "line_seconds": server.line_seconds, "stop_seconds": server.stop_seconds or 0.0,
            "exit_code": server.exit_code if server.exit_code is not None else -999}


def cold_start(files: dict[str, Path], repeats: int) -> dict[str, Any]:
    forms = ("script", "module", "runtime_only")
    runs: dict[str, list[dict[str, float]]] = {f"{m}_{f}": [] for m in files for f in forms}
    for model in files.values():  # untimed: .pyc files written, the model in the page cache
        for form in forms:
            cold_start_once(model, form)
    for _ in range(repeats):
        for name, model in files.items():
            for form in forms:
                runs[f"{name}_{form}"].append(cold_start_once(model, form))
    out: dict[str, Any] = {"repeats": repeats}
    for key, got in runs.items():
        out[key] = {field: statistics.median(g[field] for g in got) for field in got[0] if field != "exit_code"}
        if "exit_code" in got[0]:
            out[key]["exit_codes"] = sorted({int(g["exit_code"]) for g in got})
        out[key]["runs"] = [g["seconds"] for g in got]
    return out


# --------------------------------------------------------------------------------------------------------- checks

def openai_client_check(files: dict[str, Path]) -> dict[str, str]:
    """The openai package against both servers (not timed): an embedding and a streamed chat."""
    try:
        import openai
    except ImportError:
        return {"openai": "not installed"}
    out = {}
    with ServerProcess(files["embeddings"]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        try:
            answer = client.embeddings.create(model=files["embeddings"].name, input=["one", "two sentences"])
            out["embeddings"] = f"ok ({len(answer.data)} x {len(answer.data[0].embedding)})"
        except Exception as exc:  # noqa: BLE001 -- a finding to report, not a crash
            out["embeddings"] = f"FAILED: {exc!r}"[:400]
    with ServerProcess(files["chat"]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        try:
            stream = client.chat.completions.create(model=files["chat"].stem, messages=chat(0), stream=True,  # type: ignore[call-overload]
                                                    temperature=0, max_tokens=8, stream_options={"include_usage": True})
            chunks = list(stream)
            usage = chunks[-1].usage
            out["chat_stream"] = f"ok ({len(chunks)} chunks, usage {usage.completion_tokens if usage else None})"
        except Exception as exc:  # noqa: BLE001
            out["chat_stream"] = f"FAILED: {exc!r}"[:400]
    return out


# --------------------------------------------------------------------------------------------------------- report

def run(quick: bool, rounds: int | None) -> dict[str, Any]:
    start = time.perf_counter()
    files = ensure_built()
    load_before = os.getloadavg()
    settings = ({"rounds": rounds or 1, "requests": 6, "lone": 16, "gen_requests": 1, "levels": (1, 4, 8), "cold": 1}
                if quick else
                {"rounds": rounds or 5, "requests": 25, "lone": 60, "gen_requests": 2, "levels": (1, 4, 8), "cold": 3})
    print(f"{CORES} cores, load average {load_before[0]:.2f}; {'quick' if quick else 'full'} run: {settings}", flush=True)
    print("\n== openai client check ==", flush=True)
    compat = openai_client_check(files)
    print("  " + ", ".join(f"{k}: {v}" for k, v in compat.items()), flush=True)
    print("\n== 1. embeddings: 32 clients and 1, batched (A) vs --max-batch 1 (B) ==", flush=True)
    emb = embeddings(files["embeddings"], settings["rounds"], settings["requests"], settings["lone"])
    print("\n== 2. generation: streaming chat, 1/4/8 clients, and Runtime.stream in-process ==", flush=True)
    gen = generation(files["chat"], settings["rounds"], settings["levels"], settings["gen_requests"])
    print("\n== 3. cold start: launch to the first /health 200 (whole process) ==", flush=True)
    cold = cold_start(files, settings["cold"])
    load_after = os.getloadavg()
    results = {"quick": quick, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
               "cores": CORES, "load_average_before": load_before, "load_average_after": load_after,
               "openai_client": compat, "embeddings": emb, "generation": gen, "cold_start": cold,
               "seconds": time.perf_counter() - start}
    report(results)
    return results


def report(r: dict[str, Any]) -> None:
    emb, gen, cold = r["embeddings"], r["generation"], r["cold_start"]
    a, b, ratios = emb["batched_32"], emb["unbatched_32"], emb["ratios"]
    print(f"\n== summary ({r['seconds']:.0f} s; {r['cores']} cores; load average {r['load_average_before'][0]:.2f} before, "
          f"{r['load_average_after'][0]:.2f} after; medians of {emb['rounds']} interleaved rounds) ==")
    print("in-process figures (servers up and warm):")
    print(f"{'embeddings (MiniLM-L6)':<32}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'batch':>7}{'server':>8}{'client':>8}"
          f"{'others':>8}  (CPU cores)")
    for key, label in (("batched_32", "A batched, 32 clients"), ("unbatched_32", "B --max-batch 1, 32 clients"),
                       ("batched_1", "A batched, 1 client"), ("unbatched_1", "B --max-batch 1, 1 client")):
        e = emb[key]
        batch = "-" if e["mean_batch"] is None else f"{e['mean_batch']:.1f}"
        print(f"{label:<32}{e['requests_per_s']:>8.1f}{e['p50_ms']:>8.1f}{e['p99_ms']:>8.1f}{batch:>7}{e['server_cpu_cores']:>8.2f}"
              f"{e['client_cpu_cores']:>8.2f}{e['other_cpu_cores']:>8.2f}" + (f"  {e['failed']} failed" if e["failed"] else ""))
    print(f"batched vs unbatched embeddings: max |diff| {emb['max_abs_difference_batched_vs_unbatched']:.1e} over "
          f"{emb['sentences_compared']} sentences; client CPU {a['client_cpu_ms_per_request']:.2f} ms/request (A), "
          f"{b['client_cpu_ms_per_request']:.2f} (B); idle server CPU "
          f"{', '.join(f'{k} {v:.2f}' for k, v in emb['idle_server_cpu_cores'].items())} cores")
    print(f"\n{'generation (SmolLM2-135M int4)':<32}{'tok/s':>8}{'TTFT p50':>10}{'stream':>8}{'server':>8}{'client':>8}"
          f"{'others':>8}  (stream: tokens/s of one stream after its first token)")
    for key in [k for k in gen if k.startswith(("server_", "in_process_"))]:
        g = gen[key]
        label = (f"server, {key.removeprefix('server_')} streaming clients" if key.startswith("server_")
                 else "Runtime.stream in-process, 1")
        stream = g.get("per_stream_decode_tokens_per_s") or 0
        print(f"{label:<32}{g['tokens_per_s']:>8.1f}{g['ttft_p50_ms']:>8.0f}ms{stream:>8.1f}"
              f"{g.get('server_cpu_cores', float('nan')):>8.2f}{g.get('client_cpu_cores', float('nan')):>8.2f}"
              f"{g.get('other_cpu_cores', float('nan')):>8.2f}" + (f"  {g['failed']} failed" if g["failed"] else ""))
    print(f"streamed text == in-process: {gen['checks']['server_text_equals_in_process']}")
    gr, ep, gp = gen["ratios"], emb["paired"], gen["paired"]
    print(f"\n{'ratio':<44}{'medians':>9}{'paired':>9}{'quiet (n)':>12}  target  (paired: round by round; quiet: "
          f"rounds where others < {QUIET} cores)")
    rows = [("A/B req/s, 32 clients", ratios["batched_vs_unbatched_32_clients"], ep["batched_vs_unbatched_32_clients"], 3.0),
            ("A/B req/s, 1 client", ratios["batched_vs_unbatched_1_client"], ep["batched_vs_unbatched_1_client"], 0.9),
            ("model alone: batch 32 / one at a time", ratios["in_process_bs32_vs_bs1"], ep["in_process_bs32_vs_bs1"], None),
            ("server / in-process tokens/s, 1 stream", gr["server_vs_in_process_1_stream"],
             gp["server_vs_in_process_1_stream"], None),
            *[(f"{k.removeprefix('server_').removesuffix('_vs_1_clients')} / 1 streaming clients, tokens/s", gr[k], gp[k],
               None) for k in gr if k.endswith("_vs_1_clients")]]
    for label, value, pair, target in rows:
        best = pair["quiet_median"] if pair["quiet_median"] is not None else pair["median"]
        quiet = "-" if pair["quiet_median"] is None else f"{pair['quiet_median']:.2f}x ({pair['quiet_rounds']})"
        verdict = "" if target is None else f">= {target:g}x {'PASS' if best >= target else 'MISS'}"
        print(f"{label:<44}{value:>8.2f}x{pair['median']:>8.2f}x{quiet:>12}  {verdict}")
    ip = emb["in_process"]
    print(f"TTFT server / in-process at 1 stream {gr['ttft_server_vs_in_process']:.2f}x; the model alone (Runtime.encode, "
          f"no HTTP) {ip['bs1_texts_per_s']:.1f} texts/s one at a time, {ip['bs32_texts_per_s']:.1f} 32 at a time; server "
          f"A at 32 clients {ratios['batched_32_clients_vs_in_process_bs32']:.2f}x the batch-32 figure, B "
          f"{ratios['unbatched_32_clients_vs_in_process_bs1']:.2f}x the one-at-a-time figure")
    print(f"\nwhole-process figures (median of {cold['repeats']}; bytecode caches on):")
    print(f"{'cold start':<44}{'embeddings':>12}{'chat':>12}")
    for form, label in (("script", "python onnxmeta_runtime.py serve -> /health"),
                        ("module", "python -m onnxmeta_runtime serve -> /health"),
                        ("runtime_only", "python -c 'Runtime(path)' (no server)")):
        print(f"{label:<44}{cold[f'embeddings_{form}']['seconds']:>11.2f}s{cold[f'chat_{form}']['seconds']:>11.2f}s")
    codes = {k: v.get("exit_codes") for k, v in cold.items() if isinstance(v, dict) and "exit_codes" in v}
    print(f"exit codes after SIGTERM: embeddings servers {emb['exit_codes']}, chat server {gen['exit_code']}, "
          f"cold-start servers {sorted({c for cs in codes.values() for c in cs})}; openai client: {r['openai_client']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small version (< 2 minutes): checks the bench works")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, --quick 1)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results-serve.json"))
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build()
        return 0
    results = run(args.quick, args.rounds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
