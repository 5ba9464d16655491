"""`personavlm bench --only session --remote`: the session benchmark with the chat model on a server.

llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``) is started on loopback
with the chat model's GGUF file and context; the chat reaches it as ``model.kind: openai-compatible``
(``adapters/remote_llm.py``: one pooled connection, token counts made here from the file's vocabulary),
and the same scripted session as ``evals/bench/session.py`` is replayed through the REPL's chat session,
learning on. The server keeps the states of its recent prompts (``--cache true``: llama-cpp-python's
server has one context, and without it the update thread's requests would evict the chat's prompt from
it at every message; docs/deploy.md). Raw is the same server asked directly for one token of a fresh
prompt of the same length, cold: the exact prompt with a number of its own at the start of the system
text, so nothing the server holds matches it past the chat template's first tokens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from personavlm_cli.core.errors import PersonaError

FLUSH = [{"role": "user", "content": "Reply with one word: ready?"}]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def model_server(model_path: Path, n_ctx: int, threads: int | None, log: Path, timeout: float = 300.0):
    """llama-cpp-python's server on loopback with ``model_path``; yields its base URL, stopped at the end."""
    import httpx

    port = _free_port()
    # Started through llama_runtime.bindings(), as the chat loads it: the same AMX guard (docs/dependencies.md).
    launch = ("import runpy, sys; from personavlm_cli.adapters.llama_runtime import bindings; bindings(); "
              "sys.argv[0] = 'llama_cpp.server'; runpy.run_module('llama_cpp.server', run_name='__main__')")
    argv = [sys.executable, "-c", launch, "--model", str(model_path), "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(n_ctx), "--cache", "true"]
    if threads:
        argv += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise PersonaError(f"the model server exited with status {proc.returncode} (see {log}); "
                                   "it needs llama-cpp-python's server extras: pip install -e '.[server]'")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise PersonaError(f"the model server did not start in {timeout:g} s (see {log})")
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class RawServer:
    """The server asked directly (no personavlm in between) for the first token of a prompt, cold."""

    def __init__(self, url: str):
        import httpx

        self.url = url
        self.client = httpx.Client(base_url=url, timeout=600)
        self.prompt_tokens: int | None = None
        self.fresh = 0

    def _flush(self) -> None:
        """Something else into the server's context: the next prompt finds nothing of itself cached."""
        self.client.post("/v1/chat/completions", json={"messages": FLUSH, "max_tokens": 1, "temperature": 0.0})

    def first_token_s(self, prompt: list[dict]) -> float:
        """One token of ``prompt`` made fresh, whole (the prompt's evaluation and one token, as a stream's
        first piece); the server's count of the prompt's tokens is kept in ``prompt_tokens``."""
        self.fresh += 1
        first = dict(prompt[0])
        first["content"] = f"{self.fresh:04d} {first['content']}"  # nothing cached matches past this
        body = {"messages": [first, *prompt[1:]], "max_tokens": 1, "temperature": 0.0, "seed": 0}
        t = time.perf_counter()
        out = self.client.post("/v1/chat/completions", json=body).json()
        elapsed = time.perf_counter() - t
        self.prompt_tokens = (out.get("usage") or {}).get("prompt_tokens")
        return elapsed

    def drop_cache(self) -> None:
        """The server's context holds another prompt, as after another user's request (its state cache
        still holds the last chat's prompts, as a server that runs on would)."""
        self._flush()

    def close(self) -> None:
        self.client.close()


def bench_session_remote(host, path: Path, plan: dict) -> dict:
    from personavlm_cli.adapters.gguf import embedded_model_path
    from personavlm_cli.adapters.remote_llm import RemoteChatModel
    from personavlm_cli.evals.bench.session import run_lengths

    s = host.env.settings
    if s["model.kind"] != "llama-cpp":
        return {"skipped": "--remote starts its own server from a local GGUF: the chat model is already remote"}
    model_path = Path(host.env.model_path()[0]) if s["model.path"] else embedded_model_path()
    n_ctx = s["model.context"] or 4096
    host.say(f"  starting llama-cpp-python's server on loopback with {model_path.name}", highlight=False)
    with model_server(model_path, n_ctx, s["model.threads"], path / "server.log") as url:
        model = RemoteChatModel(url, n_ctx=n_ctx, tokenizer=model_path)
        raw = RawServer(url)
        try:
            overrides = {"model.kind": "openai-compatible", "model.url": url, "model.path": str(model_path),
                         "model.context": n_ctx}
            results = run_lengths(host, path, plan, model, raw, overrides,
                                  f"llama-cpp-python server (loopback) serving {model_path.name}, n_ctx {n_ctx}")
        finally:
            raw.close()
            model.close()
    results["remote"] = True
    return results
