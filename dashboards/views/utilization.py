"""Utilization: booked vs available minutes per tenant and resource, the hour-of-week heatmap
in each tenant's local time, staff daily capacity used, and idle resources."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards.ui import FILL_SIMULATION, Context, empty, number, percent


def render(ctx: Context) -> None:
    st.title("Utilization")
    tenants = ctx.query("utilization_by_tenant")
    if tenants.is_empty() or not tenants["available_min"].sum():
        empty("resources or working hours", FILL_SIMULATION)
        return
    available, booked = tenants["available_min"].sum(), tenants["booked_min"].sum()
    idle = ctx.query("idle_resources")
    cols = st.columns(4)
    cols[0].metric("Utilization", percent(booked / available))
    cols[1].metric("Available hours", number(available / 60))
    cols[2].metric("Booked hours", number(booked / 60))
    cols[3].metric("Idle resources", number(idle.height))
    busiest = tenants.sort("utilization", descending=True, nulls_last=True).row(0, named=True)
    st.markdown(
        f"Busiest tenant: **{busiest['tenant']}** at {percent(busiest['utilization'])} "
        "of its working time booked."
    )

    st.subheader("Hour of the week (local time of each tenant)")
    heat = ctx.query("utilization_heatmap")
    days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    st.altair_chart(
        alt.Chart(heat)
        .mark_rect()
        .encode(
            x=alt.X("hour:O", title="Local hour"),
            y=alt.Y("day:N", sort=days, title=None),
            color=alt.Color(
                "utilization:Q", title="Booked", scale=alt.Scale(scheme="blues", domain=[0, 1])
            ),
            tooltip=[
                "day",
                "hour",
                alt.Tooltip("utilization:Q", format=".1%"),
                alt.Tooltip("booked_min:Q", format=",.0f", title="booked min"),
                alt.Tooltip("available_min:Q", format=",.0f", title="available min"),
            ],
        )
        .properties(height=240),
        width="stretch",
    )

    st.subheader("Per tenant")
    st.altair_chart(
        alt.Chart(tenants)
        .mark_bar()
        .encode(
            x=alt.X("utilization:Q", axis=alt.Axis(format="%"), title="Booked / available"),
            y=alt.Y("tenant:N", sort="-x", title=None),
            tooltip=["tenant", "resources", "bookings", alt.Tooltip("utilization:Q", format=".1%")],
        ),
        width="stretch",
    )

    st.subheader("Per resource")
    st.dataframe(
        ctx.query("utilization_by_resource"),
        hide_index=True,
        width="stretch",
        column_config={
            "utilization": st.column_config.ProgressColumn(
                "utilization", format="percent", min_value=0, max_value=1
            )
        },
    )

    st.subheader("Staff daily capacity used")
    capacity = ctx.query("daily_capacity")
    if capacity.is_empty():
        st.caption("No staff with a daily capacity and bookings in this selection.")
    else:
        over = int(capacity["days_over_capacity"].sum())
        cols = st.columns(3)
        cols[0].metric("Staff with a daily capacity", number(capacity.height))
        cols[1].metric("Days at capacity", number(capacity["days_at_capacity"].sum()))
        cols[2].metric("Days over capacity", number(over))
        if over:
            st.error("Some staff were booked beyond their daily capacity.")
        fill = ctx.query("capacity_fill")
        st.altair_chart(
            alt.Chart(fill)
            .mark_bar()
            .encode(
                x=alt.X("used:O", title="Appointments in a local day"),
                y=alt.Y("staff_days:Q", title="Staff-days"),
                color=alt.Color("daily_capacity:N", title="Daily capacity"),
                xOffset="daily_capacity:N",
                tooltip=["daily_capacity", "used", "staff_days"],
            ),
            width="stretch",
        )
        st.dataframe(capacity, hide_index=True, width="stretch")

    st.subheader("Idle resources")
    if idle.is_empty():
        st.caption("Every resource that worked in this selection has at least one booking.")
    else:
        st.dataframe(idle, hide_index=True, width="stretch")
