"""`python -m legato.cli` runs the `legato` command line."""

from __future__ import annotations

from legato.cli.app import main

main()
