"""Secrets stay secret: planted credentials never appear in what a command prints or a file the program
writes (only in the config file the user wrote, and in `config show --show-secrets` for the owner who asks).

The credentials are planted in every form that can carry one: an API key; a URL's password (model server,
vector server); every form of a PostgreSQL connection string libpq accepts (``user:password@``,
``?password=``, a password holding ``/ # ?`` percent-encoded or not, ``key=value ... password=...``,
quoted with a space and an escaped quote). The servers named do not exist (port 1 of the loopback), so
every command that reaches out fails, and its error is checked too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

API_KEY = "sk-PLANTEDapikey0001"
MODEL_PW = "PLANTEDmodelpw02"
VECTOR_PW = "PLANTEDvectorpw03"

# (database URL as written in config.yaml, the secret inside it)
DATABASE_URLS = [
    ("postgresql://carol:PLANTEDdbpw04@127.0.0.1:1/db", "PLANTEDdbpw04"),
    ("postgresql://carol@127.0.0.1:1/db?sslmode=disable&password=PLANTEDdbpw05", "PLANTEDdbpw05"),
    ("postgresql://carol:PLANTED%2Fdb%23pw%3F06@127.0.0.1:1/db", "PLANTED/db#pw?06"),
    ("postgresql://carol:PLANTED/db#pw?07@127.0.0.1:1/db", "PLANTED/db#pw?07"),
    ("host=127.0.0.1 port=1 dbname=db user=carol password=PLANTEDdbpw08", "PLANTEDdbpw08"),
    ("host=127.0.0.1 port=1 password='PLANTED db\\'pw09' dbname=db", "PLANTED db'pw09"),
]

# Every command that prints configuration, status or errors (and a few that write files).
COMMANDS = [
    ("config", "show"),
    ("config", "show", "--json"),
    ("config", "path", "--json"),
    ("doctor", "--no-load"),
    ("doctor", "--no-load", "--json"),
    ("memory", "list"),
    ("memory", "search", "anything"),
    ("memory", "export", "out.pvm"),
    ("profile", "show"),
    ("users", "list"),
    ("logs",),
    ("model", "list"),
    ("model", "default", "embedded"),
    ("chat", "--once", "hello"),
    ("store", "migrate", "--to", "embedded"),
    ("memory", "import", "missing.pvm"),
    ("memory", "list", "--limit", f"http://eve:{VECTOR_PW}@h/"),  # a usage error about a value
]


def _plant(home: Path, database_url: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    config.write_text(
        "# planted secrets\n"
        "model:\n"
        "  kind: openai-compatible\n"
        f"  url: http://alice:{MODEL_PW}@127.0.0.1:1/v1\n"
        f"  api_key: {API_KEY}\n"
        "store:\n"
        "  kind: server\n"
        f"  url: http://bob:{VECTOR_PW}@127.0.0.1:1\n"
        f"  database_url: {json.dumps(database_url)}\n", encoding="utf-8")
    config.chmod(0o600)
    return config


def _leaks(text: str, secrets: list[str]) -> list[str]:
    from urllib.parse import quote

    return [s for s in secrets for form in {s, quote(s, safe="")} if form in text]


@pytest.mark.parametrize("database_url,db_secret", DATABASE_URLS, ids=[f"db{i}" for i in range(len(DATABASE_URLS))])
def test_planted_secrets_appear_in_no_output_and_no_written_file(run, isolated_home, tmp_path, monkeypatch,
                                                                  database_url, db_secret):
    config = _plant(isolated_home, database_url)
    secrets = [API_KEY, MODEL_PW, VECTOR_PW, db_secret]
    monkeypatch.chdir(tmp_path)
    for args in COMMANDS:
        r = run(*args)
        assert not _leaks(r.out + r.err, secrets), (args, r.out, r.err)
    r = run("config", "show", "--json", "--show-secrets")
    if database_url.startswith("host="):
        # The key=value form is refused (store.database_url is a URL), in one line that keeps its password.
        assert r.code != 0 and "password=" in r.err and "***" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    else:  # the owner who asks sees them
        shown = {row["key"]: row["value"] for row in r.json()}
        assert shown["model.api_key"] == API_KEY and shown["store.database_url"] == database_url
    # Every file the program wrote (logs, registry, stores, exports): none holds a secret. The config file
    # is the user's own; `model default` rewrote it and it must still hold what the user wrote.
    for path in [*isolated_home.rglob("*"), *tmp_path.rglob("*")]:
        if path.is_file() and path != config:
            data = path.read_bytes().decode("utf-8", "replace")
            assert not _leaks(data, secrets), path
    assert database_url.split("password")[0] in config.read_text() and "# planted secrets" in config.read_text()


def test_config_show_masks_and_says_where_each_value_came_from(run, isolated_home):
    _plant(isolated_home, DATABASE_URLS[0][0])
    rows = {row["key"]: row for row in run("config", "show", "--json").json()}
    assert rows["model.api_key"]["value"] == "***" and rows["model.api_key"]["origin"] == "file"
    assert rows["model.url"]["value"] == "http://alice:***@127.0.0.1:1/v1"
    assert rows["store.url"]["value"] == "http://bob:***@127.0.0.1:1"
    assert rows["store.database_url"]["value"] == "postgresql://carol:***@127.0.0.1:1/db"


def test_a_secret_in_a_file_others_can_read_is_warned_once(run, isolated_home):
    config = _plant(isolated_home, DATABASE_URLS[0][0])
    config.chmod(0o644)
    r = run("doctor", "--no-load")
    warnings = [line for line in r.err.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and str(config) in warnings[0], r.err
    config.chmod(0o600)
    assert "Warning" not in run("config", "show").err


def test_the_api_key_is_read_from_an_owner_only_file(run, isolated_home, tmp_path):
    isolated_home.mkdir(parents=True, exist_ok=True)
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    (isolated_home / "config.yaml").write_text(f"model:\n  api_key_file: {key_file}\n")
    rows = {row["key"]: row for row in run("config", "show", "--json", "--show-secrets").json()}
    assert rows["model.api_key"]["value"] == API_KEY and rows["model.api_key"]["origin"] == "key file"
    r = run("config", "show")
    assert API_KEY not in r.out + r.err and "Warning" not in r.err
    key_file.chmod(0o644)
    assert "can be read by other users" in run("config", "show").err


def test_environment_secrets_are_masked_too(run, isolated_home):
    r = run("config", "show", "--json", env={"PERSONAVLM_MODEL_API_KEY": API_KEY,
                                             "PERSONAVLM_STORE_DATABASE_URL": DATABASE_URLS[3][0]})
    assert r.code == 0, r.err
    assert API_KEY not in r.out and DATABASE_URLS[3][1] not in r.out


def test_a_bad_url_is_refused_without_its_password(run, isolated_home):
    from tests.conftest import assert_one_line_error

    r = run("doctor", "--no-load", env={"PERSONAVLM_STORE_DATABASE_URL": "mysql://u:PLANTEDbad10@h/db"})
    assert_one_line_error(r, "store.database_url")
    assert "PLANTEDbad10" not in r.err
    r = run("chat", "--once", "hi", env={"PERSONAVLM_MODEL_KIND": "openai-compatible",
                                         "PERSONAVLM_MODEL_URL": "ftp://u:PLANTEDbad11@h:x/v1"})
    assert r.code != 0 and "PLANTEDbad11" not in r.out + r.err, r.err


def test_debug_tracebacks_and_log_lines_are_masked(run, isolated_home, monkeypatch):
    from personavlm_cli.cli import memory

    url = f"postgresql://carol:{MODEL_PW}@db.example/x"

    def crash(env):
        raise RuntimeError(f"could not reach {url} with Bearer {API_KEY}")

    monkeypatch.setattr(memory, "_open_records", crash)
    r = run("memory", "list", env={"PERSONAVLM_DEBUG": "1"})
    assert r.code == 1 and "RuntimeError: could not reach postgresql://carol:***@db.example/x" in r.err, r.err
    assert MODEL_PW not in r.err and API_KEY not in r.err
    r = run("memory", "list")
    assert r.code == 1 and MODEL_PW not in r.err and API_KEY not in r.err

    from personavlm_cli.cli.common import log_file, log_to_file, make_env

    env = make_env(None)
    log_to_file(env)
    logger = logging.getLogger("personavlm")
    try:
        logger.warning("update failed against %s (password=%s)", url, MODEL_PW)
    finally:
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
            handler.close()
    text = log_file(env).read_text()
    assert "update failed against postgresql://carol:***@db.example/x (password=***" in text


@pytest.mark.parametrize("text,secret", [
    *DATABASE_URLS,
    ("postgres://u:p@ss:w@rd@host/db", "p@ss:w@rd"),
    ("https://h/v1?api_key=PLANTEDk12&y=2", "PLANTEDk12"),
    ("Authorization: Bearer sk-PLANTED13", "sk-PLANTED13"),
    ("Authorization: Basic YWxpY2U6cHcxNA==", "YWxpY2U6cHcxNA=="),
])
def test_the_mask_hides_every_form_of_credential(text, secret):
    from personavlm_cli.core.secrets import masked

    shown = masked(f"Error: cannot use {text!r}: refused")
    assert secret not in shown and "***" in shown


def test_the_mask_leaves_ordinary_text_alone():
    from personavlm_cli.core.secrets import masked

    for text in ("Basic information about http://host:8080/path?x=1", "max_tokens=512 (the model's own)",
                 "the model server at http://127.0.0.1:8000 is not reachable"):
        assert masked(text) == text
