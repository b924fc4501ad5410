"""The web page in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium against
a real uvicorn server on 127.0.0.1. Uploads the shared DICOM files, a PNG and a broken file, and checks what a
reader sees. The screenshot is written to $COVIDSCREEN_ARTEFACTS (default: the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from covidscreen.serving import ServeConfig, create_app
from tests.binaries import require_binaries
from tests.serving.servers import uvicorn_server

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    require_binaries(Path(CHROMIUM).is_file() and Path(DRIVER).is_file(),
                     f"{CHROMIUM} or {DRIVER} not found: install Debian's chromium and chromium-driver "
                     "(scripts/apt.d/serving.txt) to run the browser test")
    from selenium import webdriver  # the test extra installs it
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,1500"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_shows_results_heatmaps_and_inline_errors(browser, tiny_run, shared_data, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    dicoms = sorted((shared_data / "dicom").glob("*.dcm"))
    import pandas as pd
    from PIL import Image

    meta = pd.read_csv(shared_data / "cxr" / "metadata.csv")
    row = meta[(meta["label"] == "covid") & (meta["view"] == "PA")].iloc[0]
    png = tmp_path / "chest.png"  # the shared X-rays are JPEGs: the page must take PNGs too
    Image.open(shared_data / "cxr" / row["image"]).convert("L").save(png)
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:300])
    files = [*dicoms, png, broken]
    app = create_app(ServeConfig(run_dir=tiny_run, db=str(tmp_path / "log.sqlite"), backend="torch"))
    with uvicorn_server(app) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: "classes:" in d.find_element(By.ID, "model-summary").text)
        assert "not a diagnosis" in browser.find_element(By.CSS_SELECTOR, ".notice").text
        assert browser.find_element(By.ID, "drop").get_attribute("tabindex") == "0"  # reachable by keyboard
        options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#point option")]
        assert any(o.startswith("sensitivity_0.95") for o in options)
        picker = browser.find_element(By.ID, "files")
        browser.execute_script("arguments[0].hidden = false;", picker)  # a file dialog cannot be driven headless
        picker.send_keys("\n".join(str(f) for f in files))
        wait.until(lambda d: d.find_element(By.ID, "progress-text").text == f"{len(files)} of {len(files)} done")
        cards = {c.find_element(By.CSS_SELECTOR, ".name").text: c
                 for c in browser.find_elements(By.CSS_SELECTOR, "#results .card")}
        assert set(cards) == {f.name for f in files}
        for f in files[:-1]:
            card = cards[f.name]
            assert card.find_element(By.CSS_SELECTOR, ".decision").text.startswith("Decision: ")
            assert "sensitivity" in card.find_element(By.CSS_SELECTOR, ".point").text
            bars = card.find_elements(By.CSS_SELECTOR, ".bars .bar")
            assert len(bars) == 3 and all("probability of" in b.get_attribute("aria-label") for b in bars)
            img = card.find_element(By.CSS_SELECTOR, "img.xray")
            assert img.get_attribute("src").startswith("data:image/png;base64,")
            assert browser.execute_script("return arguments[0].naturalWidth", img) > 100  # the PNG decoded
            assert not card.find_element(By.CSS_SELECTOR, ".error").is_displayed()
        error = cards["broken.png"].find_element(By.CSS_SELECTOR, ".error")
        assert error.is_displayed() and "broken.png" in error.text and "truncated" in error.text
        assert not cards["broken.png"].find_element(By.CSS_SELECTOR, ".body").is_displayed()
        # the heatmap toggle switches between overlay and plain X-ray, and says which it shows
        card = cards[dicoms[0].name]
        toggle, img = card.find_element(By.CSS_SELECTOR, ".toggle"), card.find_element(By.CSS_SELECTOR, "img.xray")
        overlay = img.get_attribute("src")
        toggle.click()
        assert toggle.get_attribute("aria-pressed") == "false" and img.get_attribute("src") != overlay
        toggle.send_keys(Keys.SPACE)  # a real button: operable from the keyboard
        assert toggle.get_attribute("aria-pressed") == "true" and img.get_attribute("src") == overlay
        browser.execute_script("window.scrollTo(0, 0)")
        browser.execute_script("arguments[0].hidden = true;", picker)
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page in one picture
            "width": 1280, "height": min(height + 20, 4000), "deviceScaleFactor": 1, "mobile": False})
        out = Path(os.environ.get("COVIDSCREEN_ARTEFACTS", tmp_path))
        out.mkdir(parents=True, exist_ok=True)
        shot = out / "service.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        # twenty files at once: all answered, the progress bar counts them
        many = []
        for i in range(20):
            src = files[i % 3]
            many.append(tmp_path / f"batch{i:02d}{src.suffix}")
            shutil.copy(src, many[-1])
        browser.execute_script("arguments[0].hidden = false;", picker)
        picker.send_keys("\n".join(str(f) for f in many))
        wait.until(lambda d: d.find_element(By.ID, "progress-text").text == "20 of 20 done")
        decided = [c for c in browser.find_elements(By.CSS_SELECTOR, "#results .card")
                   if c.find_element(By.CSS_SELECTOR, ".name").text.startswith("batch")
                   and c.find_element(By.CSS_SELECTOR, ".decision").text.startswith("Decision: ")]
        assert len(decided) == 20
        assert browser.find_element(By.ID, "progress").get_attribute("value") == "20"
        # script errors only: the 422 of the broken file is logged by the browser as a failed resource, as it should
        logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
        assert not logs, logs
    if os.environ.get("COVIDSCREEN_ARTEFACTS") is None:
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)
