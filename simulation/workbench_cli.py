"""Workbench commands: demand simulation, DST sweep and the demo.

Commands here are merged into the `slotwise` command line (`simulation/cli.py`); each imports
its subsystem lazily so `slotwise --help` stays instant.
"""

from __future__ import annotations

import typer

simulation_app = typer.Typer()
