"""Load tests: latency percentiles over time, throughput, errors, and the contention study."""

from __future__ import annotations

import altair as alt
import streamlit as st

from dashboards.ui import FILL_LOADTEST, Context, empty, percent


def render(ctx: Context) -> None:
    st.title("Load tests")
    st.caption("Per-request rows as the load clients saw them; the tenant filter does not apply.")
    over_time = ctx.query("latency_over_time")
    if over_time.is_empty():
        empty("load-test requests", FILL_LOADTEST)
    else:
        series = over_time.with_columns(series=over_time["run_id"] + " · " + over_time["strategy"])
        latency = series.unpivot(
            ["p50_ms", "p95_ms", "p99_ms"], index=["series", "t_s"], variable_name="percentile"
        )
        st.subheader("Latency percentiles over time")
        st.altair_chart(
            alt.Chart(latency)
            .mark_line()
            .encode(
                x=alt.X("t_s:Q", title="Seconds into the run"),
                y=alt.Y("value:Q", title="Latency (ms)", scale=alt.Scale(type="log")),
                color=alt.Color("series:N", title="Run · strategy"),
                strokeDash=alt.StrokeDash("percentile:N"),
                tooltip=["series", "percentile", "t_s", alt.Tooltip("value:Q", format=".1f")],
            ),
            width="stretch",
        )
        cols = st.columns(2)
        for col, field, title in (
            (cols[0], "requests_per_s", "Throughput (requests/s)"),
            (cols[1], "errors_per_s", "Errors (per s)"),
        ):
            col.markdown(f"**{title}**")
            col.altair_chart(
                alt.Chart(series)
                .mark_line()
                .encode(
                    x=alt.X("t_s:Q", title="Seconds into the run"),
                    y=alt.Y(f"{field}:Q", title=None),
                    color=alt.Color("series:N", legend=None),
                    tooltip=["series", "t_s", alt.Tooltip(f"{field}:Q", format=",.1f")],
                ),
                width="stretch",
            )
        st.subheader("Per endpoint")
        st.dataframe(ctx.query("load_summary"), hide_index=True, width="stretch")
        errors = ctx.query("request_errors")
        if errors.is_empty():
            st.success("No failed requests (5xx or no answer).")
        else:
            st.warning(f"{int(errors['requests'].sum()):,} failed requests.")
            st.dataframe(errors, hide_index=True, width="stretch")

    st.subheader("Contention study: strategies side by side")
    study = ctx.query("contention")
    if study.is_empty():
        empty("contention-study results", "`slotwise loadtest contention`")
        return
    holds = study.filter(study["strategy"] == "holds")
    if holds.height and holds["reduction_vs_pessimistic"][0] is not None:
        st.metric(
            "Holds: fewer database collisions (lock waits + rollbacks) than pessimistic locking",
            percent(holds["reduction_vs_pessimistic"][0]),
        )
    figures = study.unpivot(
        ["db_collisions", "lock_waits", "db_rollbacks", "transactions_per_success"],
        index=["run_id", "strategy"],
        variable_name="figure",
    )
    st.altair_chart(
        alt.Chart(figures)
        .mark_bar()
        .encode(
            x=alt.X("strategy:N", title=None),
            y=alt.Y("value:Q", title=None),
            color="strategy:N",
            column=alt.Column("figure:N", title=None),
            tooltip=["run_id", "strategy", "figure", "value"],
        )
        .resolve_scale(y="independent")
        .properties(width=140, height=220),
    )
    st.dataframe(study, hide_index=True, width="stretch")
