"""One chat turn end to end with the real embedded model and the real store: recall first, learning
from the user's own words, supersession across sessions, quitting at once, verify, forget by text."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

from personavlm_cli.core.conversation import respond
from personavlm_cli.core.learning import grounding, profile
from tests.kit import real_store


def test_retrieve_first_puts_memories_in_the_answer_prompt_without_a_decision_call(cli):
    assert cli("chat", "--at", "2026-05-04 09:00", "--no-update",
               input="/remember My parrot is called Mango and he whistles all day\n").code == 0
    r = cli("chat", "--at", "2026-05-08 10:00", "--no-update", input="What is my parrot called?\n/why\n/stats\n")
    assert r.code == 0, r.err
    why = r.out.split("step 1:")[1]
    assert "retrieve" in why.splitlines()[0] and "recalled up front" in why and "(forced)" not in why.splitlines()[0]
    sem = next(m["id"] for m in cli("memory", "list", "--json").json() if m["type"] == "semantic")
    assert sem in why, "the learnt memory was recalled into the prompt"
    assert "step 2: answer" in why
    assert "memories recalled into the prompt: 1" in r.out or "memories recalled into the prompt: " in r.out
    answer = next(m for m in cli("memory", "list", "--json").json() if m.get("role") == "assistant")
    steps = cli("memory", "show", answer["id"], "--json").json()["meta"]["reasoning"]["steps"]
    assert [s["action"] for s in steps] == ["retrieve", "answer"], "one recall, then the answer: no decision step"


def test_what_is_learnt_comes_from_the_users_words_and_a_switch_supersedes_across_sessions(cli):
    r = cli("chat", "--at", "2026-05-04 09:00",
            input="My cat is called Zorblax.\nI love Sprite, I drink it every day.\nI am planning a trip to Lisbon in May.\n")
    assert r.code == 0, r.err
    r = cli("chat", "--at", "2026-05-06 18:00", input="/remember I switched from Sprite to Coke\n")
    assert r.code == 0, r.err
    assert "replaces" in r.err
    everything = cli("memory", "list", "--all", "--json").json()
    said = [m["text"] for m in everything if m["type"] == "turn" and m.get("role") == "user"]
    said.append("I switched from Sprite to Coke")
    sprite = [m for m in everything if m["type"] in ("semantic", "procedural") and "Sprite" in m["text"]
              and "Coke" not in m["text"]]
    assert sprite and all(m["superseded_by"] for m in sprite), "Sprite is history now"
    coke = [m for m in everything if m["type"] == "semantic" and "Coke" in m["text"]]
    assert coke and not coke[0]["superseded_by"]
    for m in everything:
        if m["type"] in ("semantic", "procedural", "episodic"):
            assert grounding.supported(m["text"], said), m["text"]
    core = cli("profile", "show", "--json").json()["core"]
    assert core.get("pets") == "cat Zorblax"
    for key, value in core.items():
        assert key in profile.FIELDS and grounding.supported(value, said), (key, value)
    assert "name" not in core, "no value the user did not say (not even the login name)"


def test_quitting_returns_with_learning_left_pending_and_memory_update_finishes_it(cli):
    r = cli("chat", "--at", "2026-05-04 09:00",
            input="I work as a court stenographer.\nI really dislike olives.\nI love meeting new people at big parties.\n")
    assert r.code == 0, r.err
    pending = cli("memory", "list", "--pending", "--json").json()
    assert "left to learn" in r.err and pending, "quit did not wait for the model's part of the update"
    # The statements were learnt at once, by rules, before quitting.
    texts = [m["text"] for m in cli("memory", "list", "--json").json() if m["type"] == "semantic"]
    assert "I work as a court stenographer." in texts and "I really dislike olives." in texts
    u = cli("memory", "update")
    assert u.code == 0, u.err
    assert cli("memory", "list", "--pending", "--json").json() == []
    # The personality reading moved on the one message that says something about a trait, and only then.
    assert len(cli("profile", "history", "--json").json()) == 1
    again = cli("memory", "update")
    assert again.code == 0 and "Nothing left to learn" in again.err


def test_forget_by_text_shows_what_matches_and_never_erases_a_random_memory(cli):
    cli("chat", "--at", "2026-05-04 09:00", "--no-update", input="/remember How to make a pizza: dough, sauce, cheese\n")
    before = cli("memory", "list", "--all", "--json").json()
    r = cli("chat", "--at", "2026-05-04 09:05", "--no-update", input="/forget qwertyuiop\n/forget 999\n/forget pizza\n")
    assert r.code == 0, r.err
    assert r.err.count("Nothing matches") == 2
    assert "pizza" in r.err and "no terminal to ask" in r.err, "a match is shown, and a script cannot confirm"
    after = cli("memory", "list", "--all", "--json").json()
    assert {m["id"] for m in before} <= {m["id"] for m in after}, "nothing was erased without a yes"


def test_memory_verify_finds_what_the_user_never_said_and_drops_it_only_when_asked(cli, isolated_home):
    from personavlm_cli.cli.common import make_env
    from personavlm_cli.core.store import new_memory

    assert cli("chat", "--at", "2026-05-04 09:00", input="My parrot is called Mango.\n").code == 0
    turn = next(m for m in cli("memory", "list", "--json").json() if m.get("role") == "user")
    env = make_env(None)
    store = env.store(write=True)
    invented = new_memory("semantic", "The user is a famous astronaut", datetime(2026, 5, 4, 9).astimezone(),
                          source_ids=[turn["id"]], meta={"origin": "extracted"})
    store.add([invented])
    env.close()
    r = cli("memory", "verify", "--json")
    assert r.code == 0, r.err
    assert [f["id"] for f in r.json()] == [invented.id]
    assert any(m["id"] == invented.id for m in cli("memory", "list", "--json").json()), "not erased without --drop"
    r = cli("memory", "verify", "--drop", "--yes")
    assert r.code == 0, r.err
    ids = {m["id"] for m in cli("memory", "list", "--all", "--json").json()}
    assert invented.id not in ids and turn["id"] in ids
    assert "All" in cli("memory", "verify").out


def test_a_model_that_invents_facts_is_refused_by_the_grounding_check(tmp_path):
    """extractor 'model': whatever the model writes must be the user's words, or it is dropped."""
    from personavlm_cli.core.store import new_memory
    from personavlm_cli.core.update_stage import UpdateStage

    class Inventor:
        def complete_json(self, messages, schema, **kw):
            props = schema.get("properties", {})
            if "decision" in props:
                return {"reason": "x", "decision": True, "content": "The user is a famous astronaut",
                        "keywords": "astronaut"}
            if "facts" in props:
                return {"facts": [{"key": "occupation", "value": "astronaut"}, {"key": "pets", "value": "parrot Mango"}]}
            if "entries" in props:
                return {"entries": [{"key": "space", "text": "Flies to the moon every week"}]}
            if "topics" in props:
                return {"topics": [{"summary": "The user talked about space travel", "keywords": "space",
                                    "rounds": [1]}]}
            return {t: 3 for t in props}

    store = real_store(tmp_path)  # the real parts (tests/kit)
    try:
        at = datetime(2026, 5, 4, 9).astimezone()
        turn = new_memory("turn", "My parrot is called Mango.", at, role="user", session_id="s1")
        reply = new_memory("turn", "You are a famous astronaut with a parrot.", at, role="assistant",
                           session_id="s1", source_ids=[turn.id])
        store.add([turn, reply])
        stage = UpdateStage(store, Inventor(), "ada", extractor="model")
        stage.turn({"user": turn.id, "assistant": reply.id})
        stage.session("s1")
        learnt = store.records.list(types=["semantic", "procedural", "episodic", "core"])
        assert learnt, "the user's own statement is still learnt"
        for m in learnt:
            assert "astronaut" not in m.text and "moon" not in m.text and "space" not in m.text, m.text
        core = store.records.list(types=["core"])[-1].meta["facts"]
        assert core == {"pets": "parrot Mango"}
        assert int(store.records.get_meta("learning_dropped")) >= 4
    finally:
        store.close()


@pytest.mark.timeout(900)
@pytest.mark.slow  # the embedded model
def test_the_answers_cache_survives_a_background_update_and_a_follow_up_pays_only_for_new_tokens(tmp_path):
    """Real model: a follow-up message in a session reuses llama.cpp's cache of the previous prompt,
    even though the update thread ran a model job in between (on its own context over the weights)."""
    from personavlm_cli.adapters.gguf import embedded_model_path
    from personavlm_cli.adapters.llm import ChatModel
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.background import BackgroundUpdates
    from personavlm_cli.core.gate import ModelGate
    from personavlm_cli.core.update_stage import UpdateStage

    store = real_store(tmp_path)  # the real parts (tests/kit)
    model = ChatModel(embedded_model_path(), n_ctx=2048)
    gate = ModelGate()
    assistant = Assistant(store, model, "ada", model_lock=gate, prompt_style="compact")
    updates = UpdateStage(store, model, "ada", gate)
    fork = model.fork()
    gate.on_wait.append(fork.interrupt)
    calls = []
    original = fork.complete_json

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    fork.complete_json = counted
    # The model's own extraction (a capable model's path), so that the update surely runs a model job.
    background = BackgroundUpdates(lambda: UpdateStage(store.fork(), fork, "ada", gate, extractor="model")).start()
    try:
        at = datetime(2026, 5, 4, 9).astimezone()
        sampling = {"max_tokens": 24, "temperature": 0.0}
        ex, stream = respond(assistant, "My parrot is called Mango and he whistles all day.", at, updates=updates,
                                       sampling=sampling)
        "".join(stream)
        first = dict(model.last_usage)
        background.poke()
        assert background.wait_idle(300) and not store.records.jobs(["turn"]), "the update job ran"
        assert calls, "the update used the model in between"
        ex, stream = respond(assistant, "And what does he eat?", at + timedelta(minutes=1), updates=None,
                                       sampling=sampling)
        "".join(stream)
        second = dict(model.last_usage)
        # Everything the first prompt held is reused except its generation prompt ("<|im_start|>assistant"):
        # the compact layout leaves the small model's own answer out of the next prompt.
        assert second["cached_tokens"] >= first["prompt_tokens"] - 3, (first, second)
        assert second["prompt_tokens"] - second["cached_tokens"] < 60, "only the new tokens were evaluated"
    finally:
        assert background.stop()
        fork.close()
        model.close()
        store.close()


def test_an_answer_stops_a_background_model_call_and_starts_within_one_token(tmp_path):
    """The gate asks the update thread's model to stop when an answer waits (scripted model)."""
    from personavlm_cli.core.errors import ModelInterrupted
    from personavlm_cli.core.gate import ModelGate

    gate = ModelGate()
    stop = threading.Event()
    started = threading.Event()
    outcome = []
    gate.on_wait.append(stop.set)

    def job():
        with gate.background():
            started.set()
            for _ in range(500):  # a long model call, token by token
                if stop.is_set():
                    outcome.append(ModelInterrupted.__name__)
                    return
                threading.Event().wait(0.01)
            outcome.append("finished")

    t = threading.Thread(target=job)
    t.start()
    assert started.wait(5)
    with gate:
        assert outcome == ["ModelInterrupted"], "the answer got the model before the job's call finished"
    t.join(5)


def test_what_the_user_writes_into_the_core_profile_is_what_it_shows(cli):
    assert cli("chat", "--at", "2026-05-04 09:00", "--no-update", input="/remember My parrot is called Mango\n").code == 0
    core = next(m for m in cli("memory", "list", "--json").json() if m["type"] == "core")
    r = cli("memory", "edit", core["id"], "name: Dana Whitfield pets: parrot Mango")
    assert r.code == 0, r.err
    assert cli("profile", "show", "--json").json()["core"] == {"name": "Dana Whitfield", "pets": "parrot Mango"}
    bad = cli("memory", "edit", r.out.strip(), "favourite colour: blue")
    assert bad.code != 0 and "field: value" in bad.err


def test_a_chat_a_background_job_and_a_forget_share_one_working_store(tmp_path):
    """The update thread works while the user forgets: both use the one store (its vectors built before
    the thread starts), the forget waits for the job's gate, and neither fails."""
    import time

    from personavlm_cli.core import forgetting
    from personavlm_cli.core.background import BackgroundUpdates
    from personavlm_cli.core.gate import ModelGate
    from personavlm_cli.core.store import new_memory
    from personavlm_cli.core.update_stage import UpdateStage

    class Slow:
        def complete_json(self, messages, schema, **kw):
            time.sleep(0.2)
            return {t: 3 for t in schema.get("properties", {})}

        def interrupt(self):  # the model port's: nothing to stop between calls of 0.2 s
            pass

    store = real_store(tmp_path)  # the real parts (tests/kit)
    gate = ModelGate()
    _ = store.vectors, store.text_encoder  # built before the thread, as the chat does
    at = datetime(2026, 5, 4, 9).astimezone()
    stage = UpdateStage(store, Slow(), "ada", gate)
    turns = []
    for i in range(6):
        u = new_memory("turn", f"My hobby number {i} is painting number {i}.", at + timedelta(minutes=i),
                       role="user", session_id="s1")
        a = new_memory("turn", "Nice.", at + timedelta(minutes=i), role="assistant", session_id="s1",
                       source_ids=[u.id])
        store.add([u, a])
        stage.learner.learn_turn(u)
        stage.queue.enqueue_turn(u, a)
        turns.append(u)
    background = BackgroundUpdates(lambda: UpdateStage(store.fork(), Slow(), "ada", gate)).start()
    try:
        background.poke()
        time.sleep(0.3)
        with gate:
            plan = forgetting.plan(store, [turns[0].id])
            erased = forgetting.execute(store, plan, "forget", stage.queue)
        assert turns[0].id in erased
        assert background.wait_idle(60)
        assert background.error is None
        assert store.records.get(turns[0].id) is None
        assert not [j for j in store.records.jobs(["turn"]) if j["payload"]["user"] != turns[0].id]
    finally:
        assert background.stop()
        store.close()


@pytest.mark.slow  # the embedded model
def test_a_piped_chat_that_hits_a_full_disk_says_which_lines_were_not_stored(isolated_home, monkeypatch, capsys):
    import io
    import sys

    from personavlm_cli.cli import main
    from personavlm_cli.core.assistant import Assistant
    from personavlm_cli.core.errors import disk_full

    real = Assistant.store_user_turn
    calls = []

    def store_user_turn(self, text, at, image_paths, **kw):
        calls.append(text)
        if len(calls) == 2:
            raise disk_full("the memory store")
        return real(self, text, at, image_paths, **kw)

    monkeypatch.setattr(Assistant, "store_user_turn", store_user_turn)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first line\nsecond line\nthird line\n"))
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", "--no-update", "--at", "2026-05-04 09:00"])
    out = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "line 2 not stored: no space left on the memory store" in out.err
    assert calls == ["first line", "second line", "third line"], "the lines after the failed one still ran"


def test_a_small_models_prompt_carries_the_profile_it_is_asked_about_and_a_cut_answer_says_so(cli):
    """The compact layout has no system text: the current profile reaches the model through the message's
    context ("where do I live?" → location), and an answer cut by model.max_tokens says so."""
    assert cli("chat", "--at", "2026-05-04 09:00", input="I work as a nurse and I live in Lyon.\n").code == 0
    assert cli("chat", "--at", "2026-06-04 09:00", input="I moved to Marseille last month.\n").code == 0
    assert cli("memory", "update").code == 0
    assert cli("profile", "show", "--json").json()["core"]["location"] == "Marseille"
    r = cli("chat", "--once", "Where do I live now?", "--show-reasoning", "--at", "2026-06-05 09:00",
            env={"PERSONAVLM_MODEL_MAX_TOKENS": "3"})
    assert r.code == 0, r.err
    assert "profile sent with the message: location: Marseille" in r.err
    assert "3-token limit" in r.err
