"""Settings: four layered sources, strict validation, every problem reported, secrets hidden."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from legato.kernel.errors import ConfigError
from legato.kernel.settings import LegatoSettings, load_settings, redact_url


@pytest.fixture(autouse=True)
def empty_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test where no legato.toml exists unless the test writes one."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_apply_when_no_source_sets_anything() -> None:
    settings = load_settings(environ={})

    assert settings.env == "development"
    assert settings.data_dir == Path(".")
    assert (settings.log.level, settings.log.format) == ("info", "auto")
    assert settings.store.url == "sqlite:///legato.db"
    assert (settings.service.host, settings.service.port) == ("127.0.0.1", 8600)
    assert settings.service.api_token is None
    assert (settings.bus.max_history, settings.bus.queue_size) == (10_000, 10_000)


def test_default_store_is_legato_db_inside_data_dir() -> None:
    settings = load_settings(environ={"LEGATO_DATA_DIR": "/var/lib/legato"})

    assert settings.store.url == "sqlite:////var/lib/legato/legato.db"
    assert settings.store.is_sqlite


def test_postgres_store_url_is_accepted() -> None:
    url = "postgresql+psycopg://legato:pw@db.internal:5432/legato"

    settings = load_settings(environ={"LEGATO_STORE__URL": url})

    assert settings.store.url == url
    assert not settings.store.is_sqlite


def test_overrides_beat_environment_which_beats_file_which_beats_defaults(tmp_path: Path) -> None:
    config = write(
        tmp_path / "custom.toml",
        """
        [service]
        host = "file-host"
        port = 1001
        [bus]
        max_history = 5
        """,
    )
    environ = {"LEGATO_SERVICE__HOST": "env-host", "LEGATO_SERVICE__PORT": "1002"}

    settings = load_settings(config, overrides={"service": {"port": 1003}}, environ=environ)

    assert settings.service.port == 1003  # override over environment and file
    assert settings.service.host == "env-host"  # environment over file
    assert settings.bus.max_history == 5  # file over default
    assert settings.bus.queue_size == 10_000  # default


def test_legato_toml_in_working_directory_is_read_when_no_path_is_given(
    empty_working_directory: Path,
) -> None:
    write(empty_working_directory / "legato.toml", 'env = "production"\n')

    assert load_settings(environ={}).env == "production"


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"

    with pytest.raises(ConfigError) as raised:
        load_settings(missing, environ={})

    assert raised.value.problems == [
        ("config_file", str(missing), "the path of an existing TOML file")
    ]


def test_nested_environment_variables_set_section_fields_case_insensitively() -> None:
    environ = {
        "LEGATO_SERVICE__PORT": "9000",
        "legato_log__level": "DEBUG",
        "LEGATO_LOG__FORMAT": "json",
        "LEGATO_ENV": "production",
        "UNRELATED": "ignored",
    }

    settings = load_settings(environ=environ)

    assert settings.service.port == 9000
    assert (settings.log.level, settings.log.format) == ("debug", "json")
    assert settings.env == "production"


def test_os_environ_is_read_by_default_but_not_by_the_constructor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEGATO_SERVICE__PORT", "9100")

    assert load_settings().service.port == 9100
    assert LegatoSettings().service.port == 8600


def test_dotted_override_keys_reach_nested_fields() -> None:
    settings = load_settings(overrides={"service.port": 9200, "log.level": "error"}, environ={})

    assert settings.service.port == 9200
    assert settings.log.level == "error"


def test_unknown_field_in_file_is_rejected_with_the_accepted_names(tmp_path: Path) -> None:
    config = write(tmp_path / "legato.toml", "[service]\nprot = 9000\n")

    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})

    assert raised.value.problems == [
        ("service.prot", 9000, "a known setting name (service accepts: host, port, api_token)")
    ]


def test_unknown_top_level_field_in_file_is_rejected(tmp_path: Path) -> None:
    config = write(tmp_path / "legato.toml", "enviroment = 'production'\n")

    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})

    (field, value, expected) = raised.value.problems[0]
    assert (field, value) == ("enviroment", "production")
    assert "env, data_dir, log, store, service, bus" in expected


def test_every_problem_is_listed_with_field_value_and_expected(tmp_path: Path) -> None:
    config = write(
        tmp_path / "legato.toml",
        """
        env = "staging"
        [service]
        port = 70000
        [log]
        format = "xml"
        [store]
        url = "mysql://legato@db/legato"
        """,
    )

    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={"LEGATO_BUS__QUEUE_SIZE": "0"})

    assert sorted(raised.value.problems) == sorted(
        [
            ("env", "staging", "one of 'development', 'production'"),
            ("service.port", 70000, "an integer from 1 to 65535"),
            ("log.format", "xml", "one of 'console', 'json', 'auto'"),
            (
                "store.url",
                "mysql://legato@db/legato",
                "a sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB URL",
            ),
            ("bus.queue_size", "0", "an integer of at least 1"),
        ]
    )
    message = str(raised.value)
    assert "5 problem(s)" in message
    assert "service.port: got 70000, expected an integer from 1 to 65535" in message


def test_malformed_json_section_in_environment_is_reported_with_the_other_problems() -> None:
    environ = {"LEGATO_SERVICE": "{not json", "LEGATO_BUS__MAX_HISTORY": "-1"}

    with pytest.raises(ConfigError) as raised:
        load_settings(environ=environ)

    fields = [field for field, _, _ in raised.value.problems]
    assert fields == ["service", "bus.max_history"]
    assert "LEGATO_SERVICE" in str(raised.value)


def test_bad_toml_syntax_is_reported_with_the_file_name(tmp_path: Path) -> None:
    config = write(tmp_path / "broken.toml", "[service\nport = 1\n")

    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})

    assert raised.value.source == str(config)
    assert str(config) in str(raised.value)
    assert "line 1" in str(raised.value)


def test_api_token_never_appears_in_repr_str_or_errors(tmp_path: Path) -> None:
    settings = load_settings(environ={"LEGATO_SERVICE__API_TOKEN": "s3cret-token"})

    assert settings.service.api_token is not None
    assert settings.service.api_token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(settings)
    assert "s3cret-token" not in str(settings)
    assert "s3cret-token" not in repr(settings.model_dump())

    config = write(tmp_path / "legato.toml", "[service]\napi_token = 12345678\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})
    assert "12345678" not in str(raised.value)


def test_store_password_never_appears_in_repr_or_errors() -> None:
    settings = load_settings(environ={"LEGATO_STORE__URL": "postgresql://legato:hunter2@db/x"})

    assert "hunter2" not in repr(settings)
    assert "postgresql://legato:**********@db/x" in repr(settings.store)

    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"LEGATO_STORE__URL": "mysql://legato:hunter2@db/x"})
    assert "hunter2" not in str(raised.value)


def test_redact_url_leaves_urls_without_password_unchanged() -> None:
    assert redact_url("sqlite:///legato.db") == "sqlite:///legato.db"
    assert redact_url("postgresql://legato@db/x") == "postgresql://legato@db/x"
    assert redact_url("postgresql://u:p@ss@db/x") == "postgresql://u:**********@db/x"


def test_settings_and_their_sections_are_frozen() -> None:
    settings = load_settings(environ={})

    with pytest.raises(pydantic.ValidationError):
        settings.env = "production"
    with pytest.raises(pydantic.ValidationError):
        settings.service.port = 1


def test_loader_options_cannot_be_smuggled_in_as_settings(tmp_path: Path) -> None:
    config = write(tmp_path / "legato.toml", "_cli_parse_args = true\n")

    with pytest.raises(ConfigError) as raised:
        load_settings(config, overrides={"_secrets_dir": "/"}, environ={})

    assert sorted(field for field, _, _ in raised.value.problems) == [
        "_cli_parse_args",
        "_secrets_dir",
    ]


def test_the_desk_table_is_carried_as_read_for_the_trading_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "desk.toml"
    config.write_text(
        '[desk]\ntelemetry_interval = 5.0\n[[desk.strategies]]\nname = "consensus"\n'
        "[service]\nport = 9100\n"
    )
    settings = load_settings(config, environ={})
    assert settings.desk == {"telemetry_interval": 5.0, "strategies": [{"name": "consensus"}]}
    assert settings.service.port == 9100
    assert load_settings(None, environ={}).desk == {}
