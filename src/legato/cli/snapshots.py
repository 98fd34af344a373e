"""Disk snapshots of what the service last said, for when it cannot be reached.

The service client writes each fresh answer to GET /workers (the registry) and GET /info
(the configuration) to a small JSON file, one per service address and resource, under
`<data_dir>/.legato/cache/`. When the service is unreachable the client reads the file back
and says how old it is, so an operator still sees the last known registry instead of nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from legato.kernel.errors import ValidationError

__all__ = ["SNAPSHOT_DIR", "DiskSnapshot", "SnapshotDirectory"]

SNAPSHOT_DIR = Path(".legato") / "cache"
"""Where snapshots go, relative to the settings' `data_dir`."""

_log = structlog.get_logger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class DiskSnapshot:
    """One saved answer: the JSON value, when it was fetched (POSIX seconds) and from where."""

    value: Any
    fetched_at: float
    base_url: str


class SnapshotDirectory:
    """Reads and writes snapshots in one directory, keyed by service address and resource."""

    __slots__ = ("_base_url", "_directory")

    def __init__(self, directory: Path, base_url: str) -> None:
        self._directory = Path(directory)
        self._base_url = base_url

    @property
    def directory(self) -> Path:
        """The directory holding the files."""
        return self._directory

    def path(self, resource: str) -> Path:
        """The file that holds `resource` (say "workers") for this service address."""
        if not resource or _UNSAFE.search(resource):
            raise ValidationError("resource", resource, "a name of letters, digits, '_', '-'")
        # Two services (staging, production) must never share a snapshot.
        address = _UNSAFE.sub("_", self._base_url.split("://", 1)[-1]).strip("_") or "service"
        return self._directory / f"{address}-{resource}.json"

    def save(self, resource: str, value: Any, fetched_at: float) -> None:
        """Write `value` atomically; a failure to write is logged, never raised.

        A snapshot is a convenience: a read-only or full disk must not fail the call that
        just succeeded against the service.
        """
        target = self.path(resource)
        document = {"base_url": self._base_url, "fetched_at": fetched_at, "value": value}
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(document), encoding="utf-8")
            # os.replace is atomic: a reader sees the old file or the new one, never half.
            os.replace(temporary, target)
        except OSError as error:
            _log.warning("could not write service snapshot", path=str(target), error=str(error))
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)

    def load(self, resource: str) -> DiskSnapshot | None:
        """Return the saved snapshot of `resource`, or None if there is none readable."""
        target = self.path(resource)
        try:
            document = json.loads(target.read_text(encoding="utf-8"))
            return DiskSnapshot(
                value=document["value"],
                fetched_at=float(document["fetched_at"]),
                base_url=str(document["base_url"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            _log.warning("ignoring unreadable service snapshot", path=str(target), error=str(error))
            return None
