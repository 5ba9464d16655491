"""`doctor` and `config path`: what a user checks first when something is off."""


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


def test_config_path_prints_every_location_under_personavlm_home(cli, isolated_home):
    paths = cli("config", "path", "--json").json()
    assert paths["config_file"] == str(isolated_home / "config.yaml")
    assert paths["user_dir"] == str(isolated_home / "data" / "users" / "tester")
    shown = cli("config", "show", "--json").json()
    user = next(row for row in shown if row["key"] == "user")
    assert user["value"] == "tester" and user["origin"] == "env"
