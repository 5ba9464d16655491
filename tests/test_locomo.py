"""`personavlm eval locomo`: LoCoMo's format, the recall@k and F1 scoring, the command (recall's own
signals are proven in test_recall.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from personavlm_cli.core.memory import Memory
from personavlm_cli.evals import locomo as lc
from tests.conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent
DEV = next((p for p in (ROOT / "shared" / "data" / "locomo" / "locomo-dev.json",
                        ROOT.parent / "shared" / "data" / "locomo" / "locomo-dev.json",
                        Path("/work/shared/data/locomo/locomo-dev.json")) if p.exists()),
           Path("/work/shared/data/locomo/locomo-dev.json"))


def synthetic() -> list[dict]:
    """A two-session conversation in LoCoMo's own format."""
    return [{
        "sample_id": "conv-test",
        "conversation": {
            "speaker_a": "Aurelia",
            "speaker_b": "Bastian",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Aurelia", "dia_id": "D1:1", "text": "Hey Bastian! How have you been?"},
                {"speaker": "Bastian", "dia_id": "D1:2", "text": "Great! I bought a red kayak and paddled across "
                                                                 "the Zwartmeer lagoon on Saturday."},
                {"speaker": "Aurelia", "dia_id": "D1:3", "text": "That sounds amazing. Look at my garden!",
                 "img_url": ["https://example.invalid/x.jpg"], "blip_caption": "a photo of sunflowers in a garden",
                 "query": "sunflowers garden"},
                {"speaker": "Bastian", "dia_id": "D1:4", "text": "Lovely. What are you cooking tonight?"},
            ],
            "session_2_date_time": "10:37 am on 27 June, 2023",
            "session_2": [
                {"speaker": "Aurelia", "dia_id": "D2:1", "text": "I started learning the theremin last week, it "
                                                                 "is so strange to play!"},
                {"speaker": "Bastian", "dia_id": "D2:2", "text": "Ha, good luck. I am reading about volcanoes."},
                {"speaker": "Aurelia", "dia_id": "D2:3", "text": "Volcanoes are fascinating."},
            ],
        },
        "qa": [
            {"question": "What did Bastian paddle across the Zwartmeer lagoon in?", "answer": "a red kayak",
             "evidence": ["D1:2"], "category": 4},
            {"question": "When did Aurelia start learning the theremin?", "answer": "The week before 27 June 2023",
             "evidence": ["D2:1"], "category": 2},
            {"question": "What flowers grow in Aurelia's garden?", "answer": "sunflowers",
             "evidence": ["D1:3"], "category": 1},
            {"question": "What did Aurelia say about her tuba?", "adversarial_answer": "it is loud",
             "evidence": ["D2:1"], "category": 5},
        ],
    }]


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- the format and the scoring -----------------------------------------------------------------


@pytest.mark.fast
def test_load_turns_sessions_and_questions(tmp_path):
    (conv,) = lc.load(write(tmp_path, synthetic()))
    assert conv.sample_id == "conv-test" and [n for n, _at, _t in conv.sessions] == [1, 2]
    turns = conv.turns
    assert [t.dia_id for t in turns][:2] == ["D1:1", "D1:2"]
    assert turns[0].at == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert (turns[1].at - turns[0].at).total_seconds() == 60  # one minute apart within a session
    assert turns[2].indexed_text() == ("Aurelia: That sounds amazing. Look at my garden! "
                                       "[shares a photo: a photo of sunflowers in a garden]")
    assert [q.scored for q in conv.questions] == [True, True, True, False]  # category 5 is not scored
    memories = lc.turn_memories(conv)
    assert memories[0].role == "user" and memories[1].role == "assistant"
    assert memories[0].meta["dia_id"] == "D1:1"
    assert len({m.session_id for m in memories}) == 2


@pytest.mark.fast
def test_session_time_and_evidence_parsing():
    assert lc.parse_session_time("12:09 am on 13 September, 2023") == datetime(2023, 9, 13, 0, 9, tzinfo=UTC)
    assert lc.parse_session_time("12:30 pm on 1 Feb, 2023").hour == 12
    assert lc.split_evidence(["D8:6; D9:17", "D1:3", "D1:3"]) == ["D8:6", "D9:17", "D1:3"]


def _turn(mid: str) -> Memory:
    return Memory(id=mid, type="turn", text="", occurred_at="2023-05-08T13:56:00+00:00", created_at="x")


@pytest.mark.fast
def test_recall_at_k_counts_distinct_turns_in_rank_order():
    dia_of = {"t1": "D1:1", "t2": "D1:2", "t3": "D1:3", "t4": "D2:1"}
    episode = Memory(id="epi_1", type="episodic", text="", occurred_at="2023-05-08T13:56:00+00:00", created_at="x",
                     source_ids=["t2", "t3"])
    hits = [_turn("t1"), episode, _turn("t2"), _turn("t4")]  # t2 again: counted once
    ranked = lc.ranked_turns(hits, dia_of)
    assert ranked == ["D1:1", "D1:2", "D1:3", "D2:1"]
    assert lc.recall_at_k(ranked, ["D1:3", "D2:1"], 3) == 0.5
    assert lc.recall_at_k(ranked, ["D1:3", "D2:1"], 4) == 1.0
    assert lc.recall_at_k(ranked, ["D9:9"], 10) == 0.0
    assert lc.recall_at_k(ranked, [], 10) == 0.0


@pytest.mark.fast
def test_token_f1_as_locomo_scores_it():
    assert lc.normalize_answer("The Red, Kayak!") == "red kayak"
    assert lc.token_f1("a red kayak", "The red kayak", 4) == 1.0
    assert lc.token_f1("red canoe", "red kayak", 4) == pytest.approx(0.5)
    assert lc.token_f1("", "red kayak", 4) == 0.0
    assert lc.token_f1("7 May 2023", "7 May, 2023", 2) == 1.0
    # multi-hop: each comma-separated part of the answer against the best part of the prediction
    assert lc.token_f1("pottery, camping", "pottery, camping, painting", 1) == pytest.approx(2 / 3)
    # open-domain: only the answer before its first ';' counts
    assert lc.token_f1("likely no", "Likely no; she wants to be a counselor", 3) == 1.0
    assert lc.token_f1(2022, 2022, 2) == 1.0


# --- the command --------------------------------------------------------------------------------


def test_eval_locomo_retrieval_only(cli, tmp_path):
    data = write(tmp_path, synthetic())
    out = tmp_path / "out.json"
    r = cli("eval", "locomo", str(data), "--retrieval-only", "--json", str(out))
    assert r.code == 0, r.err
    result = json.loads(out.read_text())
    assert result["k"] == 10 and result["questions"] == 3  # category 5 skipped
    assert set(result["recall_at_k"]) == {"overall", "1", "2", "3", "4"}
    assert result["recall_at_k"]["3"] is None  # no question of that category
    assert result["conversations"] == ["conv-test"]
    assert "lexical" in result["signals"] and "dense" in result["signals"]
    assert result["timings"]["per_conversation"]["conv-test"]["replay_s"] >= 0
    kayak = next(i for i in result["items"] if "Zwartmeer" in i["question"])
    assert kayak["recall"] == 1.0 and kayak["found"][0] == "D1:2"
    assert "recall@10" in r.out and "overall" in r.out  # the table on stdout


def test_eval_locomo_small_k_limit_and_baseline_flags(cli, tmp_path):
    data = write(tmp_path, synthetic())
    out = tmp_path / "out.json"
    r = cli("eval", "locomo", str(data), "--retrieval-only", "--k", "1", "--limit", "2", "--signals", "dense,lexical",
            "--fusion", "rrf", "--conversations", "conv-test", "--json", str(out))
    assert r.code == 0, r.err
    result = json.loads(out.read_text())
    assert result["k"] == 1 and result["questions"] == 2 and result["fusion"] == "rrf"
    assert result["signals"] == ["dense", "lexical"]
    assert all(len(i["found"]) <= 1 for i in result["items"])


def test_eval_locomo_bad_input(cli, tmp_path):
    assert_one_line_error(cli("eval", "locomo", str(tmp_path / "missing.json"), "--retrieval-only"), "no such file")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_one_line_error(cli("eval", "locomo", str(bad), "--retrieval-only"), "json")
    data = write(tmp_path, synthetic())
    assert_one_line_error(cli("eval", "locomo", str(data), "--retrieval-only", "--conversations", "conv-9"), "conv-9")
    assert_one_line_error(cli("eval", "locomo", str(data), "--retrieval-only", "--signals", "telepathy"), "telepathy")


# --- the development split ------------------------------------------------------------------------


@pytest.mark.skipif(not DEV.exists(), reason="LoCoMo development split not present")
def test_dev_conversation_beats_the_naive_fusion_baseline(cli, tmp_path):
    out = tmp_path / "dev.json"
    r = cli("eval", "locomo", str(DEV), "--conversations", "conv-26", "--retrieval-only", "--json", str(out),
            timeout=600)
    assert r.code == 0, r.err
    result = json.loads(out.read_text())
    assert result["questions"] == 150
    assert result["recall_at_k"]["overall"] > 0.569  # plain reciprocal-rank fusion on the dev split
