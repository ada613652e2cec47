"""Overview: what the data directory holds, and the headline figures."""

from __future__ import annotations

import streamlit as st

from dashboards.ui import FILL_DST, FILL_LOADTEST, FILL_SIMULATION, Context, number


def render(ctx: Context) -> None:
    st.title("Slotwise workbench")
    st.caption("Simulations, load tests and DST sweeps, read from the workbench's DuckDB file.")
    runs = ctx.query("runs")
    if runs.is_empty():
        st.info(
            "This data directory holds no runs yet. "
            f"{FILL_SIMULATION} writes simulated demand, {FILL_LOADTEST} the load tests "
            f"and {FILL_DST} a DST sweep."
        )
        return
    head = ctx.query("overview").row(0, named=True)
    verified = ctx.query("verified_double_bookings")["double_bookings"].fill_null(0).sum()
    doubles = ctx.query("double_bookings").height + int(verified)
    cols = st.columns(5)
    cols[0].metric("Attempts", number(head["attempts"]))
    cols[1].metric("Confirmed bookings", number(head["confirmed"]))
    cols[2].metric("Conflicts refused", number(head["conflicts_refused"]))
    cols[3].metric("Errors", number(head["errors"]))
    cols[4].metric("Double bookings", number(doubles))
    st.subheader("Runs")
    st.dataframe(runs, hide_index=True, width="stretch")
