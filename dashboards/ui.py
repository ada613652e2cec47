"""What every page shares: the data directory, cached queries, the sidebar filters, empty states.

The DuckDB file is opened read-only for the length of one query and closed again: a connection
held open would keep DuckDB's file lock and lock out the simulator and the load tests, which write
the same file. Query results are cached (`st.cache_data`) per filter set and per version of the
file (its size and modification time), so a rerun over unchanged data opens nothing and new data
shows on the next rerun.
"""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import polars as pl
import streamlit as st

from dashboards import queries
from dashboards.queries import DATA_ENV, Filters
from simulation.events import DATABASE_FILE

# What fills each kind of table, for empty states.
FILL_SIMULATION = "`slotwise demo` (or `slotwise simulate --mode engine`)"
FILL_LOADTEST = "`slotwise loadtest burst` or `slotwise loadtest contention`"
FILL_DST = "`slotwise dst --from 2000 --to 2037`"


@dataclass(frozen=True, slots=True)
class Context:
    """The data a page reads: where, which version of the file, and the filters set."""

    data_dir: Path
    version: tuple[int, int]
    filters: Filters

    def query(self, name: str, filters: Filters | None = None) -> pl.DataFrame:
        """Run the named query of `dashboards.queries` (cached) with the page's filters."""
        return _cached(name, str(self.data_dir), self.version, filters or self.filters)


def data_dir() -> Path:
    """The directory `slotwise dashboard` passed in (`SLOTWISE_WORKBENCH_DIR`)."""
    value = os.environ.get(DATA_ENV)
    if not value:
        st.error(
            f"No data directory: start the dashboards with `slotwise dashboard` (sets {DATA_ENV})."
        )
        st.stop()
    return Path(value)


def _version(directory: Path) -> tuple[int, int]:
    try:
        stat = (directory / DATABASE_FILE).stat()
    except FileNotFoundError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


@st.cache_data(show_spinner="Querying…", max_entries=512)
def _cached(name: str, directory: str, version: tuple[int, int], filters: Filters) -> pl.DataFrame:
    del version  # part of the cache key only
    with closing(queries.connect(Path(directory))) as con:
        return queries.QUERIES[name](con, filters)


def sidebar(directory: Path) -> Context:
    """The filters (run, tenant, date range) in the sidebar, as a page context."""
    ctx = Context(directory, _version(directory), Filters())
    st.sidebar.header("Filters")
    runs = ctx.query("runs")
    kinds = dict(zip(runs["run_id"], runs["kind"], strict=True))
    run_id = st.sidebar.selectbox(
        "Run",
        [None, *kinds],
        format_func=lambda r: "All runs" if r is None else f"{r} ({kinds[r]})",
        key="run",
    )
    scoped = replace(ctx.filters, run_id=run_id)
    tenant = st.sidebar.selectbox(
        "Tenant",
        [None, *ctx.query("tenants", scoped)["tenant"]],
        format_func=lambda t: "All tenants" if t is None else t,
        key="tenant",
    )
    start: date | None = None
    end: date | None = None
    bounds = ctx.query("time_bounds", scoped)
    first, last = (bounds["first_day"][0], bounds["last_day"][0]) if bounds.height else (None, None)
    if first is not None and last is not None:
        chosen = st.sidebar.date_input(
            "Dates (UTC)", (first, last), min_value=first, max_value=last, key=f"dates-{run_id}"
        )
        # The full range means no date filter, so rows without a date are never hidden.
        if isinstance(chosen, tuple) and len(chosen) == 2 and chosen != (first, last):
            start, end = chosen
    st.sidebar.caption(f"Data: `{directory}`")
    return replace(ctx, filters=Filters(run_id=run_id, tenant=tenant, start=start, end=end))


def empty(what: str, fill: str) -> None:
    """The empty state: what is missing and which command writes it."""
    st.info(f"No {what} for these filters yet. {fill} writes them into this data directory.")


def percent(value: object) -> str:
    return "–" if value is None else f"{float(str(value)):.1%}"


def number(value: object) -> str:
    return "–" if value is None else f"{float(str(value)):,.0f}"
