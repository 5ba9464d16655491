"""`personavlm mcp`: the user's memory over the Model Context Protocol, tested with the official SDK's own
client, in-process (``mcp.Client(server)``) and over stdio against the real program (slow).

Each scenario is one MCP session: it lists, searches, remembers, shows and forgets as a desktop assistant
would, and the store is then read with the ordinary commands to check that the same memories changed.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
import pytest

from tests.conftest import ROOT

TOOLS = {"search_memories", "remember", "list_memories", "show_memory", "forget", "read_profile"}


def data(result):
    """What a tool answered, as data (the SDK gives lists as structured content, objects as JSON text)."""
    assert not result.is_error, result.content
    structured = result.structured_content
    if structured and set(structured) == {"result"}:
        return structured["result"]
    return json.loads(result.content[0].text)


def error(result) -> str:
    assert result.is_error, result
    text = result.content[0].text
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text


def session(scenario, server=None):
    """Run ``scenario(client)`` against a server of the test user's memory, in-process."""
    from mcp import Client

    from personavlm_cli.cli.mcp import build_server

    async def main():
        async with Client(server or build_server()) as client:
            return await scenario(client)

    return anyio.run(main)


def test_a_client_lists_the_tools_and_the_profile_resource():
    async def scenario(client):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        resources = [str(r.uri) for r in (await client.list_resources()).resources]
        return tools, resources

    tools, resources = session(scenario)
    assert set(tools) == TOOLS
    assert "confirm" in tools["forget"].input_schema["properties"]
    assert tools["forget"].annotations.destructive_hint is True
    assert tools["search_memories"].annotations.read_only_hint is True
    assert resources == ["personavlm://profile"]


def test_remember_search_show_and_forget_through_mcp_change_the_same_store(run, monkeypatch):
    from personavlm_cli.cli.env import Env

    def no_model(self):
        raise AssertionError("the MCP server asked for the chat model")

    monkeypatch.setattr(Env, "model", no_model)
    async def scenario(client):
        kept = data(await client.call_tool("remember", {"statement": "My sister Ana lives in Lisbon."}))
        again = data(await client.call_tool("remember", {"statement": "My sister Ana lives in Lisbon."}))
        found = data(await client.call_tool("search_memories", {"query": "where does my sister live?"}))
        listed = data(await client.call_tool("list_memories", {}))
        shown = data(await client.call_tool("show_memory", {"memory_id": kept["id"]}))
        profile = data(await client.call_tool("read_profile", {}))
        resource = (await client.read_resource("personavlm://profile")).contents[0].text
        return kept, again, found, listed, shown, profile, json.loads(resource)

    kept, again, found, listed, shown, profile, resource = session(scenario)
    assert kept["new"] is True and kept["type"] == "semantic" and kept["text"] == "My sister Ana lives in Lisbon."
    assert again["new"] is False and again["id"] == kept["id"], "the same statement is merged, as /remember does"
    assert found[0]["id"] == kept["id"] and found[0]["score"] > 0
    assert kept["id"] in [m["id"] for m in listed]
    assert shown["origin"] == "/remember"
    assert profile["core"] == {"family": "sister Ana"} == resource["core"], "profile values said are applied"
    assert any(d["type"] == "core" for d in shown["derived"]), "provenance: what was derived from it"
    # The ordinary commands see what the MCP client wrote.
    assert [m["text"] for m in run("memory", "list", "--json").json() if m["type"] == "semantic"] == [kept["text"]]

    async def forget(client):
        asked = data(await client.call_tool("forget", {"query": "Ana lives in Lisbon"}))
        still = data(await client.call_tool("list_memories", {}))
        done = data(await client.call_tool("forget", {"query": "Ana lives in Lisbon", "confirm": True}))
        after = data(await client.call_tool("search_memories", {"query": "Lisbon"}))
        return asked, still, done, after

    asked, still, done, after = session(forget)
    assert asked["erased"] == [] and kept["id"] in [m["id"] for m in asked["would_erase"]]
    assert "confirm" in asked["note"] and kept["id"] in [m["id"] for m in still], "nothing erased unconfirmed"
    assert kept["id"] in done["erased"] and after == []
    # Exactly as `memory forget --query`: every memory that holds the words goes, every version; the profile
    # value "sister Ana" does not hold them, so it stays (recomputed without its erased source).
    left = run("memory", "list", "--json", "--all").json()
    assert not [m for m in left if "lisbon" in json.dumps(m).lower()], "no memory holds the forgotten words"
    assert [m["text"] for m in left if m["type"] == "semantic"] == []
    assert run("profile", "show", "--json").json()["core"] == {"family": "sister Ana"}


def test_bad_arguments_are_one_line_errors_and_stored_text_is_data():
    hostile = "I wrote [/b] and \x1b[2J in my notes"

    async def scenario(client):
        kept = data(await client.call_tool("remember", {"statement": hostile}))
        shown = data(await client.call_tool("show_memory", {"memory_id": kept["id"]}))
        problems = [await client.call_tool("forget", {}),
                    await client.call_tool("forget", {"ids": ["sem_nothere"], "query": "x"}),
                    await client.call_tool("forget", {"ids": ["sem_nothere"], "confirm": True}),
                    await client.call_tool("show_memory", {"memory_id": "[/b]\x1b"}),
                    await client.call_tool("list_memories", {"limit": 0}),
                    await client.call_tool("list_memories", {"types": ["nonsense"]}),
                    await client.call_tool("remember", {"statement": "  "}),
                    await client.call_tool("search_memories", {"query": ""})]
        return shown, [error(p) for p in problems]

    shown, problems = session(scenario)
    assert shown["text"] == hostile, "exactly as stored: no markup, no escaping in the data"
    assert "say what to forget" in problems[0] and "say what to forget" in problems[1]
    assert "no memory with id 'sem_nothere'" in problems[2] and "no memory with id" in problems[3]
    assert "limit" in problems[4] and "nonsense" in problems[5]
    assert "statement" in problems[6] and "query" in problems[7]


def test_while_a_chat_holds_the_store_writes_say_so_and_search_answers_by_words(run):
    from personavlm_cli.cli.common import make_env

    assert run("memory", "list").code != 0  # nothing yet
    session(lambda c: c.call_tool("remember", {"statement": "I play the cello on Sundays."}))
    holder = make_env(None)
    holder.store(write=True)  # the writer lock, as a running chat holds it
    try:
        async def scenario(client):
            return (await client.call_tool("remember", {"statement": "I like tea."}),
                    data(await client.call_tool("search_memories", {"query": "cello"})))

        refused, found = session(scenario)
    finally:
        holder.close()
    assert "busy" in error(refused) or "in use" in error(refused)
    assert [m["text"] for m in found] == ["I play the cello on Sundays."]


@pytest.mark.slow
def test_the_real_program_serves_memory_over_stdio(isolated_home):
    """The SDK's client starts `python -m personavlm_cli mcp` as an MCP client would, and talks over stdio."""
    from mcp import Client, StdioServerParameters

    env = {k: v for k, v in os.environ.items() if k.startswith(("PERSONAVLM_", "HF_", "PATH", "HOME"))}
    params = StdioServerParameters(command=sys.executable, args=["-m", "personavlm_cli", "mcp"],
                                   env={**env, "PYTHONPATH": str(ROOT), "ANONYMIZED_TELEMETRY": "False"},
                                   cwd=str(ROOT))

    async def main():
        async with Client(params) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            kept = data(await client.call_tool("remember", {"statement": "My dog is called Pistache."}))
            found = data(await client.call_tool("search_memories", {"query": "what is my dog called"}))
            done = data(await client.call_tool("forget", {"ids": [kept["id"]], "confirm": True}))
            listed = data(await client.call_tool("list_memories", {"types": ["semantic"]}))
            return tools, kept, found, done, listed

    tools, kept, found, done, listed = anyio.run(main)
    assert tools == TOOLS
    assert found[0]["text"] == "My dog is called Pistache."
    assert kept["id"] in done["erased"] and listed == []
