"""DST: the sweep's zones, their transitions, and any anomalies (must be none)."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards.ui import FILL_DST, Context, empty, number


def render(ctx: Context) -> None:
    st.title("DST sweep")
    summary = ctx.query("dst_summary").row(0, named=True)
    if not summary["zones"]:
        empty("DST sweep results", FILL_DST)
        return
    cols = st.columns(5)
    cols[0].metric("Zones", number(summary["zones"]))
    cols[1].metric("Transitions", number(summary["transitions"]))
    cols[2].metric("Instances checked", number(summary["instances"]))
    cols[3].metric("Violations", number(summary["violations"]))
    cols[4].metric("Anomalies", number(summary["anomalies"]))
    anomalies = ctx.query("dst_anomalies")
    if anomalies.is_empty():
        st.success("No anomalies: every instance kept its wall time, policy and duration.")
    else:
        st.error(f"{anomalies.height} anomalies.")
        st.dataframe(anomalies, hide_index=True, width="stretch")

    transitions = ctx.query("dst_transitions")
    st.subheader("Transitions")
    if transitions.is_empty():
        st.caption("No transitions in this date range.")
    else:
        shown = transitions.head(5000)  # a chart of every zone over decades reads as noise
        st.altair_chart(
            alt.Chart(shown)
            .mark_tick(thickness=2)
            .encode(
                x=alt.X("at:T", title="UTC"),
                y=alt.Y("zone:N", title=None),
                color=alt.Color("kind:N", scale=alt.Scale(domain=["gap", "fold", "offset"])),
                tooltip=["zone", "at:T", "kind", "local_before", "local_after", "shift_min"],
            ),
            width="stretch",
        )
        st.dataframe(transitions, hide_index=True, width="stretch")
    st.subheader("Zones")
    st.dataframe(ctx.query("dst_zones"), hide_index=True, width="stretch")
