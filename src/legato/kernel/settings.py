"""Legato's settings: one frozen, validated tree loaded from overrides, environment, TOML file.

`load_settings()` layers four sources, the first that sets a value wins::

    overrides (a mapping, e.g. from CLI flags; dotted keys like "service.port" allowed)
    environment (LEGATO_<SECTION>__<FIELD>, e.g. LEGATO_SERVICE__PORT=9000)
    TOML file (legato.toml in the working directory, or an explicit path)
    defaults (declared below)

Nested sections merge key by key, so a file may set `service.host` while the environment sets
`service.port`. Every problem found is reported at once in one `ConfigError`, each naming the
dotted field, the bad value and what is accepted.

Building `LegatoSettings(...)` directly reads no environment and no file: it is the defaults
plus what you pass, which is what tests and embedded uses want.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import pydantic
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from legato.kernel.errors import ConfigError

__all__ = [
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
    "BusSettings",
    "LegatoSettings",
    "LogSettings",
    "ServiceSettings",
    "StoreSettings",
    "load_settings",
    "redact_url",
]

CONFIG_FILE_NAME = "legato.toml"
"""The file `load_settings()` reads from the working directory when no path is given."""

ENV_PREFIX = "LEGATO_"
"""Prefix of every environment variable Legato reads; sections nest with a double underscore."""

_ENV_NESTED_DELIMITER = "__"
_SECRET_MASK = "**********"
# Scheme of a store URL: sqlite or postgresql, optionally with a SQLAlchemy driver suffix.
_STORE_URL_SCHEME = re.compile(r"^(sqlite|postgresql|postgres)(\+[a-z0-9_]+)?://", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by asterisks, safe to print or log."""
    scheme, separator, rest = url.partition("://")
    # The last "@" ends the credentials: an unescaped "@" inside a password stays hidden too.
    credentials, at, location = rest.rpartition("@")
    user, colon, _password = credentials.partition(":")
    if not (separator and at and colon):
        return url
    return f"{scheme}://{user}:{_SECRET_MASK}@{location}"


class _Section(BaseModel):
    """Base of every settings section: frozen, and unknown keys are an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class LogSettings(_Section):
    """How Legato logs: the lowest level written and the output format."""

    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["console", "json", "auto"] = "auto"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        # Operators write INFO as often as info; accept both, store one spelling.
        return value.lower() if isinstance(value, str) else value


class StoreSettings(_Section):
    """Where durable state lives: a SQLite file (the default) or a PostgreSQL database."""

    url: str = "sqlite:///legato.db"

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not _STORE_URL_SCHEME.match(value):
            # The message is the "expected" half of the report ConfigError shows the operator.
            raise ValueError("a sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB URL")
        return value

    @property
    def is_sqlite(self) -> bool:
        """True when the store is an embedded SQLite database."""
        return self.url.lower().startswith("sqlite")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A PostgreSQL URL may carry a password; repr() ends up in logs and tracebacks.
        yield "url", redact_url(self.url)


class ServiceSettings(_Section):
    """The operator service: HTTP API and dashboard address, and the optional API token."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8600, ge=1, le=65535)
    api_token: SecretStr | None = None


class BusSettings(_Section):
    """The in-process message bus: history kept per topic and each subscriber's queue bound."""

    max_history: int = Field(default=10_000, ge=0)
    queue_size: int = Field(default=10_000, ge=1)


class LegatoSettings(BaseSettings):
    """Every setting of a Legato process, frozen once loaded."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        validate_default=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_ENV_NESTED_DELIMITER,
        case_sensitive=False,
    )

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path(".")
    log: LogSettings = LogSettings()
    store: StoreSettings = StoreSettings()
    service: ServiceSettings = ServiceSettings()
    bus: BusSettings = BusSettings()
    # The trading desk's `[desk]` table, kept as read: the kernel knows no domain, so the
    # desk validates it itself (`legato.trading.desk_config.desk_config_from_mapping`).
    desk: dict[str, Any] = Field(default_factory=dict)

    @field_validator("env", mode="before")
    @classmethod
    def _lower_case_env(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _store_in_data_dir(cls, data: Any) -> Any:
        # The default store follows data_dir, so it cannot be a plain field default. Anything
        # malformed is left untouched for field validation to report with the other problems.
        if not isinstance(data, Mapping):
            return data
        store = data.get("store", {})
        if not isinstance(store, Mapping) or "url" in store:
            return data
        data_dir = data.get("data_dir", Path("."))
        if not isinstance(data_dir, str | Path):
            return data
        database = Path(data_dir) / "legato.db"
        return {**data, "store": {**store, "url": f"sqlite:///{database.as_posix()}"}}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read only the values passed in; `load_settings()` is what layers the outside sources."""
        return (init_settings,)


class _EnvironSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.problems: list[tuple[str, Any, str]] = []
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Names are matched case-insensitively (case_sensitive=False): pydantic-settings
        # expects them lower-cased, as DotEnvSettingsSource does for its own mapping.
        return {name.lower(): value for name, value in self._environ.items()}

    def prepare_field_value(
        self, field_name: str, field: pydantic.fields.FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        """Decode one variable; a section given as malformed JSON is recorded, not raised."""
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError as error:
            # Recorded so that load_settings reports it together with every other problem.
            variable = f"{ENV_PREFIX}{field_name.upper()}"
            self.problems.append(
                (
                    field_name,
                    f"unparseable JSON in {variable} ({error})",
                    f"a JSON object, or one variable per key such as {variable}__<KEY>",
                )
            )
            return None


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> LegatoSettings:
    """Load settings from overrides, environment, TOML file and defaults, in that precedence.

    `config_file` defaults to `legato.toml` in the working directory, read only if present; an
    explicit path must exist. `overrides` may be nested (`{"service": {"port": 9000}}`) or use
    dotted keys (`{"service.port": 9000}`). `environ` defaults to `os.environ`.

    Raises `ConfigError` listing every problem: a missing or unreadable file, bad TOML, unknown
    fields, and values of the wrong type or out of range.
    """
    toml_path = _resolve_config_file(config_file)
    environment = _EnvironSource(LegatoSettings, os.environ if environ is None else environ)
    # Lowest precedence first; defaults need no layer, they are applied during validation.
    layers = [_read_toml(toml_path)(), environment(), _expand_dotted(overrides or {})]
    values: dict[str, Any] = {}
    for layer in layers:
        values = _merge(values, layer)
    # BaseSettings reads keyword arguments starting with "_" as loader options (one of them
    # parses sys.argv), so such keys in a file or an override are refused, never passed on.
    problems = [
        (key, values.pop(key), _accepted_names(LegatoSettings, ()))
        for key in [key for key in values if key.startswith("_")]
    ]
    try:
        settings = LegatoSettings(**values)
    except pydantic.ValidationError as error:
        problems += [_describe_problem(detail) for detail in error.errors()]
    problems = environment.problems + problems
    if problems:
        sources = f"overrides > environment > {toml_path} > defaults"
        raise ConfigError(problems, source=sources)
    return settings


def _resolve_config_file(config_file: Path | None) -> Path:
    if config_file is None:
        return Path(CONFIG_FILE_NAME)
    path = Path(config_file)
    if not path.is_file():
        raise ConfigError(
            [("config_file", str(path), "the path of an existing TOML file")], source=str(path)
        )
    return path


def _read_toml(path: Path) -> TomlConfigSettingsSource:
    try:
        return TomlConfigSettingsSource(LegatoSettings, toml_file=path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(
            [(str(path), f"unparseable TOML ({error})", "a valid UTF-8 TOML document")],
            source=str(path),
        ) from None
    except OSError as error:
        raise ConfigError(
            [(str(path), f"unreadable ({error.strerror})", "a readable TOML file")],
            source=str(path),
        ) from None


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `update`, merging nested tables key by key instead of replacing."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn {"service.port": 1} into {"service": {"port": 1}}, merging with nested entries."""
    expanded: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        target = expanded
        for parent in parents:
            existing = target.get(parent)
            if not isinstance(existing, dict):
                existing = {}
                target[parent] = existing
            target = existing
        if isinstance(value, Mapping) and isinstance(target.get(leaf), dict):
            target[leaf] = {**target[leaf], **_expand_dotted(value)}
        else:
            target[leaf] = dict(value) if isinstance(value, Mapping) else value
    return expanded


def _describe_problem(detail: pydantic_core.ErrorDetails) -> tuple[str, Any, str]:
    """Turn one pydantic error into (dotted field, value shown to the operator, expected)."""
    location = tuple(str(part) for part in detail["loc"])
    field_path = ".".join(location)
    parent_model, field_info = _field_at(location)
    value = _shown_value(detail["input"], field_info)
    if detail["type"] == "extra_forbidden":
        return field_path, value, _accepted_names(parent_model, location[:-1])
    if detail["type"] == "value_error":
        # Our validators word their ValueError as the description of an acceptable value.
        return field_path, value, str(detail.get("ctx", {}).get("error", detail["msg"]))
    if field_info is not None:
        return field_path, value, _describe_field(field_info)
    return field_path, value, detail["msg"]


def _accepted_names(model: type[BaseModel] | None, section: tuple[str, ...]) -> str:
    known = ", ".join(model.model_fields) if model else "none"
    return f"a known setting name ({'.'.join(section) or 'the top level'} accepts: {known})"


def _field_at(
    location: tuple[str, ...],
) -> tuple[type[BaseModel] | None, pydantic.fields.FieldInfo | None]:
    """Find the model holding the last part of `location`, and that field's definition."""
    model: type[BaseModel] | None = LegatoSettings
    field_info = None
    for index, name in enumerate(location):
        if model is None:
            return None, None
        field_info = model.model_fields.get(name)
        if index == len(location) - 1:
            return model, field_info
        if field_info is None:
            return None, None
        inner = _without_none(field_info.annotation)
        model = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
    return model, field_info


def _shown_value(value: Any, field_info: pydantic.fields.FieldInfo | None) -> Any:
    if field_info is not None and _without_none(field_info.annotation) is SecretStr:
        return _SECRET_MASK
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, SecretStr):
        return _SECRET_MASK
    return value


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        remaining = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(remaining) == 1:
            return remaining[0]
    return annotation


def _describe_field(field_info: pydantic.fields.FieldInfo) -> str:
    """Say in words what a field accepts, from its annotation and constraints."""
    optional = _without_none(field_info.annotation) is not field_info.annotation
    annotation = _without_none(field_info.annotation)
    if get_origin(annotation) is Literal:
        described = "one of " + ", ".join(repr(choice) for choice in get_args(annotation))
    elif annotation is bool:
        described = "true or false"
    elif annotation is int:
        described = "an integer" + _describe_bounds(field_info)
    elif annotation is float:
        described = "a number" + _describe_bounds(field_info)
    elif annotation is SecretStr:
        described = "a string (kept secret)"
    elif annotation is str:
        described = "a non-empty string" if _min_length(field_info) else "a string"
    elif annotation is Path:
        described = "a filesystem path"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        described = "a table with keys " + ", ".join(annotation.model_fields)
    else:
        described = f"a value of type {getattr(annotation, '__name__', annotation)}"
    return f"{described}, or nothing" if optional else described


def _describe_bounds(field_info: pydantic.fields.FieldInfo) -> str:
    lower = upper = None
    for constraint in field_info.metadata:
        if isinstance(constraint, annotated_types.Ge):
            lower = constraint.ge
        elif isinstance(constraint, annotated_types.Le):
            upper = constraint.le
    if lower is not None and upper is not None:
        return f" from {lower} to {upper}"
    if lower is not None:
        return f" of at least {lower}"
    if upper is not None:
        return f" of at most {upper}"
    return ""


def _min_length(field_info: pydantic.fields.FieldInfo) -> int:
    for constraint in field_info.metadata:
        if isinstance(constraint, annotated_types.MinLen):
            return int(constraint.min_length)
    return 0
