"""The officer's web console end to end: a real `fedtrace console` process and headless Chromium.

The node directory is made with the CLI and given a pending follow-up request; the
test reads the sign-in URL the console prints, opens it in Chromium (Selenium),
sees the request, approves it through the page, and keeps a screenshot. Skipped,
with the reason, where /usr/bin/chromium is absent (CI installs chromium and
chromium-driver).
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import followup
from node.audit import AUDIT_DIR, entries
from node.config import load_node_config
from node.store import NodeDatabase
from tests.integration.conftest import fedtrace

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
A = "0x52908400098527886e0f7030069857d2e4169ee7"
B = "0xde709f2102306220921060314715629080e2fb77"
POLICY = """
jurisdiction = "EE"
version = "ee-console-e2e"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "disclosure-request"
max_items_per_query = 500
disclosable_fields = ["tx_count", "first_seen", "linked_subjects"]
approval = "officer"
answer_within_days = 10
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs /usr/bin/chromium and /usr/bin/chromedriver "
        "(apt-get install chromium chromium-driver)",
    ),
]


def _node(root: Path) -> tuple[Path, str]:
    fedtrace("pki", "init", str(root / "ca"), check=True)
    node_dir = root / "EE"
    fedtrace(
        "node", "init", str(node_dir), "--jurisdiction", "EE", "--ca", str(root / "ca"), check=True
    )
    (node_dir / "policy.toml").write_text(POLICY)
    config = load_node_config(node_dir)
    database = NodeDatabase(config.database)
    with database.session() as con:
        con.execute(
            "INSERT INTO transactions VALUES "
            f"('t1', 'eth', '{A}', '{B}', 'ETH', 1, 100.50, '2026-01-02T03:04:05Z', NULL, 1)"
        )
    dataset = config.dataset("wallets")
    assert dataset is not None
    row = followup.submit(
        database,
        followup.Submission(
            kind="disclose",
            partner="FR",
            partner_subject="CN=FR",
            case_ref="CASE-<b>7</b>",
            legal_basis="MLA",
            reason="",
            dataset=dataset,
            item=A,
            fields_asked=("tx_count", "first_seen"),
            preservation_days=0,
            automatic=False,
            answer_within_days=10,
            policy_version="ee-console-e2e",
            grant_index=1,
            nonce="00",
        ),
        dt.datetime.now(dt.UTC),
    )
    return node_dir, row.request_id


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    node_dir, request_id = _node(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "fedtrace.cli", "console", str(node_dir), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    found = re.search(r"(http://127\.0\.0\.1:(\d+)/\?token=\S+)", line)
    if found is None:
        process.kill()
        raise AssertionError(f"no URL printed: {line!r} {process.stderr.read()[-2000:]}")
    assert int(found.group(2)) > 0
    try:
        yield node_dir, request_id, found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        process.stdout.close()
        process.stderr.close()
        assert code == 0


def test_the_officer_approves_a_request_in_chromium(
    console: tuple[Path, str, str], tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    node_dir, request_id, url = console
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(30)
        driver.get(url)
        assert driver.current_url.endswith("/requests"), driver.current_url  # token dropped
        assert request_id in driver.find_element(By.ID, request_id).text
        assert "CASE-<b>7</b>" in driver.find_element(By.ID, request_id).text  # shown as text
        driver.find_element(By.ID, f"approve-{request_id}").click()
        flash = driver.find_element(By.CSS_SELECTOR, ".flash.done").text
        assert flash == f"{request_id}: approved; disclosed tx_count, first_seen"
        assert request_id in driver.page_source
        screenshot = tmp_path / "console-approved.png"
        assert driver.save_screenshot(str(screenshot))
        driver.delete_all_cookies()
        driver.get(url)  # the token is spent: a second sign-in is refused
        assert "already used" in driver.page_source
    finally:
        driver.quit()
    image = screenshot.read_bytes()
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 10_000
    [entry] = [e for e in entries(node_dir / AUDIT_DIR) if e.get("event") == "request-approved"]
    assert entry["request"] == request_id and "console session cs-" in entry["officer"]
    assert "console session" not in entry["reason"]
