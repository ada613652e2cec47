"""Conflicts: double bookings (must be 0), what each protection layer refused, hot-spots."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards.ui import FILL_SIMULATION, Context, empty, number, percent


def render(ctx: Context) -> None:
    st.title("Conflicts")
    doubles = ctx.query("double_bookings")
    verified = ctx.query("verified_double_bookings")
    found_by_verifier = int(verified["double_bookings"].fill_null(0).sum())
    st.metric("Double bookings", number(doubles.height + found_by_verifier))
    if doubles.is_empty():
        st.success(
            "No two active bookings overlap on any resource (checked in SQL over all dates)."
        )
    else:
        st.error(f"{doubles.height} pairs of active bookings overlap on a resource.")
        st.dataframe(doubles, hide_index=True, width="stretch")
    if not verified.is_empty():
        if found_by_verifier:
            st.error(f"The load-test verifier found {found_by_verifier} in PostgreSQL.")
        else:
            st.success(
                f"Load tests: {verified.height} runs verified in PostgreSQL, none double-booked."
            )
        st.dataframe(verified, hide_index=True, width="stretch")

    summary = ctx.query("conflict_summary").row(0, named=True)
    if not summary["hold_attempts"] and not summary["confirmations"]:
        empty("booking attempts", FILL_SIMULATION)
        return
    cols = st.columns(3)
    cols[0].metric(
        "Hold collisions",
        number(summary["hold_collisions"]),
        help="Holds refused because a live hold or booking had the slot.",
    )
    cols[1].metric("Confirmation conflicts", number(summary["confirmation_conflicts"]))
    cols[2].metric(
        "Of confirmations",
        percent(summary["confirmation_conflicts"] / summary["confirmations"])
        if summary["confirmations"]
        else "–",
    )

    st.subheader("Conflicts prevented by each layer")
    layers = ctx.query("conflicts_by_layer")
    if layers.is_empty():
        st.caption("No conflicts in this selection.")
    else:
        st.altair_chart(
            alt.Chart(layers)
            .mark_bar()
            .encode(
                x=alt.X("sum(conflicts):Q", title="Conflicts refused"),
                y=alt.Y("tenant:N", sort="-x", title=None),
                color=alt.Color(
                    "layer:N",
                    title="Layer",
                    sort=["hold", "lock", "constraint"],
                    scale=alt.Scale(domain=["hold", "lock", "constraint", "unknown"]),
                ),
                tooltip=["tenant", "layer", "conflicts"],
            ),
            width="stretch",
        )

    st.subheader("Hot-spots: the slots most fought over")
    spots = ctx.query("conflict_hotspots")
    if spots.is_empty():
        st.caption("No conflicts in this selection.")
    else:
        st.dataframe(spots.drop("slot_start"), hide_index=True, width="stretch")
