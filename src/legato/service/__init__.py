"""The operator surface over HTTP: API, dashboard, metrics and live events.

    from legato.service import serve
    await serve(load_settings(), embedded_worker=True)

See docs/operator-guide.md for the endpoints, the error envelope, auth and the metrics.
"""

from __future__ import annotations

from legato.service.app import create_app
from legato.service.errors import ApiError
from legato.service.runtime import OperatorRuntime, ServiceOptions
from legato.service.server import Service, serve

__all__ = ["ApiError", "OperatorRuntime", "Service", "ServiceOptions", "create_app", "serve"]
