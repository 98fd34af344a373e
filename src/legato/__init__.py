"""Legato: a fault-tolerant orchestration runtime for trading desks and compute fleets."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
