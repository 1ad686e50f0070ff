"""A tiny edge app: one self-contained ONNX model served over HTTP with the standard library and a vendored runtime.

    cp runtime/onnxmeta_runtime.py examples/edge_app/      # vendor the runtime: the one file, nothing else
    pip install numpy onnxruntime tokenizers               # tokenizers for text models, Pillow for image models
    python examples/edge_app/app.py model.onnx --port 8000
    curl -s localhost:8000 -d '{"inputs": "I love this movie!", "parameters": {"top_k": 2}}'
    curl -s localhost:8000                                 # what is served: the model, its task and labels

POST / takes {"inputs": ..., "parameters": {...}} (the Hugging Face inference API's shape) and answers
``Runtime(model)(inputs, **parameters)`` as JSON; bad input gets a 400 with {"error": ...}. Everything the model
needs (tokenizer, labels, task, processor) is inside model.onnx.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from onnxmeta_runtime import InvalidInputError, MetadataError, Runtime

MAX_BODY = 10 * 1024 * 1024


def make_handler(runtime: Runtime) -> type[BaseHTTPRequestHandler]:
    """A request handler serving `runtime` (one Runtime for every thread: it is safe to share)."""
    config = runtime.metadata.get("hf_model_config") or {}
    info = {"model": Path(runtime.path).name, "task": runtime.task,
            "labels": list((config.get("id2label") or {}).values())}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200, info)

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY:
                    raise InvalidInputError(f"send a JSON body of 1 to {MAX_BODY} bytes")
                try:
                    request = json.loads(self.rfile.read(length))
                except ValueError as exc:
                    raise InvalidInputError(f"the body is not JSON ({exc})") from None
                if not isinstance(request, dict) or "inputs" not in request:
                    raise InvalidInputError('send {"inputs": ..., "parameters": {...}}')
                parameters = request.get("parameters") or {}
                if not isinstance(parameters, dict):
                    raise InvalidInputError('"parameters" must be a JSON object')
                self._answer(200, runtime(request["inputs"], **parameters))
            except MetadataError as exc:  # InvalidInputError and the rest of the runtime's errors: the caller's to fix
                self._answer(400, {"error": str(exc)})

        def _answer(self, status: int, value: Any) -> None:
            body = json.dumps(value, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a self-contained .onnx file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    args = parser.parse_args(argv)
    try:
        runtime = Runtime(args.model)
    except MetadataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    server = ThreadingHTTPServer((args.host, args.port), make_handler(runtime))
    print(f"serving {runtime!r} on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
