"""Holds funnel: holds taken → confirmed / abandoned / refused / expired, and time to confirm."""

from __future__ import annotations

import altair as alt
import polars as pl
import streamlit as st

from dashboards.ui import FILL_SIMULATION, Context, empty, number, percent

FATES = ["confirmed", "abandoned", "refused", "expired"]


def render(ctx: Context) -> None:
    st.title("Holds funnel")
    funnel = ctx.query("hold_funnel")
    if funnel.is_empty():
        empty("holds", FILL_SIMULATION)
        return
    totals = dict(funnel.group_by("fate").agg(pl.col("holds").sum()).iter_rows())
    taken = sum(totals.values())
    cols = st.columns(5)
    cols[0].metric("Holds taken", number(taken))
    for col, fate in zip(cols[1:], FATES, strict=True):
        col.metric(
            fate.capitalize(),
            number(totals.get(fate, 0)),
            percent(totals.get(fate, 0) / taken),
            delta_color="off",
        )
    st.caption(
        "Refused: the confirmation was refused (conflict, capacity, error). Expired: the hold's "
        "TTL ran out (an `expired` answer, or nothing followed)."
    )
    st.altair_chart(
        alt.Chart(funnel)
        .mark_bar()
        .encode(
            x=alt.X(
                "sum(holds):Q", stack="normalize", axis=alt.Axis(format="%"), title="Share of holds"
            ),
            y=alt.Y("tenant:N", title=None),
            color=alt.Color("fate:N", sort=FATES, scale=alt.Scale(domain=FATES)),
            order=alt.Order("fate_order:Q"),
            tooltip=["tenant", "fate", "holds"],
        )
        .transform_calculate(fate_order=f"indexof({FATES}, datum.fate)"),
        width="stretch",
    )

    st.subheader("Time to confirm")
    stats = ctx.query("time_to_confirm").row(0, named=True)
    if not stats["confirmed"]:
        st.caption("No confirmed holds in this selection.")
        return
    cols = st.columns(4)
    for col, key in zip(cols, ["p50_s", "p90_s", "p99_s", "max_s"], strict=True):
        col.metric(key.removesuffix("_s"), f"{stats[key]:,.0f} s")
    st.altair_chart(
        alt.Chart(ctx.query("time_to_confirm_histogram"))
        .mark_bar()
        .encode(
            x=alt.X("label:N", sort=alt.SortField("bin"), title="Hold → confirmed"),
            y=alt.Y("holds:Q", title="Holds"),
            tooltip=["label", "holds"],
        ),
        width="stretch",
    )
