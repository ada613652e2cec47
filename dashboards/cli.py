"""The analysts' dashboards (Streamlit over DuckDB).

Commands here are merged into the `slotwise` command line (`simulation/cli.py`); each imports
its subsystem lazily so `slotwise --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

dashboards_app = typer.Typer()


@dashboards_app.command("dashboard")
def dashboard_command(
    data: str | None = typer.Option(
        None,
        "--data",
        help="Workbench data folder (default: <SLOTWISE_DATA_DIR or ./var>/workbench).",
    ),
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to serve on."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to listen on."),
) -> None:
    """Open the Streamlit dashboards over the workbench's DuckDB file (read-only)."""
    import os
    import sys

    from dashboards.queries import DATA_ENV

    if data:
        directory = Path(data)
    else:
        from simulation.events import default_data_dir

        directory = default_data_dir()
    app = Path(__file__).with_name("app.py")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.headless=true",
        f"--server.port={port}",
        f"--server.address={address}",
        "--browser.gatherUsageStats=false",
        "--server.fileWatcherType=none",
    ]
    typer.echo(f"Dashboards for {directory.absolute()} at http://{address}:{port}")
    env = {**os.environ, DATA_ENV: str(directory.absolute())}
    # Become Streamlit rather than wait for it as a child: a signal sent to this process
    # (Ctrl-C, or a SIGTERM from a supervisor) reaches the server, and can't orphan it.
    sys.stdout.flush()
    os.execve(sys.executable, command, env)
