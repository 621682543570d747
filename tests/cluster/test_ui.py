"""`trainfleet ui` in a real headless Chromium (Debian's chromium and chromium-driver,
through Selenium) over a real sandbox: the pages, live charts, filters, stopping a job
from the page, the token. Screenshots of each page go to test-artifacts/ui/."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import EXAMPLE, JOBS, REPO, tf, tf_start, wait_for_line

ARTIFACTS = REPO / "test-artifacts" / "ui"


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def until(what: Callable[[], Any], timeout: float = 30, message: str = "") -> Any:
    """What `what` returns once it is true; the pages redraw every few seconds, so an
    element found a moment ago may be gone: that is asked again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = what()
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {message}")
        time.sleep(0.2)


def log_lines(driver: Any) -> list[tuple[str, str]]:
    """(rank, text) of each log line on screen, read at one moment (the log grows meanwhile)."""
    return [tuple(x) for x in driver.execute_script(
        "return [...document.querySelectorAll('#log .line')].map(e => [e.dataset.rank, e.textContent])")]


def processes_of(state: Any, job_id: str) -> list[int]:
    """Every process on the sandbox's nodes that belongs to the job (by its id in the environment)."""
    from trainfleet.sandbox import cluster as sb

    found = []
    for node in state.nodes:
        for pid in sb.namespace_pids(node.namespace):
            try:
                if f"TRAINFLEET_JOB_ID={job_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    found.append(pid)
            except OSError:
                continue
    return found


def status_code(url: str, **headers: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def ui(fresh: Any) -> Iterator[tuple[Any, str, subprocess.Popen[str]]]:
    state = fresh.make(3, slots=1)
    fleet = Path(state.fleet_file)
    server = tf_start("ui", "-f", str(fleet))
    try:
        url = wait_for_line(server, r"^http://127\.0\.0\.1:\d+/\?token=", timeout=60)[-1].strip()
        yield state, url, server
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


def test_the_dashboard_shows_the_fleet_its_jobs_and_live_charts(ui: tuple[Any, str, subprocess.Popen[str]],
                                                                  tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    state, url, server = ui
    fleet = Path(state.fleet_file)
    base = url.split("?")[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Nothing without the token, nor with a wrong one, nor from a page that names another host.
    token = url.split("token=")[1]
    # The page's shell holds nothing of the fleet and no token, and sets no cookie (a cookie
    # for 127.0.0.1 would go to every port there): the page sends the token in a header.
    with urllib.request.urlopen(base, timeout=10) as shell:
        assert token not in shell.read().decode() and shell.headers.get("Set-Cookie") is None
    assert status_code(base, Host="attacker.example:80") == 403
    assert status_code(base + "api/jobs") == 403
    assert status_code(base + "api/jobs?token=" + "x" * len(token)) == 403
    assert status_code(base + "api/jobs?token=" + token, Host="attacker.example:80") == 403
    assert status_code(base + "api/jobs?token=" + token, Host="127.0.0.1.attacker.example") == 403
    assert status_code(base + "api/jobs?token=" + token) == 200
    # Through the guide's `ssh -L 8000:127.0.0.1:PORT` tunnel the Host names the tunnel's port.
    assert status_code(base + "api/jobs?token=" + token, Host="127.0.0.1:8000") == 200
    assert status_code(base + "api/jobs?token=" + token, Host="localhost:8000") == 200

    tf("bench", "net", "-f", str(fleet), "--max-size", "16K", "--p2p-size", "256K", "--seconds-per-size", "0",
       timeout=240, cwd=tmp_path, check=True)
    training = tf("run", "-f", str(fleet), "--sync-dir", str(EXAMPLE), "--detach", "train.py", "--steps", "400",
                  "--log-every", "2", timeout=120, cwd=tmp_path, check=True).stdout.strip()
    chatty = tf("run", "-f", str(fleet), "--sync-dir", str(JOBS), "--concurrent", "--detach", "chatty.py",
                timeout=120, cwd=tmp_path, check=True).stdout.strip()
    assert status_code(base + f"api/jobs/{training}/stream?lines=ten&token=" + token) == 400

    held = ""
    driver = browser()
    try:
        driver.get(url)
        # The fleet: every node, the N x N heatmap naming the slowest link.
        until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "tr.node")) == 3, message="three nodes")
        assert {e.get_attribute("data-node") for e in driver.find_elements(By.CSS_SELECTOR, "tr.node")} == \
            {"node0", "node1", "node2"}
        until(lambda: len(driver.find_elements(By.CSS_SELECTOR, "table.heat td.cell")) == 9, message="heatmap")
        assert len(driver.find_elements(By.CSS_SELECTOR, "table.heat td.slowest")) == 1
        assert "Slowest link" in driver.find_element(By.ID, "heatmap").text
        assert "token" not in driver.current_url  # taken out of the address bar
        # Doctor, run from the page (a POST with the token): its findings and fixes appear.
        until(lambda: driver.find_element(By.ID, "run-doctor").click() or True)
        until(lambda: "Last run" in driver.find_element(By.ID, "findings").text, timeout=90, message="doctor's report")
        driver.save_screenshot(str(ARTIFACTS / "fleet.png"))

        # The jobs: both listed, running.
        driver.get(base + "#/jobs")
        until(lambda: {e.get_attribute("data-job") for e in driver.find_elements(By.CSS_SELECTOR, "tr.job")} >=
              {training, chatty}, message="both jobs listed")
        driver.save_screenshot(str(ARTIFACTS / "jobs.png"))
        driver.refresh()  # the tab keeps its token (not in the address, not in a cookie): a reload works
        until(lambda: {e.get_attribute("data-job") for e in driver.find_elements(By.CSS_SELECTOR, "tr.job")} >=
              {training, chatty}, message="both jobs listed after a reload")

        # The example's page: a loss chart that grows while the job runs.
        driver.get(base + f"#/job/{training}")
        chart = '.chart[data-group="loss"]'
        first = int(until(lambda: driver.find_elements(By.CSS_SELECTOR, chart) and
                          int(driver.find_element(By.CSS_SELECTOR, chart).get_attribute("data-points") or 0) >= 3 and
                          driver.find_element(By.CSS_SELECTOR, chart).get_attribute("data-points"),
                          timeout=90, message="a loss chart"))
        until(lambda: int(driver.find_element(By.CSS_SELECTOR, chart).get_attribute("data-points")) > first + 2,
              timeout=60, message="the loss chart growing")
        assert driver.find_element(By.ID, "job-state").text == "running"
        # The same parser gives `status --json` the latest values.
        listed = json.loads(tf("status", "-f", str(fleet), training, "--json", check=True).stdout)[0]
        assert set(listed["metrics"]) == {"loss", "tokens/s"} and 0 < listed["metrics"]["loss"] < 5
        driver.save_screenshot(str(ARTIFACTS / "job.png"))

        # The chatty job's log, filtered to one rank.
        driver.get(base + f"#/job/{chatty}")
        until(lambda: len(Select(driver.find_element(By.ID, "filter-rank")).options) == 4, message="3 ranks")
        Select(driver.find_element(By.ID, "filter-rank")).select_by_value("1")
        shown = log_lines(driver)
        assert shown and {rank for rank, _ in shown} == {"1"}
        counted = driver.find_element(By.ID, "log-count").text.split()
        assert int(counted[0]) < int(counted[2])
        driver.find_element(By.ID, "filter-text").send_keys("step 1 ")
        # One rank per node: rank 1 runs on node1.
        until(lambda: log_lines(driver) == [("1", "[node1:1] step 1 loss 2.7373")], message="search")

        # Stopped from the jobs page (after a confirmation): ended on every node.
        driver.get(base + "#/jobs")
        until(lambda: driver.find_element(By.CSS_SELECTOR, f'button.stop[data-job="{chatty}"]').click() or True)
        driver.switch_to.alert.accept()
        until(lambda: driver.find_element(By.CSS_SELECTOR, f'tr.job[data-job="{chatty}"]')
              .get_attribute("data-state") == "stopped", timeout=60, message="the list shows it stopped")
        states = json.loads(tf("status", "-f", str(fleet), chatty, "--json", check=True).stdout)[0]
        assert {n: s["state"] for n, s in states["nodes"].items()} == {f"node{i}": "stopped" for i in range(3)}
        assert processes_of(state, chatty) == [] and processes_of(state, training)  # the other job runs on

        # 100,000 lines: the page keeps only what is on screen, and filters at once.
        burst = tf("run", "-f", str(fleet), "--sync-dir", str(JOBS), "--concurrent", "--detach", "chatty.py",
                   "--burst", "100000", timeout=120, cwd=tmp_path, check=True).stdout.strip()
        driver.get(base + f"#/job/{burst}")
        until(lambda: driver.find_element(By.ID, "log-count").text.startswith("100000 of"), timeout=120,
              message="100,000 lines")
        assert len(log_lines(driver)) < 200
        took = driver.execute_script(
            "const box = document.getElementById('filter-text'); const t = performance.now();"
            "box.value = 'step 99999 '; box.dispatchEvent(new Event('input')); return performance.now() - t;")
        assert took < 500, took
        assert log_lines(driver) == [("0", "[node0:0] step 99999 loss 0.0396 tokens/s 1089")]

        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []

        # Ctrl-C ends the server within a second, though a page still streams a running job
        # (a real tab left open held it forever): its streams are closed, not waited for. (A job
        # of its own: the training above may have finished by now on a slow machine.)
        held = tf("run", "-f", str(fleet), "--sync-dir", str(JOBS), "--concurrent", "--detach", "ranks.py",
                  "--forever", timeout=180, cwd=tmp_path, check=True).stdout.strip().splitlines()[-1]
        driver.get(base + f"#/job/{held}")
        until(lambda: driver.find_element(By.ID, "job-state").text == "running", timeout=60,
              message="the running job's page")
        time.sleep(1)  # its streams are open
        interrupted = time.monotonic()
        server.send_signal(signal.SIGINT)
        assert server.wait(15) == 0
        assert time.monotonic() - interrupted < 2.5, time.monotonic() - interrupted
    finally:
        driver.quit()
        tf("stop", "-f", str(fleet), training, timeout=120)
        if held:
            tf("stop", "-f", str(fleet), held, timeout=120)

