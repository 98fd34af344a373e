"""Errors a durable workflow raises, on top of the kernel taxonomy.

LegatoError
├── StepFailedError          a step failed after its retries; its failure is journaled.
│                            Catch it in the workflow to take another path, or let it
│                            escape: the workflow then compensates its completed steps.
└── PermanentError
    └── NonDeterminismError  on replay, the workflow asked for something other than what
                             its journal holds at that position; the workflow goes dead.
"""

from __future__ import annotations

from legato.kernel.errors import ErrorKind, LegatoError, PermanentError

__all__ = ["NonDeterminismError", "StepFailedError"]


class StepFailedError(LegatoError):
    """A workflow step failed after every attempt its retry policy allowed.

    `step` and `index` say which journal position failed; `error` is the last attempt's
    error as text and `kind` its classification (so `classify()` still reports whether the
    cause was transient, permanent or an unknown outcome). On replay the same error is
    raised again from the journal, without running the step.
    """

    def __init__(
        self, workflow_id: int, step: str, index: int, error: str, kind: ErrorKind, attempts: int
    ) -> None:
        super().__init__(
            f"step {step!r} failed after {attempts} attempt(s): {error}",
            workflow_id=workflow_id,
            step=step,
            index=index,
        )
        self.workflow_id = workflow_id
        self.step = step
        self.index = index
        self.error = error
        self.kind = kind
        self.attempts = attempts


class NonDeterminismError(PermanentError):
    """Replaying a workflow asked for a different step than its journal records there.

    Workflow code must make the same calls in the same order on every replay (see the rules
    in docs/concepts/workflows.md). The workflow goes dead with this error as its reason;
    fix the code (or start a new workflow) and replay nothing by hand.
    """

    def __init__(self, workflow_id: int, index: int, journaled: str, requested: str) -> None:
        super().__init__(
            f"workflow {workflow_id} is not deterministic: position {index} of its journal "
            f"holds {journaled}, but the replay asked for {requested}; workflow code must "
            "make the same steps in the same order every time it runs",
            workflow_id=workflow_id,
            index=index,
        )
        self.workflow_id = workflow_id
        self.index = index
        self.journaled = journaled
        self.requested = requested
