"""legato.example.toml documents every option at its default: it must stay true."""

from __future__ import annotations

from pathlib import Path

from legato.kernel.settings import LegatoSettings, load_settings
from legato.trading.desk_config import DataSettings, DeskConfig, desk_config_from_mapping

EXAMPLE = Path(__file__).resolve().parents[2] / "legato.example.toml"


def test_the_example_config_loads_and_equals_the_built_in_defaults() -> None:
    settings = load_settings(EXAMPLE, environ={})
    defaults = LegatoSettings()
    assert settings.model_dump(exclude={"desk"}) == defaults.model_dump(exclude={"desk"})
    # The file leaves speed unset (legato run then picks its own); the rest is the default.
    assert desk_config_from_mapping(settings.desk) == DeskConfig(data=DataSettings())
