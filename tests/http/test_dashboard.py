"""``GET /dashboard`` in a real headless Chromium (Debian's chromium + chromium-driver).

The server is ``python -m vdb serve`` with API keys and a Kafka ingest from a
real Tansu broker. The page is opened with the read-only key; it must show
the collection and its count, answer a search with the expected first hit,
update its live figures after more messages arrive (points, ingest records,
a dead letter) and fit a narrow window. Screenshots are written to
``$VDB_TEST_ARTIFACTS`` (default: a ``vdb-test-artifacts`` folder in the
system temp dir) and their paths printed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.ingest.conftest import broker, create_topic, unique  # noqa: F401 (fixture)
from vdb.http.dashboard import ASSETS

RW, RO = "rw-secret", "ro-secret"
DIM = 4
WAIT = 30.0


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def artifacts_dir() -> Path:
    path = Path(
        os.environ.get("VDB_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "vdb-test-artifacts"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert browser and driver, (
        "the dashboard test needs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver; .ci/run installs them)"
    )
    return browser, driver


@pytest.fixture
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1360,1000")
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def produce(bootstrap: str, topic: str, items: list[tuple[object, object]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
    try:
        for key, value in items:
            producer.send(topic, key=str(key).encode(), value=value)
        producer.flush()
    finally:
        producer.close(timeout=10)


def points_msgs(ids: range, data: np.ndarray) -> list[tuple[object, bytes]]:
    return [
        (i, json.dumps({"id": i, "vector": data[i].tolist(), "payload": {"n": i}}).encode())
        for i in ids
    ]


def count(url: str) -> int:
    r = httpx.post(url + "/collections/docs/points/count", json={}, headers={"api-key": RO})
    return r.json()["result"]["count"] if r.status_code == 200 else -1


def wait_for(predicate, timeout: float = WAIT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.1)


@pytest.fixture
def ingesting(serve, broker):  # noqa: F811
    topic = create_topic(broker.bootstrap, unique("dash"))
    data = vectors(40)
    produce(broker.bootstrap, topic, points_msgs(range(20), data))
    server = serve(
        "--api-key", RW, "--read-only-api-key", RO,
        "--ingest", "kafka", "--kafka-bootstrap", broker.bootstrap, "--kafka-topic", topic,
        "--collection", "docs", "--create-dim", str(DIM), "--create-metric", "l2",
        "--format", "json", "--max-wait-ms", "5",
    )  # fmt: skip
    wait_for(lambda: count(server.url) == 20, timeout=60, what="20 points ingested")
    return server, broker, topic, data


def test_page_and_assets_are_open_the_figures_need_a_key(ingesting):
    server = ingesting[0]
    for path, (_, media_type) in ASSETS.items():
        r = httpx.get(server.url + path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == media_type
        assert "default-src 'none'" in r.headers["content-security-policy"]
        text = r.text.replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text
    assert httpx.get(server.url + "/stats").status_code == 401
    r = httpx.get(server.url + "/stats", headers={"api-key": RO})
    assert r.status_code == 200
    stats = r.json()["result"]
    (col,) = stats["collections"]
    assert (col["name"], col["points"], col["dim"], col["metric"]) == ("docs", 20, DIM, "l2")
    assert col["embedder"] is None
    (pipeline,) = stats["ingest"]
    assert pipeline["collection"] == "docs" and pipeline["records"] >= 20
    assert stats["database"]["disk_bytes"] > 0
    # the read-only key may read everything the page reads, and write nothing
    r = httpx.put(
        server.url + "/collections/docs/points",
        json={"points": [{"id": 99, "vector": [0, 0, 0, 1]}]},
        headers={"api-key": RO},
    )
    assert r.status_code == 403


def test_dashboard_in_chromium(ingesting, browser, capsys, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server, broker_, topic, data = ingesting
    wait = WebDriverWait(browser, WAIT)

    def text(css: str) -> str:  # read in one step: the page redraws every second
        return browser.execute_script(
            "const n = document.querySelector(arguments[0]); return n ? n.innerText.trim() : ''",
            css,
        )

    browser.get(server.url + "/dashboard")
    wait.until(lambda d: "API key needed" in text("#status"))
    browser.find_element(By.ID, "api-key").send_keys(RO)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(lambda d: text('#collections tr[data-name="docs"] td.points') == "20")
    assert text('#collections tr[data-name="docs"] td.name') == "docs"
    assert "live" in text("#status")
    pipeline = '#ingest .pipeline [data-figure="records"] .value'
    wait.until(lambda d: text(pipeline) == "20")
    # the text mode shows only for a collection with an embedder
    modes = Select(browser.find_element(By.ID, "search-mode")).options
    assert [m.get_attribute("value") for m in modes] == ["vector", "id"]

    # search by vector: the point itself is the first hit
    Select(browser.find_element(By.ID, "search-mode")).select_by_value("vector")
    box = browser.find_element(By.ID, "search-input")
    box.clear()
    box.send_keys(json.dumps(data[5].tolist()))
    browser.find_element(By.ID, "search-go").click()
    wait.until(lambda d: text("#search-results tbody tr:first-child td.hit-id") == "5")
    assert '"n":5' in text("#search-results tbody tr:first-child td.payload")

    # search by point id: the point, then its nearest other point
    distances = ((data[:20] - data[7]) ** 2).sum(axis=1)
    distances[7] = np.inf
    expected = str(int(np.argmin(distances)))
    Select(browser.find_element(By.ID, "search-mode")).select_by_value("id")
    box.clear()
    box.send_keys("7")
    browser.find_element(By.ID, "search-go").click()
    wait.until(lambda d: text("#search-results tbody tr:first-child td.hit-id") == expected)
    assert "point 7" in text("#search-point")

    # live figures follow the ingest: 10 more points and one message that cannot be applied
    produce(broker_.bootstrap, topic, points_msgs(range(20, 30), data) + [("bad", b"{not json")])
    wait.until(lambda d: text('#collections tr[data-name="docs"] td.points') == "30")
    wait.until(lambda d: text(pipeline) == "31")
    wait.until(lambda d: text("#dead-letters tbody tr:first-child"))
    cells = text("#dead-letters tbody tr:first-child").split("\t")
    assert cells[2:5] == [topic, "0", "30"]  # topic, partition, offset of the bad message
    assert "undecodable json" in cells[5]  # the reason
    assert text('#overview [data-figure="dead_letters"] .value') == "1"

    out = artifacts_dir()
    wide = tmp_path / "dashboard-wide.png"
    assert browser.save_screenshot(str(wide))
    browser.set_window_size(420, 1000)
    wait.until(lambda d: d.execute_script("return window.innerWidth") <= 440)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, f"the page is {overflow}px wider than a narrow window"
    narrow = tmp_path / "dashboard-narrow.png"
    assert browser.save_screenshot(str(narrow))
    copies = []
    for shot in (wide, narrow):
        assert shot.stat().st_size > 10_000
        copies.append(shutil.copy(shot, out / shot.name))
    with capsys.disabled():
        print("\ndashboard screenshots: " + ", ".join(str(c) for c in copies))


def test_a_wrong_key_is_asked_again(ingesting, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = ingesting[0]
    browser.get(server.url + "/dashboard")
    field = browser.find_element(By.ID, "api-key")
    field.send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    WebDriverWait(browser, WAIT).until(
        lambda d: "API key needed" in d.find_element(By.ID, "status").text
    )
    assert "needed" in browser.find_element(By.ID, "key-form").get_attribute("class")
    assert browser.find_elements(By.CSS_SELECTOR, "#collections tbody tr") == []


def test_text_search_is_offered_only_where_an_embedder_is_named(serve, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    import vdb

    data_dir = tmp_path / "embedded-data"
    with vdb.open(data_dir, warm=False) as db:
        texts = db.create_collection("texts", dim=DIM, metric="cosine")
        texts.update(embedder={"model": "minilm-test"})
        texts.upsert([1], vectors(1))
        db.create_collection("plain", dim=DIM, metric="cosine")
    server = serve("--read-only-api-key", RO, "--api-key", RW, data_dir=data_dir)
    stats = httpx.get(server.url + "/stats", headers={"api-key": RO}).json()["result"]
    embedders = {c["name"]: c["embedder"] for c in stats["collections"]}
    assert embedders["plain"] is None
    assert embedders["texts"]["model"] == "minilm-test"

    wait = WebDriverWait(browser, WAIT)
    browser.get(server.url + "/dashboard")
    browser.find_element(By.ID, "api-key").send_keys(RO)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(lambda d: len(Select(d.find_element(By.ID, "search-collection")).options) == 2)

    def modes() -> list[str]:
        return browser.execute_script(
            "return [...document.querySelectorAll('#search-mode option')].map(o => o.value)"
        )

    Select(browser.find_element(By.ID, "search-collection")).select_by_value("plain")
    wait.until(lambda d: modes() == ["vector", "id"])
    Select(browser.find_element(By.ID, "search-collection")).select_by_value("texts")
    wait.until(lambda d: modes() == ["vector", "id", "text"])
    Select(browser.find_element(By.ID, "search-mode")).select_by_value("text")
    box = browser.find_element(By.ID, "search-input")
    assert "words" in box.get_attribute("placeholder")
    box.send_keys("a package manager")
    browser.find_element(By.ID, "search-go").click()
    # the query is sent as {"text", "model"}: the server answers with hits or names the problem
    wait.until(
        lambda d: (
            d.find_element(By.ID, "search-error").text
            or d.find_element(By.ID, "search-results").is_displayed()
        )
    )
