"""`legato db`: bring the store's schema up to date, or show where it stands.

Wire it into the main app with `app.add_typer(db_app, name="db")`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from legato.kernel.errors import ValidationError
from legato.kernel.settings import load_settings, redact_url
from legato.store import current, head, upgrade

__all__ = ["db_app"]

db_app = typer.Typer(
    name="db",
    help="Store schema migrations (SQLite or PostgreSQL).",
    no_args_is_help=True,
    add_completion=False,
)

_UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Store URL; default: store.url from settings (LEGATO_STORE__URL, legato.toml).",
        show_default=False,
    ),
]


def _store_url(url: str | None) -> str:
    return url if url is not None else load_settings().store.url


@db_app.command("upgrade")
def upgrade_command(
    url: _UrlOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Migrate the store to the newest schema (safe to run again: it changes nothing then)."""
    store_url = _store_url(url)
    try:
        before = current(store_url)
        after = upgrade(store_url, revision)
    except ValidationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    shown = redact_url(store_url)
    if before == after:
        typer.echo(f"{shown}: already at {after}")
    else:
        typer.echo(f"{shown}: upgraded {before or 'empty'} -> {after}")


@db_app.command("current")
def current_command(url: _UrlOption = None) -> None:
    """Print the store's schema revision and whether it is the newest; exit 1 if behind."""
    store_url = _store_url(url)
    try:
        revision = current(store_url)
    except ValidationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    newest = head()
    state = "up to date" if revision == newest else f"behind (newest is {newest})"
    typer.echo(f"{redact_url(store_url)}: {revision or 'empty'} ({state})")
    if revision != newest:
        raise typer.Exit(1)
