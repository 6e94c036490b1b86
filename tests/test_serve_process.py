"""`moeclip-jax serve` as a real uvicorn process on a free 127.0.0.1 port:
the inspection page in headless Chromium (Selenium), then SIGTERM with
requests in flight (they complete, the process exits 0)."""

import concurrent.futures
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import cli_fixtures  # pylint: disable=g-import-not-at-top,wrong-import-position
import serve_fixtures as sf  # pylint: disable=g-import-not-at-top,wrong-import-position

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return cli_fixtures.demo_result(tmp_path_factory)


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
  """The serve verb in a subprocess; yields (url, process, log file)."""
  port = sf.free_port()
  folder = tmp_path_factory.mktemp("serve_proc")
  log = folder / "serve.log"
  console = open(folder / "console.txt", "wb")  # pylint: disable=consider-using-with
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep
             + os.environ.get("PYTHONPATH", ""), XLA_FLAGS="")
  proc = subprocess.Popen(
      [sys.executable, "-m", "moeclip_jax.cli", "serve", "--checkpoint",
       str(demo["detector"]), "--port", str(port), "--max-wait-ms", "300",
       "--log-file", str(log)], env=env, cwd=str(ROOT),
      stdout=console, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  try:
    with httpx.Client(base_url=url, timeout=60) as client:
      sf.wait_healthy(client.get, proc=proc)
    yield url, proc, log
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    console.close()


def _chromium():
  found = next((p for p in CHROMIUM if os.path.exists(p)), None)
  if found is None or not os.path.exists(CHROMEDRIVER):
    pytest.skip("no Chromium: apt-get install chromium chromium-driver "
                "(Debian packages; .ci/run installs them)")
  return found


def _artifacts(tmp_path) -> pathlib.Path:
  folder = pathlib.Path(os.environ.get("MOECLIP_JAX_ARTIFACTS", tmp_path))
  folder.mkdir(parents=True, exist_ok=True)
  return folder


def test_page_in_chromium_upload_overlay_threshold(server, demo, tmp_path):
  webdriver = pytest.importorskip("selenium.webdriver")
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import WebDriverWait
  url, _, _ = server
  opts = webdriver.ChromeOptions()
  opts.binary_location = _chromium()
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--window-size=1280,900",
               "--no-proxy-server"):
    opts.add_argument(flag)
  service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
  driver = webdriver.Chrome(options=opts, service=service)
  try:
    driver.get(url + "/")
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_element(By.ID, "class-select")
               .get_attribute("value") == "poly")
    images = cli_fixtures.target_test_images(demo)
    picked = [images[0], images[-1], images[len(images) // 2]]
    folder = tmp_path / "upload"
    folder.mkdir()
    paths = []
    for i, p in enumerate(picked):  # unique names for the gallery
      dst = folder / f"{p.parent.name}_{i}{p.suffix}"
      shutil.copy(p, dst)
      paths.append(str(dst))
    bad = folder / "not_an_image.png"
    bad.write_bytes(b"junk")
    driver.find_element(By.ID, "files").send_keys(
        "\n".join(paths + [str(bad)]))
    wait.until(lambda d: len(d.find_elements(
        By.CSS_SELECTOR, ".card[data-overlay='1']")) == len(paths))
    wait.until(lambda d: d.find_elements(
        By.CSS_SELECTOR, ".card[data-state='error']"))
    err = driver.find_element(By.CSS_SELECTOR,
                              ".card[data-state='error'] .error").text
    assert "not_an_image" in err and "not_an_image.png" in err
    cards = driver.find_elements(By.CSS_SELECTOR, ".card[data-state='done']")
    scores = [float(c.get_attribute("data-score")) for c in cards]
    assert scores == sorted(scores, reverse=True)  # gallery by score
    slider = driver.find_element(By.ID, "threshold")
    decisions = lambda: [c.find_element(By.CLASS_NAME, "decision").text  # pylint: disable=g-long-lambda
                         for c in driver.find_elements(
                             By.CSS_SELECTOR, ".card[data-state='done']")]
    slider.send_keys(Keys.HOME)  # below every score: all anomalous
    assert set(decisions()) == {"ANOMALOUS"}
    slider.send_keys(Keys.END)  # above every score: all normal
    assert set(decisions()) == {"NORMAL"}
    threshold = sorted(scores)[1]  # between the scores: the decision flips
    driver.execute_script(
        "const s = document.getElementById('threshold');"
        "s.value = arguments[0]; s.dispatchEvent(new Event('input'));",
        threshold)
    got = decisions()
    assert "ANOMALOUS" in got and "NORMAL" in got
    out = _artifacts(tmp_path) / "serve_page.png"
    assert driver.save_screenshot(str(out))
    assert out.stat().st_size > 10_000
  finally:
    driver.quit()


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
  boundary = "moeclipjaxtestboundary"
  body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\";"
          f" filename=\"{name}\"\r\nContent-Type: application/octet-stream"
          f"\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
  return body, f"multipart/form-data; boundary={boundary}"


def test_sigterm_finishes_in_flight_requests_then_exits_0(server, demo):
  """Requests whose bodies are half sent when SIGTERM arrives still get
  their scores; then the process exits 0."""
  url, proc, log = server
  image = cli_fixtures.target_test_images(demo)[0]
  body, ctype = _multipart(image.name, image.read_bytes())
  release = threading.Event()

  def slow_body():
    yield body[:len(body) // 2]
    release.wait(60)
    yield body[len(body) // 2:]

  def post(_):
    with httpx.Client(base_url=url, timeout=120) as client:
      return client.post("/v1/predict", content=slow_body(), headers={
          "content-type": ctype, "content-length": str(len(body))})

  n = 4
  with concurrent.futures.ThreadPoolExecutor(n) as pool:
    futures = [pool.submit(post, i) for i in range(n)]
    with httpx.Client(base_url=url, timeout=60) as client:
      deadline = time.monotonic() + 60
      while client.get("/v1/stats").json()["in_flight"] < n:
        assert time.monotonic() < deadline, "requests never arrived"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # the server has stopped accepting by now
    with pytest.raises(httpx.TransportError):
      httpx.get(url + "/healthz", timeout=5)
    release.set()
    replies = [f.result() for f in futures]
  assert [r.status_code for r in replies] == [200] * n
  assert all("score" in r.json()["results"][0] for r in replies)
  assert proc.wait(timeout=60) == 0
  lines = [line for line in log.read_text().splitlines()
           if "POST /v1/predict" in line]
  assert len(lines) >= n and all(" 200 " in line for line in lines[-n:])
