"""`personavlm mcp`: the user's memory as a Model Context Protocol server over stdio (the official `mcp`
SDK), for desktop assistants, editors and other MCP clients.

One user per server. Every call opens the store as a command does and closes it after: readers
(list, show, profile) read the records without the writer lock; search, remember and forget take
the lock for the call only, so a chat can run between calls, and a call made while a chat holds the
store gets one line saying so (search falls back to words, as `memory search` does). The chat model
is never loaded: remembering learns by rules, like `/remember`. The use cases are
``core/memory_access.py``; this module only declares them to the SDK.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer

from personavlm_cli.cli.common import UserOpt, make_env

INSTRUCTIONS = (
    "The user's personal memory, kept on their machine by personavlm. search_memories before answering "
    "questions about the user; remember only what the user said about themselves, in their words; "
    "forget erases for real and needs confirm=true after the user agreed.")


def build_server(user: str | None = None, env_factory: Callable[[], Any] | None = None):
    """The MCP server of ``user``'s memory (in-process: the tests connect the SDK's client to it)."""
    from mcp.server import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ToolAnnotations

    from personavlm_cli.core import memory_access as access
    from personavlm_cli.core.errors import NotFoundError, PersonaError, StoreBusyError

    make = env_factory or (lambda: make_env(user))
    name = make().user  # a bad user name is refused before the server starts
    server = MCPServer("personavlm", instructions=INSTRUCTIONS)

    # One call at a time in this process, the background flusher's included: each takes the home's lock.
    calls = threading.Lock()
    flusher: list = []

    def call(fn: Callable[[Any], Any]) -> Any:
        with calls:
            env = make()
            try:
                return fn(env)
            except PersonaError as e:  # one line, as on the command line
                raise ToolError(" ".join(str(e).split())) from None
            finally:
                down = env._store is not None and env._store.vectors_down is not None
                env.close()
                if down:
                    outbox_flusher().kick()

    def flush_step() -> bool:
        """Open the store as a writer call does and flush the vector outbox; False while the vector server
        is down, or while a chat holds the store (its own flusher does it then)."""
        with calls:
            env = make()
            try:
                store = env.store(write=True, create=False)
                try:
                    return store.flush_outbox()
                finally:
                    store.take_notices()  # nobody reads them here: not one line on stderr per try
            except NotFoundError:
                return True
            except StoreBusyError:
                return False
            finally:
                env.close()

    def outbox_flusher():
        """Started at the first call that finds the vector server down: retries with backoff until the
        outbox is flushed, then sleeps until kicked again (core/outbox.py)."""
        if not flusher:
            from personavlm_cli.core.outbox import OutboxFlusher

            flag = {"due": False}

            def step() -> bool:
                flag["due"] = not flush_step()
                return not flag["due"]

            flusher.append(OutboxFlusher(step, lambda: flag["due"], name="personavlm-mcp-outbox").start())
        return flusher[0]

    server._personavlm_stop = lambda: [f.stop() for f in flusher]  # mcp(): at the end of the session

    def writer(env):
        store = env.store(write=True, create=True)
        store.sync_vectors()
        return store

    read_only = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)

    @server.tool(annotations=read_only)
    def search_memories(query: str, limit: int = 10) -> list[dict]:
        """Search the user's memories (what they said, learnt facts, habits, episodes, images) with the
        same recall as the chat. Returns the best matches, each with its id, type, text, time and score."""
        def run(env):
            try:
                return access.search(writer(env), query, limit)
            except StoreBusyError:  # a chat holds the store: the record file's words still answer
                env.close()
                return access.search(env.store(write=False, create=False), query, limit,
                                     weights={"dense": 0.0, "keywords": 0.0, "image": 0.0})
        return call(run)

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False))
    def remember(statement: str) -> dict:
        """Remember a statement of the user's, in their own words (as /remember in the chat): merged with
        what it repeats, superseding what it changes. Returns the memory kept and whether it is new."""
        return call(lambda env: access.remember(writer(env), statement))

    @server.tool(annotations=read_only)
    def list_memories(limit: int = 50, types: list[str] | None = None,
                      include_superseded: bool = False) -> list[dict]:
        """The user's newest memories, oldest first (types: turn, semantic, episodic, procedural, core,
        image)."""
        return call(lambda env: access.list_memories(env.records(readonly=True), types, limit, include_superseded))

    @server.tool(annotations=read_only)
    def show_memory(memory_id: str) -> dict:
        """One memory with its provenance: the turns it was learnt from, what was derived from it, and its
        earlier and later versions."""
        return call(lambda env: access.show(env.records(readonly=True), memory_id))

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True,
                                             openWorldHint=False))
    def forget(ids: list[str] | None = None, query: str | None = None, confirm: bool = False) -> dict:
        """Erase memories for real (text, vectors, image files, and what was derived from them), as
        `personavlm memory forget` does: by ids, or by a query (every memory that holds its words literally,
        case aside; memories that share other sources are recomputed, and only the profile values that hold
        the words are removed). Without confirm=true nothing is erased and the answer lists what would be;
        ask the user before confirming."""
        return call(lambda env: access.forget(writer(env), ids, query, confirm))

    @server.tool(annotations=read_only)
    def read_profile() -> dict:
        """The user's profile: core facts (name, places, people...), habits, and Big Five personality."""
        return call(lambda env: access.profile(env.records(readonly=True), name))

    @server.resource("personavlm://profile", name="profile", mime_type="application/json",
                     description="The user's profile: core facts, habits, Big Five personality.")
    def profile_resource() -> dict:
        return call(lambda env: access.profile(env.records(readonly=True), name))

    return server


def mcp(user: UserOpt = None,
        check: Annotated[bool, typer.Option("--check", help="Check the user's store opens, print the tools, "
                                                             "and exit (instead of serving).")] = False):
    """Serve the user's memory to MCP clients (Model Context Protocol, over stdio).

    Tools: search_memories, remember, list_memories, show_memory, forget (needs confirm=true),
    read_profile; resource personavlm://profile. Add it to a client's configuration as the command
    `personavlm mcp` (README: "Memory for other tools"). The chat model is never loaded.
    """
    import anyio

    from personavlm_cli.cli.common import err, line

    server = build_server(user)
    if check:
        from personavlm_cli.cli.common import count
        from personavlm_cli.core.errors import NotFoundError

        async def tools() -> list[str]:
            return [t.name for t in await server.list_tools()]

        env = make_env(user)
        try:
            records = env.records(readonly=True)
            held = count(records.count(), "memory")
            records.close()
        except NotFoundError:
            held = "no memories yet"
        err.print(line(f"personavlm mcp for '{env.user}' ({held}): tools ", ", ".join(anyio.run(tools))))
        return
    try:
        anyio.run(server.run_stdio_async)
    finally:
        server._personavlm_stop()  # the outbox flusher, if one runs: never waited for
