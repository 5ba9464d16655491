"""Beyond one machine: the real CLI against a real ChromaDB server (`chroma run`) and a real
OpenAI-compatible model server (llama-cpp-python's `python -m llama_cpp.server`), on loopback.

Each server is started once per module on a free port and stopped in teardown; the tests that
kill a server start their own. Every test uses its own user name, because a Chroma server is
shared by all the tests of the module (and collections are per user name on it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_one_line_error

VENV_BIN = Path(sys.executable).parent
CHROMA = VENV_BIN / "chroma"

# Short answers keep a busy 2-core machine fast; the context matches the model server's.
FAST = {"PERSONAVLM_MODEL_MAX_TOKENS": "48", "PERSONAVLM_MODEL_TEMPERATURE": "0"}


# --------------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, argv: list[str], url: str, ready_path: str, log: Path, env: dict | None = None):
        self.name, self.argv, self.url, self.ready_path, self.log = name, argv, url, ready_path, log
        # Unbuffered: the tests read the access log while the server runs.
        self.env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> Server:
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=self.log.parent, start_new_session=True)
        fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready in {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """Gone at once, as a crash or a pulled cable would leave it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start_chroma(tmp: Path, port: int | None = None) -> Server:
    port = port or _free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    return Server("chroma", [str(CHROMA), "run", "--path", str(tmp / "data"), "--host", "127.0.0.1",
                             "--port", str(port)], f"http://127.0.0.1:{port}", "/api/v2/heartbeat",
                  tmp / "chroma.log").start(timeout=90)


def start_model_server(tmp: Path) -> Server:
    from personavlm_cli.adapters.gguf import embedded_model_path

    port = _free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    # llama-cpp-python's own server, started through llama_runtime.bindings() so that it gets the same AMX guard
    # as the chat (docs/dependencies.md): on a CPU that reports AMX in a VM without AMX state it would
    # otherwise die on its first prompt.
    launch = ("import runpy, sys; from personavlm_cli.adapters.llama_runtime import bindings; bindings(); "
              "sys.argv[0] = 'llama_cpp.server'; runpy.run_module('llama_cpp.server', run_name='__main__')")
    return Server("llama_cpp.server", [sys.executable, "-c", launch, "--model", str(embedded_model_path()),
                                       "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
                  f"http://127.0.0.1:{port}", "/v1/models", tmp / "llama.log").start(timeout=180)


def _server_extras_missing() -> str | None:
    missing = [m for m in ("fastapi", "sse_starlette", "starlette_context", "pydantic_settings", "uvicorn")
               if importlib.util.find_spec(m) is None]
    return ", ".join(missing) or None


needs_model_server = pytest.mark.skipif(
    _server_extras_missing() is not None,
    reason=f"llama-cpp-python[server] extras missing ({_server_extras_missing()}): pip install -e '.[server]'",
)
needs_chroma = pytest.mark.skipif(not CHROMA.exists(), reason=f"no chroma console script at {CHROMA}")


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    server = start_chroma(tmp_path_factory.mktemp("chroma"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    server = start_model_server(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


def store_env(server: Server) -> dict:
    return {"PERSONAVLM_STORE_KIND": "server", "PERSONAVLM_STORE_URL": server.url}


def model_env(server: Server) -> dict:
    return {"PERSONAVLM_MODEL_KIND": "openai-compatible", "PERSONAVLM_MODEL_URL": server.url}


def collections(server: Server) -> dict[str, set[str]]:
    """Every collection on the server and its ids (the admin's view: the test may list; the CLI never does)."""
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    import chromadb

    client = chromadb.HttpClient(host=server.url)
    out = {}
    for c in client.list_collections():
        coll = client.get_collection(c.name)
        # Names are u-<user>-<store id>-<collection>; key them by user and collection.
        user, _store_id, kind = re.fullmatch(r"(u-.+)-([0-9a-f]{8})-(\w+)", c.name).groups()
        out[f"{user}-{kind}"] = set(coll.get(include=[])["ids"])
    return out


def completions_served(server: Server) -> int:
    return server.log.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


def _embedded_notice(line: str) -> bool:
    """The one-time notice about the embedded model (printed at the first chat of a store)."""
    return "embedded SmolLM2" in line or "pass --model PATH" in line


def assert_one_error_line(result, *needles: str) -> None:
    """conftest's assert_one_line_error, allowing the one-time embedded-model notice before the error."""
    kept = "\n".join(ln for ln in result.err.splitlines() if not _embedded_notice(ln))
    assert_one_line_error(type(result)(result.code, result.out, kept), *needles)


def memories(cli, env) -> list[dict]:
    r = cli("memory", "list", "--json", env=env)
    assert r.code == 0, r.err
    return r.json()


# --------------------------------------------------------------------------------------------------
# The vector store on a Chroma server
# --------------------------------------------------------------------------------------------------


@needs_chroma
def test_chat_list_search_forget_against_a_chroma_server(cli, chroma, isolated_home):
    env = {**FAST, **store_env(chroma), "PERSONAVLM_USER": "ada"}
    r = cli("chat", "--once", "My cat is called Miso and she loves tuna.", "--at", "2026-11-20 10:00",
            "--no-update", env=env)
    assert r.code == 0, r.err
    assert r.out.strip()
    r = cli("chat", "--at", "2026-11-20 10:05", "--no-update", env=env,
            input="/remember I work as a lighthouse keeper in Brittany\n")
    assert r.code == 0, r.err

    listing = memories(cli, env)
    texts = [m["text"] for m in listing]
    assert "My cat is called Miso and she loves tuna." in texts
    assert "I work as a lighthouse keeper in Brittany" in texts
    # The vectors are on the server, under this user's namespace; nothing embedded on disk.
    assert not (isolated_home / "data" / "users" / "ada" / "chroma").exists()
    on_server = collections(chroma)
    assert on_server["u-ada-memories"] == {m["id"] for m in listing}

    r = cli("memory", "search", "lighthouse Brittany", "--json", env=env)
    assert r.code == 0, r.err
    hits = r.json()
    assert hits and hits[0]["text"] == "I work as a lighthouse keeper in Brittany"
    assert "dense" in hits[0]["signals"], "the dense signal comes from the Chroma server"

    keeper = hits[0]["id"]
    r = cli("memory", "forget", keeper, "--yes", env=env)
    assert r.code == 0, r.err
    assert keeper not in {m["id"] for m in memories(cli, env)}
    assert keeper not in collections(chroma)["u-ada-memories"], "forgetting erases the vector on the server"
    r = cli("memory", "search", "lighthouse Brittany", "--json", env=env)
    assert keeper not in [h["id"] for h in r.json()]


@needs_chroma
def test_two_users_on_one_chroma_server_do_not_see_each_other(cli, chroma, tmp_path):
    # Two people, two machines (two homes), one Chroma server.
    ada = {**FAST, **store_env(chroma), "PERSONAVLM_USER": "ada2", "PERSONAVLM_HOME": str(tmp_path / "ada-laptop")}
    bob = {**FAST, **store_env(chroma), "PERSONAVLM_USER": "bob2", "PERSONAVLM_HOME": str(tmp_path / "bob-laptop")}
    r = cli("chat", "--no-update", "--at", "2026-11-20 10:00", env=ada,
            input="/remember My bank PIN hint is the blue giraffe\n")
    assert r.code == 0, r.err
    r = cli("chat", "--no-update", "--at", "2026-11-20 10:00", env=bob,
            input="/remember I grow tomatoes on my balcony\n")
    assert r.code == 0, r.err

    on_server = collections(chroma)
    ada_ids = {m["id"] for m in memories(cli, ada)}
    bob_ids = {m["id"] for m in memories(cli, bob)}
    assert on_server["u-ada2-memories"] == ada_ids
    assert on_server["u-bob2-memories"] == bob_ids
    assert not ada_ids & bob_ids

    r = cli("memory", "search", "blue giraffe bank PIN", "--json", env=bob)
    assert r.code == 0, r.err
    assert all(h["id"] in bob_ids for h in r.json())
    assert "giraffe" not in r.out
    r = cli("memory", "search", "tomatoes balcony", "--json", env=ada)
    assert all(h["id"] in ada_ids for h in r.json())
    assert "tomatoes" not in r.out

    # Forgetting everything of one user leaves the other's vectors alone.
    r = cli("memory", "forget", "--all", "--yes", env=ada)
    assert r.code == 0, r.err
    on_server = collections(chroma)
    assert on_server["u-ada2-memories"] == set()
    assert on_server["u-bob2-memories"] == bob_ids


@needs_chroma
def test_an_unreachable_chroma_server_is_one_notice_and_the_chat_goes_on(cli):
    """The vector server down is a degraded mode (docs/deploy.md): the answer comes from words and time,
    the message is stored, and one notice says why."""
    env = {**FAST, "PERSONAVLM_STORE_KIND": "server", "PERSONAVLM_STORE_URL": f"http://127.0.0.1:{_free_port()}",
           "PERSONAVLM_USER": "carol"}
    r = cli("chat", "--once", "hello", "--no-update", env=env)
    assert r.code == 0 and r.out.strip(), r.err
    notice = " ".join(ln for ln in r.err.splitlines() if not _embedded_notice(ln))
    assert "Traceback" not in r.err and notice.count("not reachable") == 1, r.err
    assert "vector store" in notice and "127.0.0.1" in notice and "answering from words and dates only" in notice
    assert [m["text"] for m in memories(cli, env) if m.get("role") == "user"] == ["hello"]


@needs_chroma
def test_a_chroma_server_that_goes_away_mid_chat(cli, tmp_path):
    server = start_chroma(tmp_path / "chroma-doomed")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **FAST, **store_env(server),
           "PERSONAVLM_USER": "dave"}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "chat", "--no-update", "--at",
                                 "2026-11-20 10:00"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True)
        try:
            proc.stdin.write("The first message reaches the store.\n")
            proc.stdin.flush()
            first = proc.stdout.readline()  # the first answer ends with a newline
            assert first.strip(), proc.stderr.read() if proc.poll() is not None else "no answer"
            server.kill()
            proc.stdin.write("The second message finds the store gone.\n")
            proc.stdin.close()
            proc.wait(120)
            err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err  # a degraded mode, not an outage: the chat went on
        assert "Traceback" not in err and "not stored" not in err, err
        notice = " ".join(ln for ln in err.splitlines() if ln.strip() and not _embedded_notice(ln))
        assert notice.count("not reachable") == 1 and server.url in notice, err

        # The turn was written to the record file before the vector store was asked.
        users = [m["text"] for m in memories(cli, env) if m.get("role") == "user"]
        assert users == ["The first message reaches the store.", "The second message finds the store gone."]

        # The server comes back (same data, same port): the next start embeds what was missed.
        # (A chat still open would do it at its next message: test_server_faults.py.)
        port = int(server.url.rsplit(":", 1)[1])
        server = start_chroma(tmp_path / "chroma-doomed", port=port)
        r = cli("chat", "--once", "Back again.", "--no-update", "--at", "2026-11-20 10:10", env=env)
        assert r.code == 0, r.err
        assert collections(server)["u-dave-memories"] == {m["id"] for m in memories(cli, env)}
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# The model on an OpenAI-compatible server
# --------------------------------------------------------------------------------------------------


@needs_model_server
def test_remote_model_api_against_llama_cpp_server(model_server):
    from personavlm_cli.adapters.remote_llm import RemoteChatModel
    from personavlm_cli.core.errors import ModelError

    m = RemoteChatModel(model_server.url + "/v1", n_ctx=4096)
    assert "remote model" in m.load_info.summary_line() and model_server.url in m.load_info.summary_line()
    assert m.vision is False and m.n_ctx == 4096
    assert m.count_tokens("hello world, how are you?") > 3
    # The server names its model by the GGUF's path, a file of this machine: counted here by its vocabulary.
    assert m._local_tokenizer() is not None and m._tokenize_path == "", "not the estimate, nor the server"
    apart = RemoteChatModel(model_server.url, n_ctx=4096)
    apart._tokenizer = None  # as from another machine: the server's own tokenizer
    assert apart.count_tokens("hello world, how are you?") == m.count_tokens("hello world, how are you?")
    assert apart._tokenize_path == "/extras/tokenize", "the server's own tokenizer, not the estimate"
    apart.close()
    assert m.check() == "SmolLM2-135M-Instruct.Q4_1.gguf"

    pieces = list(m.stream([{"role": "system", "content": "Answer in one short sentence."},
                            {"role": "user", "content": [{"type": "text", "text": "Say hello."},
                                                         {"type": "image_path", "path": "/no/such.png"}]}],
                           max_tokens=16, temperature=0.0))
    assert "".join(pieces).strip()
    assert len(pieces) > 1, "streamed piece by piece"

    # A grammar and a JSON schema both constrain what the server generates.
    assert m.complete([{"role": "user", "content": "Is the sky green?"}], grammar='root ::= "yes" | "no"',
                      max_tokens=4) in ("yes", "no")
    schema = {"type": "object", "properties": {"mood": {"type": "string", "enum": ["calm", "tense"]},
                                               "quiet": {"type": "boolean"}},
              "required": ["mood", "quiet"], "additionalProperties": False}
    raw = m.complete([{"role": "user", "content": "Describe a quiet lake."}], json_schema=schema, max_tokens=60)
    obj = json.loads(raw)
    assert set(obj) == {"mood", "quiet"} and obj["mood"] in ("calm", "tense")
    assert m.complete_json([{"role": "user", "content": "Describe a quiet lake."}], schema, max_tokens=60)["mood"]

    # The server's refusal is one line, not a traceback or a JSON dump.
    with pytest.raises(ModelError) as e:
        m.complete([{"role": "user", "content": "word " * 6000}], max_tokens=8)
    assert "could not answer" in str(e.value) and "\n" not in str(e.value)


@needs_model_server
def test_chat_with_the_model_on_a_server(cli, model_server):
    env = {**FAST, **model_env(model_server), "PERSONAVLM_USER": "erin"}
    before = completions_served(model_server)
    r = cli("chat", "--once", "Hello! I am Erin and I love meeting new people at big parties.", "--at", "2026-11-20 10:00",
            env=env)
    assert r.code == 0, r.err
    assert r.out.strip()
    assert "embedded SmolLM2" not in r.err, "no local model is loaded"
    # The answer; quitting does not wait for the update stage, whose constrained JSON requests
    # (personality, the model's rephrasing) run on the server with `memory update`.
    assert "left to learn" in r.err
    u = cli("memory", "update", env=env)
    assert u.code == 0, u.err
    # The answer, and at least one request of the update stage (a small model's personality reading
    # needs no model call: it is read from evidence with the text encoder).
    assert completions_served(model_server) - before >= 2
    turns = [m for m in memories(cli, env) if m["type"] == "turn"]
    assert [t["role"] for t in turns] == ["user", "assistant"]
    r = cli("profile", "history", "--json", env=env)
    assert r.code == 0, r.err
    assert [row["turn_id"] for row in r.json()] == [turns[0]["id"]], "the personality update ran"

    # With long-term memory, recall runs first and the answer is the one request (no decision call);
    # --model-decides would add the paper's decision request (`chat.retrieval`).
    before = completions_served(model_server)
    r = cli("chat", "--at", "2026-11-20 10:05", "--no-update", "--show-reasoning", env=env,
            input="/remember My favourite mountain is Mont Blanc\nWhich mountain do I like best?\n")
    assert r.code == 0, r.err
    assert "step 1: retrieve" in r.err and "Mont Blanc" in r.err, "the memory was recalled up front"
    assert completions_served(model_server) - before >= 1


@needs_model_server
@needs_chroma
def test_both_servers_together(cli, chroma, model_server, isolated_home):
    env = {**FAST, **store_env(chroma), **model_env(model_server), "PERSONAVLM_USER": "frank"}
    r = cli("chat", "--at", "2026-11-20 10:00", "--no-update", env=env,
            input="I keep bees in my garden.\n/remember My bees are Italian honey bees\n")
    assert r.code == 0, r.err
    listing = memories(cli, env)
    assert collections(chroma)["u-frank-memories"] == {m["id"] for m in listing}
    assert not (isolated_home / "data" / "users" / "frank" / "chroma").exists()
    r = cli("memory", "search", "honey bees", "--json", env=env)
    assert r.code == 0, r.err
    assert r.json()[0]["text"] == "My bees are Italian honey bees"


@needs_model_server
def test_a_model_server_that_goes_away(cli, tmp_path):
    server = start_model_server(tmp_path / "llama-doomed")
    env = {**FAST, **model_env(server), "PERSONAVLM_USER": "gina"}
    try:
        r = cli("chat", "--once", "Hello there.", "--no-update", "--at", "2026-11-20 10:00", env=env)
        assert r.code == 0, r.err

        # In the middle of an answer: the connection drops while the answer streams.
        long_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env, "PERSONAVLM_MODEL_MAX_TOKENS": "400"}
        proc = subprocess.Popen([sys.executable, "-m", "personavlm_cli", "chat", "--once",
                                 "Write a very long story about a dragon and a knight.", "--no-update",
                                 "--at", "2026-11-20 10:01"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=long_env, cwd=ROOT)
        try:
            assert proc.stdout.read(1), "the answer starts streaming"
            server.kill()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err = err.decode()
        assert proc.returncode != 0, "the answer (400 tokens at most) cannot have ended before the kill"
        assert "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "not reachable" in lines[0] and server.url in lines[0], err
        assert "middle of the answer" in lines[0]

        # Then a message while it is down: one line, and the user's turn is kept.
        r = cli("chat", "--once", "Are you still there?", "--no-update", "--at", "2026-11-20 10:02", env=env)
        assert_one_line_error(r, "model server", "not reachable", server.url)
        listing = memories(cli, env)
        users = [m for m in listing if m.get("role") == "user"]
        assert [m["text"] for m in users] == ["Hello there.", "Write a very long story about a dragon and a knight.",
                                              "Are you still there?"]
        # The part of the story that arrived before the connection broke is kept as the answer.
        partial = [m for m in listing if m.get("role") == "assistant" and m["source_ids"] == [users[1]["id"]]]
        assert len(partial) == 1 and partial[0]["text"]
    finally:
        server.stop()


def test_an_unreachable_model_server_is_one_line(cli):
    env = {**FAST, "PERSONAVLM_MODEL_KIND": "openai-compatible",
           "PERSONAVLM_MODEL_URL": f"http://127.0.0.1:{_free_port()}", "PERSONAVLM_USER": "hank"}
    r = cli("chat", "--once", "hello", "--no-update", env=env)
    assert_one_line_error(r, "model server", "not reachable")
    r = cli("chat", "--once", "hello", "--no-update",
            env={**env, "PERSONAVLM_MODEL_URL": "not-a-url"})
    assert_one_line_error(r, "model.url")

    from personavlm_cli.adapters.remote_llm import RemoteChatModel
    from personavlm_cli.core.errors import ModelError

    m = RemoteChatModel(env["PERSONAVLM_MODEL_URL"])
    assert m.count_tokens("twelve characters") == 6, "an estimate when the server cannot be asked"
    with pytest.raises(ModelError, match="not reachable"):
        m.check()
