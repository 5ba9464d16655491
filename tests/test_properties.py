"""Property tests (hypothesis): the reasoning-step protocol parser, constrained-JSON validation
against the real schemas, time windows, and the export format's round trip through a real record file.

No model is involved: these pin the parsers and formats the model's output and the user's data go
through, over inputs no hand-written example list would cover.
"""

from __future__ import annotations

import hashlib
import io
import json
import string
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from personavlm_cli.adapters.json_output import validate_json
from personavlm_cli.core import update_stage
from personavlm_cli.core.errors import PersonaError
from personavlm_cli.core.memory import TIME_FORMAT, TYPES, Memory, iso, parse_time
from personavlm_cli.core.prompts import GenericProfile, clean_window, parse_tagged, parse_window
from tests.kit import fake_store

PROFILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])
NOW = datetime(2026, 11, 20, 10, 0).astimezone()

# --------------------------------------------------------------------------------------------------
# The reasoning-step protocol: <think> + exactly one of <answer> / <retrieve>
# --------------------------------------------------------------------------------------------------

# What the grammar lets the model write: text without '<', keywords without '"', newline or '<'.
tag_text = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)), min_size=1, max_size=200)
keywords = st.text(st.characters(blacklist_characters='"\n<', blacklist_categories=("Cs",)), min_size=1, max_size=80)
minutes = st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2099, 12, 30)).map(
    lambda d: d.replace(second=0, microsecond=0))
time_value = st.one_of(st.just(None), minutes)


def fmt(value: datetime | None) -> str:
    return "null" if value is None else value.strftime(TIME_FORMAT)


@PROFILE
@given(think=tag_text, answer=tag_text, ws=st.sampled_from(["", " ", "\n", " \n "]))
def test_think_then_answer_parses_to_the_answer(think, answer, ws):
    step = parse_tagged(f"<think>{think}</think>{ws}<answer>{answer}</answer>", NOW)
    assert step.think == think.strip()
    if answer.strip():
        assert step.action == "answer" and step.answer == answer.strip()
    else:  # an empty answer is no answer: the paper's fallback retrieves instead
        assert step.action == "retrieve" and step.keywords == ""


@PROFILE
@given(think=tag_text, kw=keywords, start=time_value, end=time_value)
def test_think_then_retrieve_parses_keywords_and_the_window(think, kw, start, end):
    raw = (f'<think>{think}</think>\n<retrieve> "keywords": "{kw}"\n"start_time": "{fmt(start)}" '
           f'"end_time": "{fmt(end)}" </retrieve>')
    step = parse_tagged(raw, NOW)
    assert step.action == "retrieve"
    assert step.think == think.strip()
    assert step.keywords == kw.strip()
    want_start = start.astimezone() if start else None
    want_end = end.astimezone() if end else None
    if want_start and want_end and want_start > want_end:
        assert (step.start_time, step.end_time) == (None, None), "an inverted window is dropped"
    else:
        assert (step.start_time, step.end_time) == (want_start, want_end)


# Model output as pieces: any text, the protocol's tags and keys, blanks; several of them, so that whole tags
# (an empty answer, a retrieve with a window) come up, not only a tag cut off.
protocol_pieces = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<retrieve>", "</retrieve>",
                                   '"keywords": "', '"start_time": "', '"end_time": "', '"', "null", " ", "\n",
                                   "2026-11-20 10:00", "2026-11-19 10:00"])
model_output = st.text(max_size=400) | st.lists(st.one_of(protocol_pieces, st.text(max_size=20)),
                                                max_size=12).map("".join)


@settings(max_examples=500, deadline=None)  # a parser: cheap, and whole tags need many draws
@given(model_output)
@example("<think>x</think><answer> \n</answer>")  # an empty answer is no answer
def test_any_model_output_parses_to_one_valid_step(raw):
    step = parse_tagged(raw, NOW)  # never raises
    assert step.action in ("answer", "retrieve")
    if step.action == "answer":
        assert step.answer.strip()
    if step.start_time and step.end_time:
        assert step.start_time <= step.end_time


# --------------------------------------------------------------------------------------------------
# Constrained JSON: validate_json against the schemas the model is held to
# --------------------------------------------------------------------------------------------------

SCHEMAS = {
    "step": GenericProfile.STEP_SCHEMA,
    "semantic": update_stage.SEMANTIC_SCHEMA,
    "personality": update_stage.PERSONALITY_SCHEMA,
    "procedural": update_stage.PROCEDURAL_SCHEMA,
    "core": update_stage.CORE_SCHEMA,
    "episodic-1": update_stage.episodic_schema(1),
    "episodic-7": update_stage.episodic_schema(7),
}


def instances(schema: dict) -> st.SearchStrategy:
    """Values that conform to ``schema`` (the subset of JSON schema our schemas use)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    t = schema.get("type")
    if t == "string":
        return st.text(max_size=schema.get("maxLength", 50), min_size=schema.get("minLength", 0))
    if t == "boolean":
        return st.booleans()
    if t == "integer":
        return st.integers(schema.get("minimum", -10**6), schema.get("maximum", 10**6))
    if t == "array":
        return st.lists(instances(schema["items"]), max_size=min(schema.get("maxItems", 5), 5))
    if t == "object":
        props = schema.get("properties", {})
        required = {k: instances(props[k]) for k in schema.get("required", [])}
        optional = {k: instances(v) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(required, optional=optional)
    raise AssertionError(f"no strategy for {schema}")


def wrong_value(schema: dict) -> st.SearchStrategy:
    """Values of the wrong JSON type for ``schema``."""
    t = schema.get("type")
    everything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                           st.text(max_size=5), st.lists(st.integers(), max_size=2),
                           st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))

    def wrong(v) -> bool:
        if t == "string":
            return not isinstance(v, str)
        if t == "boolean":
            return not isinstance(v, bool)
        if t == "integer":
            return isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, float) and v.is_integer())
        if t == "array":
            return not isinstance(v, list)
        if t == "object":
            return not isinstance(v, dict)
        return False

    return everything.filter(wrong)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@PROFILE
@given(data=st.data())
def test_conforming_json_validates_and_survives_a_json_round_trip(name, data):
    schema = SCHEMAS[name]
    value = data.draw(instances(schema))
    assert validate_json(value, schema) == []
    assert validate_json(json.loads(json.dumps(value)), schema) == []


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@PROFILE
@given(data=st.data())
def test_each_kind_of_violation_is_reported(name, data):
    schema = SCHEMAS[name]
    value = data.draw(instances(schema))
    props = schema["properties"]
    kind = data.draw(st.sampled_from(["missing", "extra", "type", "too_long", "enum", "top_level"]))
    key = data.draw(st.sampled_from(sorted(props)))
    bad = dict(value)
    if kind == "missing":
        del bad[key]
        expect = f"missing required key {key!r}"
    elif kind == "extra":
        extra = data.draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in props))
        bad[extra] = data.draw(st.integers())
        expect = f"unexpected key {extra!r}"
    elif kind == "type":
        bad[key] = data.draw(wrong_value(props[key]))
        expect = f"$.{key}"
    elif kind == "too_long":
        strings = [k for k, p in props.items() if p.get("type") == "string" and "maxLength" in p]
        assume(strings)
        key = data.draw(st.sampled_from(strings))
        bad[key] = "x" * (props[key]["maxLength"] + data.draw(st.integers(1, 50)))
        expect = f"longer than {props[key]['maxLength']}"
    elif kind == "enum":
        enums = [k for k, p in props.items() if "enum" in p]
        assume(enums)
        key = data.draw(st.sampled_from(enums))
        # True == 1 in Python, not in JSON: a boolean never passes an integer enum.
        bad[key] = data.draw(st.one_of(st.booleans(), st.text(max_size=8), st.integers(6, 1000)).filter(
            lambda v: v not in props[key]["enum"] or isinstance(v, bool)))
        expect = f"$.{key}"
    else:
        bad = data.draw(wrong_value(schema))
        expect = "expected object"
    errors = validate_json(bad, schema)
    assert errors, f"{bad!r} passed {name}"
    assert any(expect in e for e in errors), errors


@PROFILE
@given(n=st.integers(1, 20), data=st.data())
def test_episode_rounds_are_held_to_the_window(n, data):
    schema = update_stage.episodic_schema(n)
    rounds = data.draw(st.lists(st.integers(1, n), max_size=n))
    topic = {"summary": "s", "keywords": "k", "rounds": rounds}
    assert validate_json({"topics": [topic]}, schema) == []
    outside = data.draw(st.one_of(st.integers(max_value=0), st.integers(min_value=n + 1)))
    assert validate_json({"topics": [{**topic, "rounds": rounds[:n - 1] + [outside]}]}, schema)
    assert validate_json({"topics": [{**topic, "rounds": list(range(1, n + 1)) + [1]}]}, schema), \
        "more rounds than the window are refused"


# --------------------------------------------------------------------------------------------------
# Time windows
# --------------------------------------------------------------------------------------------------


@PROFILE
@given(value=minutes)
def test_a_window_bound_round_trips_through_its_text_form(value):
    parsed = parse_window(value.strftime(TIME_FORMAT))
    assert parsed is not None and parsed.tzinfo is not None
    assert parsed.strftime(TIME_FORMAT) == value.strftime(TIME_FORMAT)


@PROFILE
@given(value=st.sampled_from(["", "null", "NULL", " none ", "None", "  "]) | st.none())
def test_no_window_is_none(value):
    assert parse_window(value) is None


# Text a model may write as a bound: anything, and the forms parse_time reads (minutes, a date, ISO 8601).
window_text = st.one_of(
    st.text(max_size=40),
    minutes.map(lambda d: d.strftime(TIME_FORMAT)),
    minutes.map(lambda d: d.strftime("%Y-%m-%d")),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31),
                 timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=-8))])).map(datetime.isoformat),
)


@PROFILE
@given(window_text)
def test_any_text_is_the_time_it_says_or_none_never_an_error(text):
    """A bound is exactly what ``parse_time`` reads in the text (an aware datetime), and None only where
    ``parse_time`` refuses the text with its one-line error: never a time made up, never one dropped.
    (That the result is "None or a datetime" alone could not fail: the parser's answer to any error is None.)"""
    try:
        expected = parse_time(text) if text.strip().lower() not in ("null", "none", "") else None
    except PersonaError:
        expected = None
    result = parse_window(text)
    assert result == expected, (text, result, expected)
    assert result is None or result.tzinfo is not None


@PROFILE
@given(start=time_value, end=time_value)
def test_clean_window_drops_inverted_windows_and_keeps_the_rest(start, end):
    s = start.astimezone() if start else None
    e = end.astimezone() if end else None
    got = clean_window(s, e)
    if s and e and s > e:
        assert got == (None, None)
    else:
        assert got == (s, e)
    a, b = got
    assert not (a and b and a > b)
    assert clean_window(*got) == got, "cleaning is idempotent"


# --------------------------------------------------------------------------------------------------
# The export format: export -> import into a fresh store gives identical records
# --------------------------------------------------------------------------------------------------


def make_store(path: Path):
    return fake_store(path)


def png_bytes(seed: int) -> bytes:
    from PIL import Image

    im = Image.new("RGB", (4 + seed % 5, 3 + seed % 3), ((seed * 37) % 256, (seed * 91) % 256, seed % 256))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)
stamps = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1),
                      timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                 timezone(timedelta(hours=-8))]))
texts = st.text(max_size=120)  # any Unicode: newlines, quotes, NUL, emoji, right-to-left


@st.composite
def memory_sets(draw):
    n = draw(st.integers(1, 12))
    out: list[Memory] = []
    images: dict[str, bytes] = {}
    for i in range(n):
        kind = draw(st.sampled_from(TYPES))
        at = draw(stamps).replace(microsecond=0)
        m = Memory(id=f"{kind[:3]}_{i:04d}{draw(st.sampled_from(string.ascii_lowercase))}", type=kind,
                   text=draw(texts), occurred_at=iso(at), created_at=iso(draw(stamps).replace(microsecond=0)),
                   keywords=draw(st.text(max_size=30)),
                   meta=draw(st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "path"),
                                             json_value, max_size=3)))
        if out and draw(st.booleans()):
            m.source_ids = draw(st.lists(st.sampled_from([x.id for x in out]), max_size=3, unique=True))
        if kind == "turn":
            m.role = draw(st.sampled_from(["user", "assistant"]))
            m.session_id = draw(st.sampled_from(["s_a", "s_b", None]))
        if kind == "episodic" and draw(st.booleans()):
            m.occurred_end = iso(at + timedelta(minutes=draw(st.integers(0, 600))))
        if out and draw(st.integers(0, 4)) == 0:
            old = draw(st.sampled_from(out))
            old.valid_to, old.superseded_by = m.occurred_at, m.id
        if kind == "image":
            data = png_bytes(draw(st.integers(0, 3)))  # a few shared files: content addressing
            sha = hashlib.sha256(data).hexdigest()
            images[sha] = data
            m.image_sha256 = sha
            m.meta["path"] = f"{sha[:2]}/{sha}.png"
        out.append(m)
    personality = draw(st.one_of(st.none(), st.fixed_dictionaries(
        {t: st.floats(1, 5) for t in ("openness", "conscientiousness", "extraversion", "agreeableness",
                                      "neuroticism")})))
    return out, images, personality


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(case=memory_sets())
def test_export_then_import_into_a_fresh_store_gives_identical_records(tmp_path_factory, case):
    from personavlm_cli.adapters.archive import ZipArchive, read_archive
    from personavlm_cli.core.transfer import export_archive, import_archive

    memories, images, personality = case
    root = tmp_path_factory.mktemp("arch")
    src, _ = make_store(root / "src")
    for sha, data in images.items():
        (src.images_dir / sha[:2]).mkdir(parents=True, exist_ok=True)
        (src.images_dir / sha[:2] / f"{sha}.png").write_bytes(data)
    with src.records.transaction():
        src.records.insert(memories)
        if personality:
            src.records.set_meta("personality", personality)
            src.records.set_meta("personality_updates", 1)
            src.records.add_personality({"at": memories[0].occurred_at, "turn_id": memories[0].id, "m": 0,
                                         "lambda": 0.5, "inferred": {"openness": 4}, "before": personality,
                                         "after": personality, "note": "n"})
        src.records.set_meta("consolidated", {"s_a": 2})
    file = root / "out.pvm"
    manifest = export_archive(src.records, src.user_dir, file, "ada", ZipArchive())
    assert manifest["counts"] == {"memories": len(memories), "images": len(images),
                                  "personality_updates": 1 if personality else 0}

    dst, vectors = make_store(root / "dst")
    summary = import_archive(dst, read_archive(file))
    assert summary["added"] == len(memories) and summary["skipped"] == 0

    before = src.records.list(include_superseded=True)
    after = dst.records.list(include_superseded=True)
    assert [m.to_dict() for m in after] == [m.to_dict() for m in before]
    assert dst.records.personality_history() == src.records.personality_history()
    assert dst.records.get_meta("personality") == src.records.get_meta("personality")
    assert dst.records.get_meta("consolidated") == {"s_a": 2}
    for sha, data in images.items():
        assert (dst.images_dir / sha[:2] / f"{sha}.png").read_bytes() == data
    # Vectors rebuilt for every memory (text) and every image memory (image space).
    assert set(vectors.data["memories"]) == {m.id for m in memories}
    assert set(vectors.data["images"]) == {m.id for m in memories if m.type == "image"}
    assert dst.records.unembedded() == []

    # Importing again adds nothing: ids already present are kept.
    again = import_archive(dst, read_archive(file))
    assert again["added"] == 0 and again["skipped"] == len(memories)
    assert [m.to_dict() for m in dst.records.list(include_superseded=True)] == [m.to_dict() for m in before]
    src.close()
    dst.close()


def test_any_damaged_byte_of_an_archive_is_refused_with_a_persona_error_or_changes_nothing(tmp_path):
    """Every single-byte flip of a real export (compressed members, an image, the zip directory): reading
    it either raises one PersonaError (one line at the CLI) or gives exactly the original content,
    never another exception (a zlib error got through once: "unexpected error" at the CLI)."""
    from personavlm_cli.adapters.archive import ZipArchive, read_archive
    from personavlm_cli.core.errors import PersonaError
    from personavlm_cli.core.transfer import export_archive

    src, _ = make_store(tmp_path / "src")
    data = png_bytes(2)
    sha = hashlib.sha256(data).hexdigest()
    (src.images_dir / sha[:2]).mkdir(parents=True)
    (src.images_dir / sha[:2] / f"{sha}.png").write_bytes(data)
    memories = [Memory(id=f"sem_{i:04d}a", type="semantic", text=f"Fact {i}: the user's cousin likes {i * 7} "
                       "kinds of tea, and keeps them in a blue tin by the window.", occurred_at=iso(
                           datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=i)),
                       created_at="2026-01-02T00:00:00+00:00") for i in range(40)]
    memories.append(Memory(id="img_0000a", type="image", text="a picture", occurred_at=memories[0].occurred_at,
                           created_at=memories[0].created_at, image_sha256=sha, meta={"path": f"{sha[:2]}/{sha}.png"}))
    with src.records.transaction():
        src.records.insert(memories)
    file = tmp_path / "out.pvm"
    export_archive(src.records, src.user_dir, file, "ada", ZipArchive())
    src.close()
    original = read_archive(file)
    blob = file.read_bytes()
    bad = tmp_path / "bad.pvm"
    refused = 0
    for pos in range(len(blob)):
        for mask in (0x01, 0x80):
            damaged = bytearray(blob)
            damaged[pos] ^= mask
            bad.write_bytes(bytes(damaged))
            try:
                got = read_archive(bad)
            except PersonaError:
                refused += 1
                continue
            assert got[1] == original[1], f"byte {pos} ^ {mask:#x}: read without error but the content differs"
    assert refused > len(blob), "most damage is refused"
