"""Recall for answers spread over several moments (issue 31, ``core/links.py``): an inference question
is answered by its subject's own words (``taste``), turns without content are demoted (``substance``), a
question for a category's instances looks for their words (``instance``, ``core/kinds.py``); all in the
chat's own recall, in ``memory search --explain`` and in ``/why``, and ``eval locomo --ablate`` reports
each. Real store, real MiniLM encoder and Chroma index; a scripted chat model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from personavlm_cli.core import links
from personavlm_cli.core.memory import Memory, iso, new_id
from personavlm_cli.core.recall import STOP_WORDS
from personavlm_cli.evals.workspace import temporary_store
from tests.conftest import assert_one_line_error
from tests.test_locomo import synthetic, write
from tests.test_relevance import scripted  # noqa: F401  (the fixture)

START = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)


def turn(text: str, minute: int, role: str = "user", session: str = "s1", speaker: str | None = None) -> Memory:
    return Memory(id=new_id("turn"), type="turn", text=text, occurred_at=iso(START + timedelta(minutes=minute)),
                  created_at=iso(START), role=role, session_id=session,
                  meta={"speaker": speaker} if speaker else {})


# --- the rules ------------------------------------------------------------------------------------


@pytest.mark.fast
def test_which_questions_are_inferences():
    for q in ("Would Melanie like a song by Vivaldi?", "What kind of music might I enjoy?",
              "Is Jon likely to open a second studio?", "Would I prefer a national park or a theme park?"):
        assert links.is_inference(q), q
    for q in ("What did Melanie paint recently?", "When did I move to Gdansk?", "Where do I work?"):
        assert not links.is_inference(q), q
    assert links.asks_about_user("What kind of holiday would I enjoy?")
    assert not links.asks_about_user("Would Melanie enjoy camping?")


@pytest.mark.fast
def test_first_person_share_and_substance_of_a_turn():
    own = turn("Melanie: We always look forward to our family camping trip.", 0, speaker="Melanie")
    to_other = turn("Melanie: Wow, that painting of yours is awesome! You did great.", 1, speaker="Melanie")
    assert links.first_person(own) == 1.0 and links.first_person(to_other) == 0.0
    # The speaker's name and a shared photo's caption are not the turn's words.
    assert links.spoken(turn("Gina: Thanks! [shares a photo: my dog and I]", 2, speaker="Gina")).strip() == "Thanks!"
    thanks = turn("Gina: Thanks a ton, Jon!", 3, speaker="Gina")
    story = turn("Gina: I lost my job at the delivery company, so I opened an online clothing store "
                 "selling vintage dance outfits and hoodies.", 4, speaker="Gina")
    assert links.substance_penalty(story, STOP_WORDS) == 0.0
    assert 0.6 < links.substance_penalty(thanks, STOP_WORDS) < 1.0
    fact = Memory(id=new_id("semantic"), type="semantic", text="Likes tea.", occurred_at=iso(START),
                  created_at=iso(START))
    assert links.substance_penalty(fact, STOP_WORDS) == 0.0, "learnt memories are short on purpose"
    # For a question about the user: the user's own turns by their pronouns, learnt memories fully.
    assert links.taste_score(fact, named=False, about_user=True) == 1.0
    assert links.taste_score(turn("I love tents.", 5), named=False, about_user=True) == 1.0
    assert links.taste_score(turn("I love tents.", 5, role="assistant"), named=False, about_user=True) == 0.0
    assert links.taste_score(fact, named=False, about_user=False) == 0.0


# --- in recall ------------------------------------------------------------------------------------


def _holiday_store(tmp_path):
    from personavlm_cli.adapters.text_encoder import TextEncoder

    store = temporary_store(tmp_path / "u", TextEncoder())
    mine = turn("I love hiking in the mountains and sleeping in a tent, it is my favourite kind of holiday.", 0)
    other = turn("You should book a holiday for Ana, a cruise with a spa.", 1, session="s2")
    short = turn("Holiday, yes!", 2, session="s3")
    filler = [turn(text, 10 + i, session=f"f{i}") for i, text in enumerate((
        "The plumber fixed the kitchen sink this morning.", "My car needs new tyres before winter.",
        "I finished reading a novel about a lighthouse keeper.", "The quarterly report is due on Friday.",
        "Our neighbour's dog barked all night.", "I baked sourdough bread with rye flour."))]
    store.add([mine, other, short, *filler])
    return store, mine, other, short


@pytest.mark.fast
def test_an_inference_question_finds_what_the_user_said_of_their_own_tastes(tmp_path):
    from personavlm_cli.core.recall import Query, recall

    store, mine, other, short = _holiday_store(tmp_path)
    question = Query(text="What kind of holiday would I enjoy?")
    hits = recall(store, question, k=3)
    assert hits[0].memory.id == mine.id and "taste" in hits[0].signals, [h.memory.text for h in hits]
    # Without the signal a turn that is not the user's taste (a short cheer, a plan for someone else) wins.
    plain = recall(store, question, k=3, weights={"taste": 0.0})
    assert plain[0].memory.id != mine.id and all("taste" not in h.signals for h in plain)
    # A question that is not an inference gets no taste signal.
    assert all("taste" not in h.signals for h in recall(store, Query(text="Where did I go hiking?"), k=3))
    # The short turn is demoted by what it lacks, and says so (the score taken, negative).
    by_id = {h.memory.id: h for h in hits}
    assert by_id[short.id].signals["substance"]["score"] < by_id[mine.id].signals["substance"]["score"]
    kept = {h.memory.id: h.score for h in recall(store, question, k=3, weights={"substance": 0.0})}
    assert kept[short.id] - by_id[short.id].score > kept[mine.id] - by_id[mine.id].score
    store.close()


@pytest.mark.fast
def test_a_named_speakers_own_words_answer_an_inference_about_them(tmp_path):
    """A transcript that names who spoke: the question names Melanie, her own first-person turns come first."""
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.recall import Query, recall

    store = temporary_store(tmp_path / "u", TextEncoder())
    own = turn("Melanie: We always look forward to our family camping trip, we roast marshmallows by the fire.",
               0, speaker="Melanie")
    praise = turn("Melanie: Your park photos are lovely, Caroline! You must enjoy parks so much.", 1,
                  role="assistant", speaker="Melanie")
    theirs = turn("Caroline: I went to a theme park with my friends and loved the rides.", 2, speaker="Caroline")
    store.add([own, praise, theirs])
    hits = recall(store, Query(text="Would Melanie be more interested in a national park or a theme park?"), k=3)
    assert hits[0].memory.id == own.id and "taste" in hits[0].signals, [h.memory.text for h in hits]
    assert "taste" not in next(h for h in hits if h.memory.id == theirs.id).signals, "Caroline is not the subject"
    store.close()


@pytest.mark.fast
def test_which_questions_ask_for_a_judgement_of_a_named_subject():
    """``topic``'s rules: a hypothetical ("would", "likely"), not "what kind of X did they ..." (a fact); the
    subject is a speaker the store's turns name, and the question is asked again without the name."""
    for q in ("Would Dana enjoy a jazz night out?", "Is Ola likely to move abroad?", "What might Jon say about it?"):
        assert links.is_hypothetical(q), q
    for q in ("What kind of dance did Gina's team perform?", "Does Dana prefer tea?", "What did Dana enjoy?"):
        assert not links.is_hypothetical(q), q
    dana = turn("Dana: I like tea.", 0, speaker="Dana Kowalska")
    words = {"would", "dana", "enjoy", "jazz"}
    assert links.subject([turn("I like tea.", 1), dana], words) == "Dana Kowalska"
    assert links.subject([turn("I like tea.", 1)], words) is None, "the chat's own turns name no speaker"
    assert links.without_subject("What would Dana\u2019s political leaning likely be?", "Dana") \
        == "What would political leaning likely be?"
    assert links.without_subject("Would Dana Kowalska enjoy jazz?", "Dana Kowalska") == "Would enjoy jazz?"


@pytest.mark.fast
def test_a_hypothetical_about_a_named_speaker_is_asked_of_their_turns_without_their_name(tmp_path):
    """Every turn of Dana's names her, so her name weighs as much as "jazz" in the question's vector, and Sam's
    concert shares two of its words: asked without her name, of her own turns, the one about Coltrane and Miles
    Davis (no word shared) comes first."""
    from personavlm_cli.adapters.text_encoder import TextEncoder
    from personavlm_cli.core.recall import Query, recall

    store = temporary_store(tmp_path / "u", TextEncoder())
    answer = turn("Dana: I've had Coltrane and Miles Davis records on repeat since college, saxophone solos make "
                  "my week.", 0, speaker="Dana", session="a")
    dana = [turn(f"Dana: {text}", 1 + i, speaker="Dana", session=f"d{i}") for i, text in enumerate((
        "I spent the whole weekend repainting my kitchen cabinets a bright sunny yellow colour.",
        "My sister and her twins are visiting next month, I am planning a picnic by the lake.",
        "I finally fixed the flat tyre on my old bike and rode it to the office.",
        "My manager moved our project deadline again, so I worked late three nights in a row.",
        "I planted tomatoes and basil in my garden, and the tomatoes are finally turning red.",
        "I signed up for a pottery class on Thursday evenings with my cousin.",
        "My grandmother taught me her dumpling recipe, I made forty of them yesterday.",
        "I ran my first half marathon in the rain and finished under two hours.",
        "We drove up the coast to see the lighthouse, my dog loved the beach."))]
    sam = [turn(f"Sam: {text}", 20 + i, role="assistant", speaker="Sam", session=f"s{i}") for i, text in enumerate((
        "I went to a concert last night, the band was loud.", "Would you enjoy coming along next time, Dana?"))]
    store.add([answer, *dana, *sam])
    question = Query(text="Would Dana enjoy a jazz concert?")
    hits = recall(store, question, k=3)
    assert hits[0].memory.id == answer.id and "topic" in hits[0].signals, [h.memory.text for h in hits]
    assert all(h.memory.meta["speaker"] == "Dana" for h in hits if "topic" in h.signals), "her turns only"
    plain = recall(store, question, k=3, weights={"topic": 0.0})
    assert plain[0].memory.id != answer.id and all("topic" not in h.signals for h in plain)
    # A question for a fact ("what kind of ... did") is not a judgement: no topic query.
    assert all("topic" not in h.signals for h in recall(store, Query(text="What kind of music did Dana play?"), k=3))
    store.close()
    # In chat the turns name no speaker: the topic query never runs.
    chat = temporary_store(tmp_path / "chat", TextEncoder())
    chat.add([turn("I've had Coltrane records on repeat since college.", 0), turn("Dana called about dinner.", 1)])
    assert all("topic" not in h.signals for h in recall(chat, Query(text="Would Dana enjoy a jazz night out?"), k=3))
    chat.close()


# --- a category to its instances (core/kinds.py) ---------------------------------------------------


@pytest.mark.fast
def test_which_category_words_ask_for_their_instances():
    from personavlm_cli.core import kinds

    assert kinds.categories("What sports do I play?", STOP_WORDS) == ["sport"]
    assert kinds.categories("How many pets does my sister have?", STOP_WORDS) == ["pet"]
    assert kinds.categories("what kind of music does Ola listen to", STOP_WORDS) == ["music"]
    assert kinds.categories("What's Tomek\u2019s job?", STOP_WORDS) == ["job"]
    assert kinds.categories("What is my relationship status?", STOP_WORDS) == ["relationship status"]
    assert kinds.categories("Which countries and cities have we been to?", STOP_WORDS) == ["country", "city"]
    # Not a request for instances: a reason, a time, a manner; a hypothetical; a modifier; one named thing.
    for q in ("Why did I give up sports?", "When did we visit those cities?", "How do I feed the pets?",
              "Would Ola enjoy sports?", "Where is the sports hall?", "What did Ola say at her job interview?",
              "What book did Ola lend me?"):
        assert kinds.categories(q, STOP_WORDS) == [], q
    words = kinds.instance_words("What sports do I play besides tennis?", STOP_WORDS)
    assert "swim" in words and "football" in words and "tennis" not in words, "its own words are asked already"
    assert len(words) <= kinds.MAX_WORDS
    assert "activity" in kinds.singulars("activities") and "pet" in kinds.singulars("pets")


def _sports_store(tmp_path):
    from tests.kit import fake_store

    store, _ = fake_store(tmp_path / "u")
    swim = turn("I swim every Tuesday morning at the lido before work.", 0, session="s1")
    tennis = turn("Tennis with Bo on Sunday, I finally won a set!", 1, session="s2")
    filler = [turn(text, 10 + i, session=f"f{i}") for i, text in enumerate((
        "The plumber fixed the kitchen sink this morning.", "My car needs new tyres before winter.",
        "I finished a novel about a lighthouse keeper.", "The quarterly report is due on Friday.",
        "Our neighbour's dog barked all night.", "I baked sourdough bread with rye flour."))]
    store.add([swim, tennis, *filler])
    return store, swim, tennis


@pytest.mark.fast
def test_a_question_for_a_category_finds_its_instances(tmp_path):
    """"What sports do I play?" shares no word with "I swim every Tuesday" or "Tennis with Bo": the instance
    signal finds both, says so in their signals, and is off with its weight at 0. The real SQLite lexical index;
    no vectors (their stand-in does not rank), so dense is off here."""
    from personavlm_cli.core.recall import Query, recall

    store, swim, tennis = _sports_store(tmp_path)
    lexical_only = {"dense": 0.0, "keywords": 0.0}
    hits = recall(store, Query(text="What sports do I play?"), k=3, weights=lexical_only)
    assert {h.memory.id for h in hits[:2]} == {swim.id, tennis.id}, [h.memory.text for h in hits]
    assert all("instance" in h.signals and h.signals["instance"]["rank"] >= 1 for h in hits[:2])
    without = recall(store, Query(text="What sports do I play?"), k=3, weights={**lexical_only, "instance": 0.0})
    assert not {h.memory.id for h in without} & {swim.id, tennis.id}, [h.memory.text for h in without]
    assert all("instance" not in h.signals for h in without)
    # A question that asks no category's instances gets no instance signal.
    other = recall(store, Query(text="Why did I give up sports?"), k=3, weights=lexical_only)
    assert all("instance" not in h.signals for h in other)
    store.close()


@pytest.mark.fast
def test_who_questions_symbols_and_the_head_of_a_question():
    """The rules added for multi-hop: a who-question about someone asks for the people in their life; symbols are a
    category; a plural category word asks for its instances in the question's head, not after its verb; the general
    words for what one goes to come first among the events' (within MAX_WORDS)."""
    from personavlm_cli.core import kinds

    assert kinds.categories("Who did I go to the concert with?", STOP_WORDS) == ["people"]
    assert kinds.categories("Who helped her move house?", STOP_WORDS) == ["people"]
    assert kinds.categories("Who wrote Pride and Prejudice?", STOP_WORDS) == [], "no one's life: no pronoun"
    assert kinds.categories("Who would I ask for help?", STOP_WORDS) == [], "a hypothetical: taste's question"
    assert kinds.categories("Which symbols does Ola wear?", STOP_WORDS) == ["symbol"]
    assert kinds.categories("What are my hobbies?", STOP_WORDS) == ["hobby"]
    assert kinds.categories("How many children does Bo have?", STOP_WORDS) == ["child"]
    # After the question's verb a plural is what the question is about, not what it asks for.
    assert kinds.categories("What did I buy for the kids?", STOP_WORDS) == []
    assert kinds.categories("What events has Ola joined to help children?", STOP_WORDS) == ["event"]
    assert kinds.categories("What do Ola's kids like?", STOP_WORDS) == ["kid"], "a possessive asks anywhere"
    events = kinds.instance_words("Which events did I go to?", STOP_WORDS)
    assert {"talk", "workshop", "class", "meeting", "group"} <= set(events)
    assert {"tattoo", "cross", "rainbow"} <= set(kinds.instance_words("Which symbols do I wear?", STOP_WORDS))


def _life_store(tmp_path):
    from tests.kit import fake_store

    store, _ = fake_store(tmp_path / "u")
    texts = {
        "mentor": "My sister and my old coach were there for me the whole time.",
        "talk": "I gave a talk at the library about living with diabetes.",
        "workshop": "Last month I ran a workshop for new volunteers at the shelter.",
        "tattoo": "The tattoo on my wrist is a compass, so I never lose my way.",
        "filler": "The plumber fixed the kitchen sink this morning.",
    }
    memories = {key: turn(text, i, session=f"s{i}") for i, (key, text) in enumerate(texts.items())}
    filler = [turn(text, 10 + i, session=f"f{i}") for i, text in enumerate((
        "My car needs new tyres before winter.", "I finished a novel about a lighthouse keeper.",
        "The quarterly report is due on Friday.", "I baked sourdough bread with rye flour."))]
    store.add([*memories.values(), *filler])
    return store, {key: m.id for key, m in memories.items()}


@pytest.mark.fast
def test_who_events_and_symbols_find_turns_that_share_no_word_with_the_question(tmp_path):
    """Held-out sentences of my own: each question shares no content word with its answer; the instance query
    finds it, and without the signal it is not found. Lexical only (the vectors' stand-in does not rank)."""
    from personavlm_cli.core.recall import Query, recall

    store, ids = _life_store(tmp_path)
    lexical_only = {"dense": 0.0, "keywords": 0.0}
    for question, wanted in (("Who stood by me when I was ill?", {"mentor"}),
                             ("Which events have I organised or spoken at?", {"talk", "workshop"}),
                             ("What symbols do I carry with me?", {"tattoo"})):
        found = [h.memory.id for h in recall(store, Query(text=question), k=3, weights=lexical_only)]
        assert {ids[w] for w in wanted} <= set(found), (question, found)
        without = [h.memory.id for h in recall(store, Query(text=question), k=3,
                                               weights={**lexical_only, "instance": 0.0})]
        assert not {ids[w] for w in wanted} & set(without), (question, without)
    store.close()


# --- the chat's own path --------------------------------------------------------------------------


@pytest.mark.fast
def test_search_explain_and_why_show_why_each_piece_came(run, scripted):  # noqa: F811
    lines = ["I love hiking in the mountains and sleeping in a tent, it is my favourite kind of holiday.",
             "Ana from work says a cruise holiday with a spa is the best.",
             "The plumber fixed the kitchen sink this morning.", "The quarterly report is due on Friday."]
    r = run("chat", "--at", "2026-02-01 09:00", "--no-update", input="\n".join(lines) + "\n")
    assert r.code == 0, r.err
    found = run("memory", "search", "What kind of holiday would I enjoy?", "--json").json()
    assert found[0]["text"] == lines[0] and "taste" in found[0]["signals"], found
    r = run("memory", "search", "What kind of holiday would I enjoy?", "--explain")
    assert r.code == 0 and "taste #1" in r.out, r.out
    r = run("chat", "--at", "2026-02-03 09:00", "--no-update", input="What kind of holiday would I enjoy?\n/why\n")
    assert r.code == 0, r.err
    why = [line for line in r.out.splitlines() if "favourite kind of holiday"[:20] in line or "I love hiking" in line]
    assert why and "taste" in why[-1], r.out
    assert not any("taste" in line for line in r.out.splitlines() if "Ana from work" in line), r.out


# --- eval locomo --ablate -------------------------------------------------------------------------


@pytest.mark.fast
def test_eval_locomo_reports_each_new_signal_ablated(run, tmp_path):
    data = write(tmp_path, synthetic())
    out = tmp_path / "out.json"
    r = run("eval", "locomo", str(data), "--retrieval-only", "--ablate", "new", "--json", str(out))
    assert r.code == 0, r.err
    import json

    result = json.loads(out.read_text())
    assert set(result["ablation"]) == {"taste", "substance", "instance", "topic"}
    for values in result["ablation"].values():
        assert set(values) == {"overall", "1", "2", "3", "4"}
    assert "without taste" in r.out and "without substance" in r.out and "without instance" in r.out
    assert "without topic" in r.out
    assert all(set(item["without"]) == {"taste", "substance", "instance", "topic"} for item in result["items"])
    bad = run("eval", "locomo", str(data), "--retrieval-only", "--ablate", "telepathy")
    assert_one_line_error(bad, "telepathy")
