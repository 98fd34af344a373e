"""The global options every `legato` command shares, and the settings they select.

`--store URL` works directly on a store; `--url URL` goes through a running service; with
neither, commands work on the store from the settings (`legato.toml`, LEGATO_STORE__URL,
default `sqlite:///legato.db` in `data_dir`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from legato.cli.snapshots import SNAPSHOT_DIR
from legato.kernel.errors import ValidationError
from legato.kernel.settings import LegatoSettings, load_settings
from legato.service.runtime import TOKEN_ENV

__all__ = ["CliOptions"]


@dataclass(frozen=True, slots=True)
class CliOptions:
    """What the root command was given: where to act, how to print, how hard to retry."""

    config_file: Path | None = None
    store_url: str | None = None
    service_url: str | None = None
    json_output: bool = False
    debug: bool = False
    retries: int = 3

    def __post_init__(self) -> None:
        if self.store_url is not None and self.service_url is not None:
            raise ValidationError(
                "--url",
                self.service_url,
                "either --store (work on the store) or --url (go through the service), not both",
            )
        if self.retries < 0:
            raise ValidationError("--retries", self.retries, "an integer >= 0")

    @property
    def service_mode(self) -> bool:
        """True when commands go through the service API rather than the store."""
        return self.service_url is not None

    def settings(self) -> LegatoSettings:
        """Load the settings, with `--store` overriding `store.url` (ConfigError if invalid)."""
        overrides = {"store.url": self.store_url} if self.store_url is not None else {}
        return load_settings(self.config_file, overrides=overrides)

    def api_token(self, settings: LegatoSettings) -> str | None:
        """The service token: `service.api_token` from the settings, else LEGATO_API_TOKEN."""
        if settings.service.api_token is not None:
            return settings.service.api_token.get_secret_value() or None
        return os.environ.get(TOKEN_ENV) or None

    def snapshot_dir(self, settings: LegatoSettings) -> Path:
        """Where the service client keeps its disk snapshots."""
        return settings.data_dir / SNAPSHOT_DIR
