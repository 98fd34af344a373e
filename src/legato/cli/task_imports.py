"""`--import MODULE[:ATTRIBUTE]`: find the user's tasks and register them on the CLI's app.

A user's module declares its tasks with an `Orchestrator`'s decorator::

    # mytasks.py
    from legato.orchestrator import Orchestrator
    app = Orchestrator()

    @app.task(queue="emails")
    async def send_email(to: str) -> None: ...

`legato worker --import mytasks` imports the module, finds every `Orchestrator` defined at
its top level (or the one named after a colon, `mytasks:app`) and registers each of its tasks,
with the same name and options, on the orchestrator the CLI opened on the configured store.
The store named in the user's module is not used: `--store`, `--config` and the settings are.

Like uvicorn, the working directory is put first on `sys.path`, so a module next to where
the command runs is importable without installing it (`legato.kernel.user_code.import_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence

from legato.kernel.errors import ValidationError
from legato.kernel.user_code import import_spec
from legato.orchestrator.app import Orchestrator

__all__ = ["import_tasks"]

_EXAMPLE = "MODULE or MODULE:ATTRIBUTE naming an Orchestrator (e.g. mytasks or mytasks:app)"


def import_tasks(target: Orchestrator, specs: Sequence[str]) -> tuple[str, ...]:
    """Import each module named in `specs` and register its tasks on `target`.

    Returns the names of the tasks registered. Raises ValidationError (field `--import`) for
    a module that cannot be imported, an attribute that is not an Orchestrator, a module
    without any, or two modules registering different functions under one name.
    """
    registered: list[str] = []
    for spec in specs:
        for source in _orchestrators(spec):
            for name in source.task_names:
                definition = source.definition(name)
                target.task(
                    name=definition.name,
                    queue=definition.queue,
                    retry=definition.retry,
                    timeout=definition.timeout,
                    priority=definition.priority,
                    resources=definition.resources,
                    protected=definition.protected,
                )(definition.fn)
                registered.append(name)
    return tuple(sorted(set(registered)))


def _orchestrators(spec: str) -> list[Orchestrator]:
    module, attribute = import_spec("--import", spec, _EXAMPLE)
    module_name = module.__name__
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, Orchestrator):
            raise ValidationError(
                "--import", spec, f"{module_name}.{attribute} to be an Orchestrator"
            )
        return [found]
    found_all: dict[int, Orchestrator] = {}
    for value in vars(module).values():
        if isinstance(value, Orchestrator):
            found_all.setdefault(id(value), value)
    if not found_all:
        raise ValidationError(
            "--import",
            spec,
            "a module defining an Orchestrator at top level (app = Orchestrator(), then "
            "@app.task() on each task function)",
        )
    return list(found_all.values())
