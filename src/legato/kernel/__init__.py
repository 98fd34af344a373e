"""The kernel: time, errors, messages, rate limits, retries, breakers, loops and configuration.

The kernel knows no domain and imports no other Legato package. Everything a user may import
from it is listed in `__all__`; the modules behind it are one concept each (see docs/concepts/).
"""

from __future__ import annotations

from legato.kernel.breaker import (
    BreakerSnapshot,
    BreakerTransition,
    CircuitBreaker,
    CircuitState,
    counts_as_failure,
)
from legato.kernel.bus import (
    DEAD_LETTER_PREFIX,
    BusClosedError,
    BusStats,
    DeadLetter,
    Handler,
    MessageBus,
    SubscriberStats,
    topic_matches,
)
from legato.kernel.clock import Clock, RealClock
from legato.kernel.context import ComponentKey, MissingComponentError, RuntimeContext
from legato.kernel.errors import (
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    ErrorKind,
    LegatoError,
    PermanentError,
    RateLimitedError,
    TransientError,
    UnknownOutcomeError,
    ValidationError,
    classify,
)
from legato.kernel.logs import (
    ClockTimeStamper,
    bind_correlation,
    configure_logging,
    current_correlation,
    get_logger,
)
from legato.kernel.message import Message, MessageIds, create_message
from legato.kernel.ratelimit import (
    Budget,
    RateLimiter,
    RateLimitGroup,
    SlidingWindowRateLimiter,
    TokenBucketRateLimiter,
)
from legato.kernel.retry import (
    Jitter,
    Retrier,
    RetryEvent,
    RetryExhausted,
    RetryPolicy,
    RetryResult,
    retry_call,
)
from legato.kernel.settings import LegatoSettings, load_settings
from legato.kernel.simulation import (
    SimulatedClock,
    SimulatedEventLoop,
    SimulationDeadlock,
    current_clock,
    real_io,
    run_simulated,
)
from legato.kernel.supervisor import LoopHealth, LoopState, Supervisor

__all__ = [
    "DEAD_LETTER_PREFIX",
    "BreakerSnapshot",
    "BreakerTransition",
    "Budget",
    "BusClosedError",
    "BusStats",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "ClockTimeStamper",
    "ComponentKey",
    "ConfigError",
    "DeadLetter",
    "DeadlineExceeded",
    "ErrorKind",
    "Handler",
    "Jitter",
    "LegatoError",
    "LegatoSettings",
    "LoopHealth",
    "LoopState",
    "Message",
    "MessageBus",
    "MessageIds",
    "MissingComponentError",
    "PermanentError",
    "RateLimitGroup",
    "RateLimitedError",
    "RateLimiter",
    "RealClock",
    "Retrier",
    "RetryEvent",
    "RetryExhausted",
    "RetryPolicy",
    "RetryResult",
    "RuntimeContext",
    "SimulatedClock",
    "SimulatedEventLoop",
    "SimulationDeadlock",
    "SlidingWindowRateLimiter",
    "SubscriberStats",
    "Supervisor",
    "TokenBucketRateLimiter",
    "TransientError",
    "UnknownOutcomeError",
    "ValidationError",
    "bind_correlation",
    "classify",
    "configure_logging",
    "counts_as_failure",
    "create_message",
    "current_clock",
    "current_correlation",
    "get_logger",
    "load_settings",
    "real_io",
    "retry_call",
    "run_simulated",
    "topic_matches",
]
