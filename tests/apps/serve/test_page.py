"""The web page of ``resnet50 serve`` in a real headless Chromium (Debian's chromium + chromedriver).

Upload a photo → five bars with labels (the server's top-5); upload a text file → the
server's error shown in the page. Screenshots go to the test's tmp dir and, when
``RESNET50_SCREENSHOT_DIR`` is set, there too.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from servers import ServerProcess

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
httpx = pytest.importorskip("httpx")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (apt-get install ...)"
)


@pytest.fixture(scope="module")
def page_server(model_fp32, tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("serve-page"))
    yield srv
    assert srv.stop() == 0, srv.stderr


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1100,760",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    if os.environ.get("RESNET50_SCREENSHOT_DIR"):
        target = Path(os.environ["RESNET50_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def _upload_and_wait(driver, path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(driver, 120).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, ".card .bar, .card .error")
            and "classifying" not in d.find_element(By.CSS_SELECTOR, ".card").text
        )
    )
    return driver.find_element(By.CSS_SELECTOR, ".card")


def test_upload_photo_shows_five_bars_with_labels(page_server, browser, sample_photos, tmp_path):
    from selenium.webdriver.common.by import By

    photo = sample_photos[2]  # chelsea the cat
    want = httpx.post(f"{page_server.url}/v1/classify?top_k=5", content=photo.read_bytes(), timeout=120).json()
    browser.get(page_server.url + "/")
    assert browser.title == "ResNet50 v1.5 classifier"
    card = _upload_and_wait(browser, photo)
    bars = card.find_elements(By.CSS_SELECTOR, ".bar")
    assert len(bars) == 5
    labels = [bar.find_element(By.CSS_SELECTOR, ".label").text for bar in bars]
    assert labels == [p["label"] for p in want["predictions"]]
    scores = [bar.find_element(By.CSS_SELECTOR, ".score").text for bar in bars]
    assert scores == [f"{100 * p['score']:.1f}%" for p in want["predictions"]]
    widths = [float(bar.find_element(By.CSS_SELECTOR, ".fill").value_of_css_property("width")[:-2]) for bar in bars]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1] > 0
    assert card.find_element(By.CSS_SELECTOR, ".name").text == photo.name
    assert browser.execute_script("return arguments[0].naturalWidth", card.find_element(By.TAG_NAME, "img")) == 451
    assert "weights: synthetic (labels and scores are meaningless)" in browser.find_element(By.ID, "info").text
    assert not card.find_elements(By.CSS_SELECTOR, ".error")
    status = card.find_element(By.CSS_SELECTOR, ".status").text  # the Server-Timing header, read by the page
    assert re.fullmatch(
        r"\d+\.\d ms \(decode \d+\.\d · queue \d+\.\d · model \d+\.\d ms, batch of 1\) · weights synthetic", status
    ), status
    _screenshot(browser, tmp_path, "serve-page-photo.png")


def test_upload_text_file_shows_the_error(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not an image\n")
    browser.get(page_server.url + "/")
    card = _upload_and_wait(browser, text_file)
    assert not card.find_elements(By.CSS_SELECTOR, ".bar")
    error = card.find_element(By.CSS_SELECTOR, ".error").text
    assert error == "notes.txt: not a decodable image in a format the server accepts (JPEG, PNG, WebP, BMP, TIFF, PNM)"
    _screenshot(browser, tmp_path, "serve-page-error.png")
