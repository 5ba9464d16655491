"""`doctor`, `config path` and `users`: what a user checks first when something is off."""


def test_doctor_reports_versions_offload_model_clip_and_store(cli, isolated_home):
    r = cli("doctor", "--json")
    assert r.code == 0, r.err
    report = r.json()
    assert report["llama-cpp-python"] == "0.3.36"
    assert report["model quantization"] == "Q4_1" and report["model architecture"] == "llama"
    offloaded, total = report["gpu layers offloaded"].split("/")
    assert int(total) > 0 and 0 <= int(offloaded) <= int(total)
    assert isinstance(report["llama.cpp gpu offload"], bool)
    assert report["text-to-image search"].startswith("unavailable")
    assert report["store"].startswith(str(isolated_home))


def test_config_path_prints_every_location_under_personavlm_home(run, isolated_home):
    paths = run("config", "path", "--json").json()
    assert paths["config_file"] == str(isolated_home / "config.yaml")
    assert paths["user_dir"] == str(isolated_home / "data" / "users" / "tester")
    shown = run("config", "show", "--json").json()
    user = next(row for row in shown if row["key"] == "user")
    assert user["value"] == "tester" and user["origin"] == "env"


def test_doctor_without_loading_reports_the_model_file_clip_and_store(run, isolated_home):
    r = run("doctor", "--no-load", "--json")
    assert r.code == 0, r.err
    report = r.json()
    assert report["model quantization"] == "Q4_1" and report["model architecture"] == "llama"
    assert "gpu layers offloaded" not in report, "nothing was loaded"
    assert report["text-to-image search"].startswith("unavailable")
    assert report["store"] == str(isolated_home / "data" / "users" / "tester")


def test_users_are_listed_and_removed_only_when_confirmed(run, isolated_home):
    from personavlm_cli.adapters.records import RecordStore
    from personavlm_cli.core.config import Settings
    from personavlm_cli.core.users import open_user_dir

    assert run("users", "list", "--json").json() == []
    RecordStore(open_user_dir(Settings.load(), "ada")).close()  # a store for ada
    assert run("users", "list", "--json").json() == ["ada"]
    refused = run("users", "rm", "ada")  # stdin is no terminal: nothing to confirm with
    assert refused.code != 0 and "--yes" in refused.err and "Traceback" not in refused.err
    assert run("users", "list", "--json").json() == ["ada"]
    removed = run("users", "rm", "ada", "--yes")
    assert removed.code == 0 and "Removed user 'ada'" in removed.err
    assert run("users", "list", "--json").json() == []
    assert not (isolated_home / "data" / "users" / "ada").exists()
