"""The MLS Sync dashboard in headless Chromium, through Airflow's own login page and navigation.

Uses Debian's /usr/bin/chromium driven by Playwright (never a downloaded browser). Screenshots of
each page, at 1280 px and at a phone's 390 px, go to test-artifacts/ for review.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.test_admin_api import (
    DAG_ID,
    PROVIDER,
    XSS,
    Stack,
    airflow_api_server,
    make_conflict,
    make_error,
    real_sync,
    reset_properties_db,
    roster_held,
)

pytestmark = [pytest.mark.integration, pytest.mark.airflow, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install chromium` (CI does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


@pytest.fixture(scope="module")
def data(migrated_engine: sa.Engine) -> dict[str, Any]:
    reset_properties_db(migrated_engine)
    run = real_sync(migrated_engine)
    conflict_id, key = make_conflict(migrated_engine, index=3)
    error_id = make_error(migrated_engine, "browser-dead-1", dead=True)
    dismiss_id = make_error(migrated_engine, "browser-dismiss-1", dead=False)
    return {"run": run, "conflict_id": conflict_id, "conflict_key": key, "error_id": error_id,
            "dismiss_id": dismiss_id}


@pytest.fixture(scope="module")
def stack(db_url: str, data: dict[str, Any]) -> Iterator[Stack]:
    with airflow_api_server(db_url) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def logged_in(browser: Any, stack: Stack) -> Iterator[Any]:
    """A desktop page signed in through Airflow's own login form (the simple auth manager's)."""
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    # No action may depend on a browser dialog: Airflow's iframe has no allow-modals, where
    # confirm() returns false without showing anything. Any dialog is recorded and refused.
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(f"{stack.base_url}/")
    page.wait_for_url(re.compile(r".*/auth/login.*"), timeout=60_000)
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(stack.passwords["admin"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.base_url}/", timeout=60_000)
    try:
        yield page
    finally:
        context.close()


def _dashboard(page: Any, stack: Stack, path: str = "") -> None:
    page.goto(f"{stack.base_url}/mls-sync/{path}")
    page.locator("main").wait_for()


def _flash(page: Any) -> str:
    flash = page.locator("#flash")
    flash.wait_for(state="visible", timeout=30_000)
    return flash.inner_text()


def _in_airflow(page: Any, stack: Stack, path: str = "") -> Any:
    """The dashboard inside Airflow's own page (its sandboxed iframe), at `path`: the Frame."""
    page.goto(f"{stack.base_url}/plugin/mls-sync")
    page.frame_locator("iframe").locator("main").wait_for(timeout=60_000)
    sandbox = page.locator("iframe").get_attribute("sandbox") or ""
    assert "allow-scripts" in sandbox and "allow-modals" not in sandbox, sandbox  # why confirm() cannot work
    frame = next(f for f in page.main_frame.child_frames if "/mls-sync/" in f.url)
    frame.goto(f"{stack.base_url}/mls-sync/{path}")
    frame.locator("main").wait_for()
    return frame


def _confirm(frame: Any, control: Any, yes: str) -> None:
    """Click a guarded action, check it only asked (in the page), then say yes."""
    control.click()
    box = frame.locator(".confirm-box")
    box.wait_for(timeout=10_000)
    box.get_by_role("button", name=yes).click()


def test_login_nav_and_last_run_counts_match_database(logged_in: Any, stack: Stack, data: dict[str, Any],
                                                      artifacts_dir: Path, migrated_engine: sa.Engine) -> None:
    page = logged_in
    page.get_by_role("link", name="MLS Sync").click()
    page.wait_for_url(re.compile(r".*/plugin/mls-sync.*"), timeout=60_000)
    frame = page.frame_locator("iframe")
    card = frame.locator(f'.card[data-provider="{PROVIDER}"]')
    card.wait_for(timeout=60_000)
    run = data["run"]
    assert card.locator(".last-run").get_attribute("data-run-id") == str(run["id"])
    for key in ("records_fetched", "added", "updated", "unchanged", "deleted", "failed", "photos_added"):
        assert card.locator(f'[data-count="{key}"]').inner_text() == f"{int(run[key]):,}", key
    assert "idle" in card.locator('[data-field="display_state"]').inner_text()
    # the drift figure: the MLS's count against ours at the last reconciliation (the full sync)
    with migrated_engine.connect() as c:
        figures = c.execute(sa.text("SELECT last_reconcile FROM mls_sync_status WHERE provider_id = :p"),
                            {"p": PROVIDER}).scalar_one()
    assert figures and figures["mls_count"] == run["records_fetched"] > 0
    assert card.locator('[data-drift="mls"]').inner_text() == f"{figures['mls_count']:,}"
    assert card.locator('[data-drift="after"]').inner_text() == f"{figures['store_count_after']:,}"
    assert card.locator('[data-drift="ratio"]').inner_text() == "drift 0.00%"
    # the roster: members, offices and open houses held, and what the last sync of each fetched
    held = roster_held(migrated_engine)
    fetched = {kind: c["fetched"] for kind, c in run["report"]["roster"].items()}
    for kind, label in (("member", "Members"), ("office", "Offices"), ("open_house", "Open houses")):
        row = card.locator(f'[data-roster="{kind}"]')
        assert row.locator("td").first.inner_text() == label
        assert row.locator('[data-roster-count="held"]').inner_text() == f"{held[kind]:,}"
        assert row.locator('[data-roster-count="fetched"]').inner_text() == f"{fetched[kind]:,}"
        assert row.locator('[data-roster-count="deleted"]').inner_text() == "0"
    page.screenshot(path=str(artifacts_dir / "dashboard-overview-in-airflow-1280.png"))
    # the history page says what each run did to the roster
    frame.get_by_role("link", name="History").first.click()
    history_row = frame.locator("tr", has=frame.locator(f'a[href$="runs/{run["id"]}"]'))
    history_row.wait_for(timeout=30_000)
    for kind in held:
        shown = history_row.locator(f'[data-roster="{kind}"] [data-roster-count="fetched"]').inner_text()
        assert shown == f"{fetched[kind]:,}", kind


def test_trigger_dry_run_shows_in_airflow_runs(logged_in: Any, stack: Stack, artifacts_dir: Path) -> None:
    page = logged_in
    _dashboard(page, stack, f"actions?provider={PROVIDER}")
    form = page.locator(f'.card[data-provider="{PROVIDER}"] form.sync-form')
    form.locator('input[name="dry_run"]').check()
    form.locator('input[name="include_photos"]').uncheck()
    form.get_by_role("button", name=re.compile("Sync .* now")).click()
    message = _flash(page)
    assert "Queued dry-run incremental sync" in message, message
    run_id = re.search(r"run (manual__\S+)", message).group(1)
    page.screenshot(path=str(artifacts_dir / "dashboard-actions-triggered-1280.png"))

    page.goto(f"{stack.base_url}/dags/{DAG_ID}/runs")
    page.get_by_text(run_id).first.wait_for(timeout=60_000)
    page.screenshot(path=str(artifacts_dir / "airflow-runs-after-trigger-1280.png"))

    _dashboard(page, stack, f"actions?provider={PROVIDER}")  # the second click is refused, clearly
    page.locator(f'.card[data-provider="{PROVIDER}"] form.sync-form button[type="submit"]').click()
    refused = _flash(page)
    assert "Refused (409)" in refused and "already queued" in refused

    # inside Airflow's page: the badge says what Airflow says, and Cancel asks in the page, then works
    frame = _in_airflow(page, stack, f"actions?provider={PROVIDER}")
    card = frame.locator(f'.card[data-provider="{PROVIDER}"]')
    assert "queued" in card.locator('[data-field="display_state"]').inner_text()
    cancel = card.get_by_role("button", name="Cancel running sync")
    cancel.click()
    frame.locator(".confirm-box").wait_for(timeout=10_000)
    page.screenshot(path=str(artifacts_dir / "dashboard-cancel-confirm-in-airflow-1280.png"))
    frame.locator(".confirm-box").get_by_role("button", name="No").click()  # "No" cancels nothing
    assert frame.locator(".confirm-box").count() == 0 and cancel.is_visible()
    _confirm(frame, cancel, "Yes, cancel running sync")
    assert f"Cancelled run {run_id}" in _flash(frame)
    state = stack.session("admin").get(f"{stack.base_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}",
                                       timeout=30).json()["state"]
    assert state == "failed"
    assert page.dialogs == []


def test_dismiss_inside_airflows_page(logged_in: Any, stack: Stack, data: dict[str, Any],
                                      migrated_engine: sa.Engine) -> None:
    from mls_sync.store.tables import tables

    page = logged_in
    frame = _in_airflow(page, stack, "errors?state=retrying")
    row = frame.locator(f'tr[data-error-id="{data["dismiss_id"]}"]')
    _confirm(frame, row.get_by_role("button", name="Dismiss"), "Yes, dismiss")
    assert "1 error(s) dismissed" in _flash(frame)
    e = tables(migrated_engine).mls_sync_errors
    with migrated_engine.connect() as c:
        err = c.execute(sa.select(e).where(e.c.id == data["dismiss_id"])).mappings().one()
    assert err["resolution"] == "dismissed by admin" and err["resolved_at"] is not None
    assert page.dialogs == []


def test_resolve_conflict_take_mls(logged_in: Any, stack: Stack, data: dict[str, Any],
                                   migrated_engine: sa.Engine, artifacts_dir: Path) -> None:
    from mls_sync.store.tables import tables

    page = logged_in
    _dashboard(page, stack, "conflicts")
    section = page.locator(f'section.conflict[data-conflict-id="{data["conflict_id"]}"]')
    assert any(XSS in t for t in section.locator("td.mls").all_inner_texts())  # shown as text, not run
    page.screenshot(path=str(artifacts_dir / "dashboard-conflicts-1280.png"), full_page=True)
    section.get_by_role("button", name="Take MLS").click()
    assert "resolved (mls) by admin" in _flash(page)
    t = tables(migrated_engine)
    with migrated_engine.connect() as c:
        row = c.execute(sa.select(t.property_conflicts).where(t.property_conflicts.c.id == data["conflict_id"])
                        ).mappings().one()
        prop = c.execute(sa.select(t.properties).where(t.properties.c.listing_key == data["conflict_key"])
                         ).mappings().one()
    assert row["state"] == "resolved" and row["resolved_by"] == "admin" and row["resolved_at"] is not None
    assert float(prop["price"]) == 222222 and prop["local_edits"] == {}
    _dashboard(page, stack, "conflicts?state=resolved")
    page.locator(f'section.conflict[data-conflict-id="{data["conflict_id"]}"] .resolved').wait_for()


def test_retry_dead_letter_error(logged_in: Any, stack: Stack, data: dict[str, Any],
                                 migrated_engine: sa.Engine, artifacts_dir: Path) -> None:
    from mls_sync.store.tables import tables

    page = logged_in
    _dashboard(page, stack, "errors?state=dead_letter")
    row = page.locator(f'tr[data-error-id="{data["error_id"]}"]')
    assert XSS in row.locator("td.message").inner_text()  # escaped: visible as text
    page.screenshot(path=str(artifacts_dir / "dashboard-errors-1280.png"), full_page=True)
    row.get_by_role("button", name="Retry now").click()
    assert "due for retry now" in _flash(page)
    e = tables(migrated_engine).mls_sync_errors
    with migrated_engine.connect() as c:
        err = c.execute(sa.select(e).where(e.c.id == data["error_id"])).mappings().one()
        now = c.execute(sa.select(sa.func.now())).scalar_one()
    assert err["dead_letter"] is False and abs((err["next_retry_at"] - now).total_seconds()) < 60


PAGES = [("overview", ""), ("history", "history"), ("run", "runs/{run_id}"), ("errors", "errors"),
         ("conflicts", "conflicts?state="), ("actions", "actions")]


def test_screenshots_of_each_page_desktop_and_phone(browser: Any, logged_in: Any, stack: Stack,
                                                    data: dict[str, Any], artifacts_dir: Path) -> None:
    state = logged_in.context.storage_state()
    for label, size, extra in (("1280", DESKTOP, {}), ("phone", PHONE, {"is_mobile": True, "has_touch": True})):
        context = browser.new_context(viewport=size, storage_state=state, **extra)
        try:
            page = context.new_page()
            for name, path in PAGES:
                _dashboard(page, stack, path.format(run_id=data["run"]["id"]))
                assert page.locator("h1").count() >= 1
                page.screenshot(path=str(artifacts_dir / f"dashboard-{name}-{label}.png"), full_page=True)
                if label == "phone":  # nothing wider than the phone: wide tables scroll in their box
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= size["width"] + 1, (name, width)
        finally:
            context.close()
    assert (artifacts_dir / "dashboard-overview-1280.png").stat().st_size > 10_000

