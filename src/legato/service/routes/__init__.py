"""The service's HTTP routes, one module per resource."""

from __future__ import annotations
