"""The analysts' dashboards (Streamlit over DuckDB).

Commands here are merged into the `slotwise` command line (`simulation/cli.py`); each imports
its subsystem lazily so `slotwise --help` stays instant.
"""

from __future__ import annotations

import typer

dashboards_app = typer.Typer()
