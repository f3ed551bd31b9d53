"""A small OpenAI-compatible completions server for the tests, backed by an HF causal LM (stdlib http.server).

It answers what lm-eval's ``local-completions`` model and flipbench's server engine send, the way vLLM's
OpenAI server does: ``POST /v1/completions`` with a prompt given as text, token ids, or a list of either;
``echo`` returns the prompt's own token log-probs (the first is null) before the generated ones;
``logprobs=k`` the top-k per token, ``prompt_logprobs=k`` (vLLM's extension) the top-k of every prompt
position as ``{token_id: {"logprob", "rank", "decoded_token"}}`` (-1: every token); greedy generation (temperature 0) stops at
``max_tokens``, the EOS token or the first ``stop`` string (cut before it). ``GET /v1/models`` lists the one
served model id. Binds 127.0.0.1 only; the fixture that starts it stops it.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class Backend:
    """The model behind the server. One request at a time (a lock): the tests' CPU has two cores."""

    def __init__(self, model, tokenizer, model_id: str):
        self.model, self.tokenizer, self.model_id = model.eval(), tokenizer, model_id
        self.lock = threading.Lock()
        self.requests = 0

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        """(T, V) fp32 log-probs of the next token after each prefix ids[:t+1]."""
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0]  # (T, V)
        return torch.log_softmax(logits.float(), dim=-1)

    def _generate(self, ids: list[int], max_tokens: int, stop: list[str]) -> tuple[list[int], str, torch.Tensor]:
        """Greedy continuation: (tokens, text cut before the first stop string, (n, V) log-probs per step)."""
        out, steps = [], []
        for _ in range(max_tokens):
            logp = self.logprobs(ids + out)[-1]
            token = int(logp.argmax())
            out.append(token)
            steps.append(logp)
            text = self.tokenizer.decode(out)
            if token == self.tokenizer.eos_token_id or any(s and s in text for s in stop):
                break
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        for s in stop:
            if s and s in text:
                text = text[: text.index(s)]
        return out, text, torch.stack(steps) if steps else torch.empty(0)

    def _top(self, row: torch.Tensor, k: int) -> dict:
        values, ids = row.topk(k)
        return {self.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, ids)}

    def complete(self, ids: list[int], body: dict, index: int) -> dict:
        max_tokens, k = int(body.get("max_tokens", 16)), body.get("logprobs")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        generated, text, steps = self._generate(ids, max_tokens, stop) if max_tokens > 0 else ([], "", torch.empty(0))
        choice = {"index": index, "text": text, "finish_reason": "stop" if len(generated) < max_tokens else "length"}
        prompt_logp = self.logprobs(ids) if body.get("echo") or body.get("prompt_logprobs") is not None else None
        if body.get("echo"):
            choice["text"] = self.tokenizer.decode(ids) + text
        if k is not None:
            tokens = (ids if body.get("echo") else []) + generated
            token_logprobs, top = [], []
            if body.get("echo"):
                token_logprobs.append(None)
                top.append(None)
                for t in range(1, len(ids)):
                    token_logprobs.append(float(prompt_logp[t - 1, ids[t]]))
                    top.append(self._top(prompt_logp[t - 1], max(int(k), 1)))
            for token, row in zip(generated, steps):
                token_logprobs.append(float(row[token]))
                top.append(self._top(row, max(int(k), 1)))
            choice["logprobs"] = {"tokens": [self.tokenizer.decode([t]) for t in tokens], "token_logprobs": token_logprobs,
                                  "top_logprobs": top}
        if body.get("prompt_logprobs") is not None:
            choice["prompt_logprobs"] = self._prompt_logprobs(ids, prompt_logp, int(body["prompt_logprobs"]))
        return choice

    def _prompt_logprobs(self, ids: list[int], logp: torch.Tensor, k: int) -> list:
        """vLLM's shape: None for the first token, then per token the top-k and the token itself, by token id."""
        out = [None]
        for t in range(1, len(ids)):
            row = logp[t - 1]
            ranks = (row > row[ids[t]]).sum() + 1
            entry = {str(ids[t]): {"logprob": float(row[ids[t]]), "rank": int(ranks), "decoded_token": self.tokenizer.decode([ids[t]])}}
            values, top = row.topk(row.numel() if k == -1 else k) if k != 0 else (row[:0], row[:0].long())
            for r, (v, i) in enumerate(zip(values, top), start=1):
                entry.setdefault(str(int(i)), {"logprob": float(v), "rank": r, "decoded_token": self.tokenizer.decode([int(i)])})
            out.append(entry)
        return out

    def handle(self, body: dict) -> dict:
        prompts = body["prompt"]
        if isinstance(prompts, str) or prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        with self.lock:
            self.requests += 1
            choices = [self.complete(p if isinstance(p, list) else self.tokenizer(p)["input_ids"], body, i)
                       for i, p in enumerate(prompts)]
        return {"id": f"cmpl-{self.requests}", "object": "text_completion", "model": self.model_id, "choices": choices}


def _handler(backend: Backend):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the tests read results, not access logs
            pass

        def _send(self, status: int, payload: dict):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": backend.model_id, "object": "model"}]})
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if body.get("model") != backend.model_id:
                return self._send(404, {"error": {"message": f"model {body.get('model')!r} is not served"}})
            self._send(200, backend.handle(body))

    return Handler


@contextmanager
def serve(model, tokenizer, model_id: str, timeout_s: float = 600.0):
    """Serve ``model`` on 127.0.0.1 (a free port) for the ``with`` block: yields (base URL ending in /v1, backend).
    The server thread stops when the block ends, or after ``timeout_s`` whatever happens."""
    backend = Backend(model, tokenizer, model_id)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(backend))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    timer = threading.Timer(timeout_s, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", backend
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
