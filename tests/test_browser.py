"""The operator's view in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a real ``airflow standalone`` and a real ``mlflow server``.

One test walks what a platform engineer does (issue 13): open the ``int8_requantize`` trigger form,
type a value below a field's bound and see the form keep it and the trigger refused with the field
and the bound named; fill in a small run and trigger it; watch it succeed in the grid; follow the
``track`` task's "MLflow run" link to MLflow; find the run (in MLflow's model-training view, its
metrics grouped, its description linking back to the DAG run), its ``report.html`` rendered with its
plots, its top-level plot, and the registered version with its alias, its logged model and signature.

It takes screenshots of each stop (the form with the refusal, the grid, the MLflow run, the report,
the registry version) into ``$INT8FLOW_SCREENSHOTS`` when that is set (``docs/screenshots`` holds
the ones the docs show), else into the test's tmp_path. On failure it saves the page as
``failure.png`` in tmp_path and prints the Airflow task logs. Every process it starts (Airflow's
whole process group, the MLflow server, Chromium) is stopped, also on failure.

    INT8FLOW_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest tests/test_browser.py
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from airflow_standalone import Standalone, running_standalone, wait_until
from mlflow_server import running_mlflow_server
from test_airflow_dag import DAG_ID, FASHION_MNIST

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's chromium (``make test`` installs it); Playwright's own browser downloads need a network."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    # No network here beyond the package registries: nothing that phones home.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
expect = playwright_api.expect

SCREENSHOTS_VARIABLE = "INT8FLOW_SCREENSHOTS"
REGISTERED = "fashion-int8-browser"
ALIAS = "int8-candidate"
RUN_TIMEOUT = 360
UI_TIMEOUT_MS = 60_000
"""How long an action or assertion waits for the page (both UIs answer in seconds; 2 busy cores)."""
expect.set_options(timeout=UI_TIMEOUT_MS)
VIEWPORT = {"width": 1400, "height": 1000}
SMALL_RUN = {
    # section of the form -> field label -> what is typed: a short run (REST_CONF of the executor test)
    "Calibration": {"Calibration examples": "128", "Batch size": "64"},
    "Data": {"Validation examples": "256"},
    "Gate": {"Max top-1 drop": "2", "Sensitivity examples": "16"},
    "Cluster": {"Workers": "2"},
}
MLFLOW_FIRST_VISIT = """
if (location.origin === %r) {
  // A fresh browser profile opens MLflow's assistant side panel on first load; a returning user has
  // closed it. Closed, it leaves the screenshots the page itself.
  localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
  localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
}
"""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Iterator[Standalone]:
    """``airflow standalone`` whose runs track to ``mlflow_server`` (so ``track`` has an MLflow run page);
    everyone is admin, so the UI needs no login."""
    environment = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "MLFLOW_TRACKING_URI": mlflow_server,
        # The address users browse MLflow at, as the compose stack sets it (its tasks track to mlflow:5000).
        "INT8FLOW_MLFLOW_UI_URL": mlflow_ui(mlflow_server),
    }
    with running_standalone(tmp_path_factory.mktemp("airflow-browser"), (DAG_ID,), environment) as airflow:
        yield airflow


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_VARIABLE) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser_context(mlflow_server: str) -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(UI_TIMEOUT_MS)
            context.add_init_script(MLFLOW_FIRST_VISIT % mlflow_ui(mlflow_server))
            yield context
        finally:
            browser.close()


def open_section(dialog: Any, name: str) -> None:
    """Open one section (accordion item) of the trigger form; an open one stays open."""
    section = dialog.get_by_role("button", name=name, exact=True)
    if section.get_attribute("aria-expanded") != "true":
        section.click()
    expect(section).to_have_attribute("aria-expanded", "true")


def number_field(dialog: Any, label: str) -> Any:
    """A number field by its label (a required field's label ends in "*")."""
    return dialog.get_by_label(re.compile(rf"^{re.escape(label)}\W*$"))


def run_over(airflow: Standalone, run_id: str) -> bool:
    """The run ended, or a task of it failed a try: a small run here has no reason to retry."""
    if airflow.run_state(DAG_ID, run_id) in ("success", "failed"):
        return True
    states = {state for state, _ in airflow.task_states(DAG_ID, run_id).values()}
    return bool(states & {"up_for_retry", "failed", "upstream_failed"})


def test_trigger_form_refusal_then_a_run_from_airflow_to_mlflow(
    airflow: Standalone, mlflow_server: str, browser_context: Any, screenshots: Path, tmp_path: Path
) -> None:
    page = browser_context.new_page()
    run_id: str | None = None
    started = time.monotonic()
    try:
        # The trigger form: -5 calibration examples stays -5 and the trigger is refused, naming the field.
        page.goto(f"{airflow.url}/dags/{DAG_ID}")
        page.get_by_role("button", name="Trigger Dag").click()
        dialog = page.get_by_role("dialog").filter(has_text="Trigger Dag")
        open_section(dialog, "Calibration")
        calib_examples = number_field(dialog, "Calibration examples")
        calib_examples.fill("-5")
        calib_examples.press("Tab")  # leave the field: a clamping widget would rewrite it now
        expect(calib_examples).to_have_value("-5")
        dialog.get_by_role("button", name="Trigger", exact=True).click()
        refusal = dialog.get_by_text("Invalid input for param calib_examples: -5 is less than the minimum of 1")
        expect(refusal).to_be_visible()
        expect(dialog).to_contain_text("'title': 'Calibration examples', 'minimum': 1")
        expect(calib_examples).to_have_value("-5")
        assert airflow.api("GET", f"/dags/{DAG_ID}/dagRuns")["total_entries"] == 0
        refusal.scroll_into_view_if_needed()  # the refusal at the top of the dialog, the field below it
        page.screenshot(path=screenshots / "trigger-form-refusal.png")

        # A small run, as a user fills it in; registered under REGISTERED.
        for section, fields in SMALL_RUN.items():
            open_section(dialog, section)
            for label, value in fields.items():
                number_field(dialog, label).fill(value)
                expect(number_field(dialog, label)).to_have_value(value)
        open_section(dialog, "Tracking")
        # Airflow 3.3.2's text fields have no label of their own (their <label> points elsewhere):
        # the field goes by the param's name.
        register = dialog.locator("input[name=element_register]")
        register.fill(REGISTERED)
        unpause = dialog.get_by_role("checkbox", name=re.compile("Unpause"))
        if airflow.api("GET", f"/dags/{DAG_ID}")["is_paused"]:
            unpause.check()
        dialog.get_by_role("button", name="Trigger", exact=True).click()
        expect(page).to_have_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/]+$"))
        run_id = unquote(page.url.rsplit("/", 1)[1])

        # The grid: the run succeeds.
        assert wait_until(lambda: run_over(airflow, run_id), RUN_TIMEOUT, interval=3), f"{run_id} still running"
        unsuccessful = {
            task: state for task, (state, _) in airflow.task_states(DAG_ID, run_id).items() if state != "success"
        }
        assert not unsuccessful, f"run {run_id}: {unsuccessful} (task logs in the captured output)"
        page.reload()
        header = page.get_by_role("heading", name=run_id, exact=True).locator("xpath=..")
        expect(header.get_by_test_id("state-badge")).to_have_text("Success")
        page.screenshot(path=screenshots / "grid-success.png")

        # The track task instance (from the run's task list): its "MLflow run" link, which Airflow shows
        # under "Extra Links" in the task instance's Details tab.
        page.get_by_test_id("table-list").get_by_role("link", name="Track in MLflow", exact=True).click()
        page.get_by_role("link", name="Details", exact=True).click()
        link = page.get_by_role("link", name="MLflow run", exact=True)
        run_pages = re.compile("^" + re.escape(f"{mlflow_ui(mlflow_server)}/#/experiments/"))
        expect(link).to_have_attribute("href", run_pages)
        with browser_context.expect_page() as opened:
            link.click()
        page = opened.value

        # MLflow: the run, named after the model, in MLflow's model-training view (its registry in the
        # side bar), metrics grouped by kind, and a description whose link leads back to the DAG run.
        run_name = page.get_by_role("heading", name=re.compile(r"^fashion_mnist_resnet-"))
        expect(run_name).to_be_visible()
        expect(page.get_by_role("link", name="Model registry", exact=True)).to_be_visible()
        expect(page.get_by_role("link", name="accuracy/int8_top1", exact=True)).to_be_visible()
        page.screenshot(path=screenshots / "mlflow-run.png")
        show_more = page.get_by_role("button", name="Show more")
        if show_more.is_visible():
            show_more.click()
        dag_run_url = f"{airflow.url}/dags/{DAG_ID}/runs/{run_id}"
        back = page.get_by_role("link", name=dag_run_url, exact=True)
        expect(back).to_have_attribute("href", dag_run_url)
        airflow_page = browser_context.new_page()
        airflow_page.goto(back.get_attribute("href"))
        expect(airflow_page.get_by_role("heading", name=run_id, exact=True)).to_be_visible()
        airflow_page.close()

        # Its report.html renders in MLflow's artifact view with its embedded plots.
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_test_id("artifact-tree-node").filter(has_text=re.compile(r"^report\.html$")).click()
        report = page.frame_locator("iframe")
        expect(report.get_by_role("heading", name=re.compile(r"^INT8 calibration report"))).to_be_visible()
        expect(report.locator("img").first).to_be_visible()
        images = report.locator("img").evaluate_all(
            "images => Promise.all(images.map(image => image.decode().then("
            "() => [image.src.slice(0, 15), image.naturalWidth], () => [image.src.slice(0, 80), 0])))"
        )
        assert images and all(src.startswith("data:image/") and width > 0 for src, width in images), images
        page.screenshot(path=screenshots / "mlflow-report.png")

        # The plots at the top level of the artifacts (MLflow's compare view shows only those).
        listed = requests.get(
            f"{mlflow_server}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id_of(page.url)}, timeout=30
        ).json()
        top_level_plots = [f["path"] for f in listed.get("files", []) if f["path"].endswith(".png")]
        assert top_level_plots == ["tensors.png"]  # no node was ranked, so no sensitivity.png
        expect(page.locator('[data-testid="artifact-tree-node"][artifact-name="tensors.png"]')).to_be_visible()

        # The registry: the version, its alias, the logged INT8 model it was made from and that model's
        # signature. MLflow shows a one-time "new Model Registry UI" promotion over the registry; a user
        # closes it.
        promo = page.get_by_role("dialog", name=re.compile("new Model Registry UI"))
        page.add_locator_handler(promo, lambda shown: shown.get_by_role("button", name="Close").click())
        page.get_by_role("link", name="Model registry", exact=True).click()
        page.get_by_role("link", name=REGISTERED, exact=True).click()
        page.get_by_role("link", name="Version 1", exact=True).click()
        # The registry is no experiment's page: MLflow shows it in the view a user chose last, GenAI
        # until one chooses; this user works on models.
        page.get_by_role("button", name="Model training", exact=True).click()
        expect(page.get_by_text(f"@ {ALIAS}", exact=True)).to_be_visible()
        expect(page.get_by_role("link", name="int8-model", exact=True)).to_be_visible()
        expect(page.get_by_text("Inputs (1)", exact=True)).to_be_visible()
        expect(page.get_by_text("Outputs (1)", exact=True)).to_be_visible()
        page.screenshot(path=screenshots / "mlflow-registry-version.png")
    except BaseException:
        with suppress(Exception):
            page.screenshot(path=tmp_path / "failure.png", full_page=True)
        print(f"page {page.url}, screenshot {tmp_path / 'failure.png'}\n{airflow.logs(run_id)}")
        raise
    finally:
        print(f"browser steps took {time.monotonic() - started:.0f} s")


def mlflow_ui(mlflow_server: str) -> str:
    """The server under another name (localhost, not 127.0.0.1): the address users browse it at."""
    return mlflow_server.replace("127.0.0.1", "localhost")


def run_id_of(mlflow_url: str) -> str:
    match = re.search(r"/runs/([0-9a-f]{32})", mlflow_url)
    assert match, mlflow_url
    return match[1]
