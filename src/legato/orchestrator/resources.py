"""Resource requests and capacities: what a task needs and what a worker can place."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

from legato.kernel.errors import ValidationError

__all__ = ["Capacity", "Resources"]


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU cores, memory (MiB), GPUs and labels: a task's request or a worker's capacity.

    A request fits a capacity when every amount is at most what is free and every label
    the task asks for is one the worker has. The default (all zero, no labels) fits anywhere.
    """

    cpu: float = 0.0
    memory_mb: int = 0
    gpus: int = 0
    labels: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("cpu", "memory_mb", "gpus"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValidationError(f"resources.{name}", value, "a finite number >= 0")
        if not isinstance(self.labels, frozenset) or not all(
            isinstance(label, str) and label for label in self.labels
        ):
            raise ValidationError("resources.labels", self.labels, "a frozenset of non-empty str")

    def to_json(self) -> str:
        """Encode for the store."""
        return json.dumps(
            {
                "cpu": self.cpu,
                "memory_mb": self.memory_mb,
                "gpus": self.gpus,
                "labels": sorted(self.labels),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Resources:
        """Decode what `to_json` wrote (missing keys take their defaults)."""
        return _parse(text)

    @classmethod
    def _decode(cls, text: str) -> Resources:
        data = json.loads(text) if text else {}
        return cls(
            cpu=float(data.get("cpu", 0.0)),
            memory_mb=int(data.get("memory_mb", 0)),
            gpus=int(data.get("gpus", 0)),
            labels=frozenset(data.get("labels", ())),
        )

    @property
    def empty(self) -> bool:
        """True when nothing is requested."""
        return not (self.cpu or self.memory_mb or self.gpus or self.labels)


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> Resources:
    # Every attempt decodes its task's request; most tasks share a handful of distinct ones.
    return Resources._decode(text)


class Capacity:
    """A worker's free resources, debited as it places tasks and credited as they end."""

    __slots__ = ("_free_cpu", "_free_gpus", "_free_memory", "_labels", "_total")

    def __init__(self, total: Resources) -> None:
        self._total = total
        self._free_cpu = total.cpu
        self._free_memory = total.memory_mb
        self._free_gpus = total.gpus
        self._labels = total.labels

    @property
    def unlimited(self) -> bool:
        """True when the worker declared no capacity: only label-free, empty requests fit."""
        return self._total.empty

    def fits(self, request: Resources) -> bool:
        """True when `request` fits in what is free now."""
        if request.empty:
            return True
        return (
            request.cpu <= self._free_cpu + 1e-9
            and request.memory_mb <= self._free_memory
            and request.gpus <= self._free_gpus
            and request.labels <= self._labels
        )

    def take(self, request: Resources) -> None:
        """Debit `request` (the caller checked `fits`)."""
        self._free_cpu -= request.cpu
        self._free_memory -= request.memory_mb
        self._free_gpus -= request.gpus

    def give_back(self, request: Resources) -> None:
        """Credit `request` when its task ends."""
        self._free_cpu += request.cpu
        self._free_memory += request.memory_mb
        self._free_gpus += request.gpus
