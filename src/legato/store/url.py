"""Where the store lives: a parsed, validated database URL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from legato.kernel.errors import ValidationError

__all__ = ["DEFAULT_STORE_URL", "StoreUrl"]

DEFAULT_STORE_URL = "sqlite:///legato.db"
"""The embedded default: a SQLite file named legato.db in the working directory."""


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A store location: `sqlite:///relative.db`, `sqlite:////abs/path.db` or `postgresql://...`.

    `backend` is "sqlite" or "postgresql"; `target` is the SQLite file path (":memory:" for
    an in-memory database) or the libpq connection string.
    """

    backend: str
    target: str

    @classmethod
    def parse(cls, url: str) -> StoreUrl:
        """Parse `url`, raising ValidationError for anything but SQLite or PostgreSQL URLs."""
        if not isinstance(url, str) or "://" not in url:
            raise ValidationError(
                "store_url", url, "sqlite:///path.db or postgresql://user@host:port/database"
            )
        scheme = urlsplit(url).scheme.lower()
        if scheme == "sqlite":
            path = url.split("://", 1)[1]
            path = path[1:] if path.startswith("/") else path
            return cls("sqlite", path or ":memory:")
        if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
            return cls("postgresql", "postgresql://" + url.split("://", 1)[1])
        raise ValidationError("store_url", url, "a URL whose scheme is sqlite or postgresql")

    @property
    def sqlalchemy_url(self) -> str:
        """The same location as a SQLAlchemy URL (psycopg 3 driver for PostgreSQL)."""
        if self.backend == "sqlite":
            return "sqlite:///" + self.target if self.target != ":memory:" else "sqlite://"
        return "postgresql+psycopg://" + self.target.split("://", 1)[1]

    def prepare(self) -> None:
        """Create the SQLite file's directory if it is missing; nothing for PostgreSQL."""
        if self.backend == "sqlite" and self.target != ":memory:":
            Path(self.target).parent.mkdir(parents=True, exist_ok=True)

    def __str__(self) -> str:
        if self.backend == "sqlite":
            return "sqlite:///" + self.target
        return self.target
