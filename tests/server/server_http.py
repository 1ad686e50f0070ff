"""A raw HTTP client for the server tests (http.client: the bytes sent are exactly the test's), the OpenAI error
object's check, multipart bodies and server-sent events."""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
import uuid
from typing import Any

ERROR_KEYS = {"message", "type", "param", "code"}


class Response:
    """An HTTP answer: status, headers (lower-case names), body; .json() parses it."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:600]!r}>"


def connection(url: str, timeout: float = 60.0) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 60.0) -> Response:
    """One request on its own connection."""
    conn = connection(url, timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


def post(url: str, path: str, payload: Any, *, key: str | None = None, timeout: float = 60.0) -> Response:
    """POST payload as JSON (application/json)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key is not None else {})}
    return request(url, "POST", path, json.dumps(payload).encode(), headers, timeout)


def get(url: str, path: str, *, key: str | None = None) -> Response:
    return request(url, "GET", path, headers={"Authorization": f"Bearer {key}"} if key is not None else {})


def assert_error(response: Response, status: int, *, code: str | None = None, param: str | None = None,
                 type_: str | None = None) -> dict[str, Any]:
    """The answer is status with OpenAI's error object (every key there; the code, param and type asked for);
    returns the error object."""
    assert response.status == status, response
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], str), error
    if status == 400:
        assert error["type"] == "invalid_request_error", error
    for name, wanted in (("code", code), ("param", param), ("type", type_)):
        if wanted is not None:
            assert error[name] == wanted, (name, error)
    return error


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None,
              boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body of text fields and (filename, bytes) files; (body, content type)."""
    boundary = boundary or uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    for name, (filename, data) in (files or {}).items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_form(url: str, path: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None) -> Response:
    body, content_type = multipart(fields, files)
    return request(url, "POST", path, body, {"Content-Type": content_type})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def events(body: bytes) -> list[Any]:
    """The data of each server-sent event: parsed JSON, or the string "[DONE]"."""
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        data = [line[len("data:"):].strip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            text = "\n".join(data)
            out.append(text if text == "[DONE]" else json.loads(text))
    return out


def has_text(line: bytes) -> bool:
    """Whether a line of a stream is an event carrying generated text."""
    assert line, "the stream ended before its first text"
    if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
        return False
    choices = json.loads(line[5:])["choices"]
    return bool(choices and choices[0]["delta"].get("content"))


class Stream:
    """A streamed chat completion, read up to its first text (its generation runs from then on); head: what was read."""

    def __init__(self, url: str, payload: dict[str, Any]) -> None:
        self.conn = connection(url, timeout=120)
        self.conn.request("POST", "/v1/chat/completions", body=json.dumps(payload),
                          headers={"Content-Type": "application/json"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()[:500]
        lines = [self.response.fp.readline()]
        while not has_text(lines[-1]):
            lines.append(self.response.fp.readline())
        self.head = b"".join(lines)

    def finish(self) -> bytes:
        """The rest of the stream, to its end."""
        rest = self.response.read()
        self.conn.close()
        return rest

    def leave(self) -> None:
        """Go away mid-stream."""
        self.response.close()
        self.conn.close()
