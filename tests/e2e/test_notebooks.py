"""The studies run top to bottom (nbclient, the project's own kernel) on generated data, and
print their key result."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dashboards.queries import DATA_ENV
from simulation.synthetic import generate

ROOT = Path(__file__).resolve().parents[2]
KEY_OUTPUT = {
    "contention_study": "reduction_vs_pessimistic = ",
    "utilization_study": "Overall utilization: ",
    "dst_study": "DST anomalies: 0",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("notebook-data")
    generate(directory, 20_000, seed=5)
    return directory


def _stream_text(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.output_type == "stream"
    )


@pytest.mark.parametrize("name", sorted(KEY_OUTPUT))
def test_notebook_runs_top_to_bottom(
    name: str, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ROOT / "notebooks" / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), (
        f"{path.name} is stored with outputs"
    )
    monkeypatch.setenv(DATA_ENV, str(data))  # the kernel inherits the environment
    NotebookClient(
        notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(ROOT)}}
    ).execute()  # raises CellExecutionError on the first failing cell
    text = _stream_text(notebook)
    assert f"Reading {data}" in text
    assert KEY_OUTPUT[name] in text, text
