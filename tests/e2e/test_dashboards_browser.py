"""The dashboards in a real browser: `slotwise dashboard` on a generated dataset (and on an empty
data directory), every page loaded by headless Chromium, with no Streamlit exception anywhere
and the key figures on screen."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from dashboards.views import PAGES
from simulation import dst
from simulation.synthetic import TENANTS, generate
from tests.e2e.test_demo import small_demo
from tests.integration.conftest import Api, Infra

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
LOAD_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Dashboard:
    url: str
    empty: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(data: Path, empty: bool) -> Iterator[Dashboard]:
    """`slotwise dashboard --data DATA` as a child process, stopped afterwards."""
    port = _free_port()
    slotwise = Path(sys.executable).with_name("slotwise")
    process = subprocess.Popen(
        [str(slotwise), "dashboard", "--data", str(data), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"the dashboard did not start:\n{output}")
            time.sleep(0.2)
        yield Dashboard(url, empty)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is still there
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.fixture(scope="module", params=["demo", "empty"])
def dashboard(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    """The dashboards on a generated dataset (every table filled), or on an empty directory."""
    data = tmp_path_factory.mktemp(f"workbench-{request.param}")
    if request.param == "demo":
        generate(data, 20_000, seed=7)
    with _serving(data, empty=request.param == "empty") as served:
        yield served


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.fail(
            "Chromium is needed for the dashboard browser tests: "
            "apt-get update && apt-get install -y --no-install-recommends chromium"
        )
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        yield context
        context.close()


def _open(browser: BrowserContext, dashboard: Dashboard, path: str, title: str) -> Page:
    """Load one page and wait until its script ran to the end (the app's closing caption)."""
    page = browser.new_page()
    page.goto(f"{dashboard.url}/{path}", wait_until="domcontentloaded")
    expect(page.get_by_text(f"Slotwise workbench · {title} · rendered")).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    expect(page.get_by_test_id("stException")).to_have_count(0)
    return page


def _metric(page: Page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(
        has=page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    )
    expect(metric).to_have_count(1)
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


@pytest.mark.parametrize(("path", "title", "icon"), PAGES, ids=[p[0] for p in PAGES])
def test_page_renders_without_exception(
    browser: BrowserContext, dashboard: Dashboard, path: str, title: str, icon: str
) -> None:
    page = _open(browser, dashboard, path, title)
    main = page.get_by_test_id("stMain")
    if dashboard.empty:
        # The empty state says which command writes the data.
        expect(main.locator("code").filter(has_text="slotwise").first).to_be_visible()
        if path == "conflicts":
            assert _metric(page, "Double bookings") == "0"
    elif path == "overview":
        assert _metric(page, "Double bookings") == "0"
        assert int(_metric(page, "Attempts").replace(",", "")) > 10_000
    elif path == "utilization":
        busiest = main.get_by_text("Busiest tenant:")
        expect(busiest).to_be_visible()
        assert any(name in busiest.inner_text() for name, _ in TENANTS)
        expect(main.get_by_test_id("stVegaLiteChart").first).to_be_visible()
        assert _metric(page, "Days over capacity") == "0"
    elif path == "conflicts":
        assert _metric(page, "Double bookings") == "0"
        expect(main.get_by_text("No two active bookings overlap")).to_be_visible()
        assert int(_metric(page, "Hold collisions").replace(",", "")) > 0
    elif path == "holds":
        assert int(_metric(page, "Holds taken").replace(",", "")) > 0
        expect(main.get_by_test_id("stVegaLiteChart").first).to_be_visible()
    elif path == "loadtests":
        expect(main.get_by_text("Contention study: strategies side by side")).to_be_visible()
        label = "Holds: fewer database collisions (lock waits + rollbacks) than pessimistic locking"
        assert _metric(page, label).endswith("%")
    elif path == "dst":
        assert _metric(page, "Anomalies") == "0"
        assert int(_metric(page, "Zones")) == len({zone for _, zone in TENANTS})
    page.close()


@pytest.mark.parametrize("dashboard", ["demo"], indirect=True)
def test_filters_narrow_the_pages(browser: BrowserContext, dashboard: Dashboard) -> None:
    """Choosing a tenant in the sidebar re-renders the page for that tenant only."""
    page = _open(browser, dashboard, "utilization", "Utilization")
    tenant = TENANTS[3][0]
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").nth(1).click()
    page.get_by_role("option", name=tenant, exact=True).click()
    expect(page.get_by_test_id("stMain").get_by_text(f"Busiest tenant: {tenant}")).to_be_visible(
        timeout=LOAD_TIMEOUT_MS
    )
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.close()


def test_pages_render_what_the_demo_and_the_dst_sweep_really_wrote(
    browser: BrowserContext, api: Api, infra: Infra, tmp_path: Path
) -> None:
    """Not generated data: a real (small) `slotwise demo` run through the live service and a
    real DST sweep, as the analysts will open them."""
    # On a thread of its own: Playwright's sync API keeps an event loop running on this one.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        result = thread.submit(small_demo, api, infra, tmp_path, 5).result()
    dst.run(2024, 2024, data_dir=tmp_path, names=["America/New_York", "Australia/Lord_Howe"])
    with _serving(tmp_path, empty=False) as served:
        for path, title, _ in PAGES:
            page = _open(browser, served, path, title)
            if path == "overview":
                assert _metric(page, "Double bookings") == "0"
                assert int(_metric(page, "Attempts").replace(",", "")) == result["attempts"]
            elif path == "conflicts":
                assert _metric(page, "Double bookings") == "0"
            elif path == "holds":
                assert int(_metric(page, "Holds taken").replace(",", "")) > 0
            elif path == "dst":
                assert _metric(page, "Anomalies") == "0"
                assert int(_metric(page, "Zones")) == 2
            page.close()
