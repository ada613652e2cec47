"""The dashboards' entry script: `slotwise dashboard` runs it with `streamlit run`.

It reads only the workbench's DuckDB file, from the directory in `SLOTWISE_WORKBENCH_DIR`.
"""

from __future__ import annotations

from functools import partial
from importlib import import_module

import streamlit as st

from dashboards import ui
from dashboards.views import PAGES


def main() -> None:
    st.set_page_config(page_title="Slotwise workbench", page_icon=":material/event:", layout="wide")
    ctx = ui.sidebar(ui.data_dir())
    page = st.navigation(
        [
            st.Page(
                partial(import_module(f"dashboards.views.{path}").render, ctx),
                title=title,
                url_path=path,
                icon=icon,
                default=index == 0,
            )
            for index, (path, title, icon) in enumerate(PAGES)
        ]
    )
    page.run()
    # The last element of every page: a browser (or a person) knows the page is complete.
    st.caption(f"Slotwise workbench · {page.title} · rendered")


main()
