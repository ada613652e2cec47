"""Load tests against the running booking service (Locust, verified in the database).

Commands here are merged into the `slotwise` command line (`simulation/cli.py`); each imports
its subsystem lazily so `slotwise --help` stays instant.
"""

from __future__ import annotations

import typer

loadtest_app = typer.Typer()
