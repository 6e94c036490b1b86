"""`moeclip-jax serve` API on the reduced demo's MoECLIP detector and tiny
AnomalyMoE / InCTRL detectors (FastAPI TestClient): predict's scores,
every bad-input code, batching under concurrency, timeouts, the log."""

import base64
import concurrent.futures
import io
import shutil
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import cli_fixtures  # pylint: disable=g-import-not-at-top,wrong-import-position
import serve_fixtures as sf  # pylint: disable=g-import-not-at-top,wrong-import-position
import moeclip_jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from moeclip_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

MAX_BYTES, MAX_PIXELS = 20_000, 100 * 100


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return cli_fixtures.demo_result(tmp_path_factory)


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
  return tmp_path_factory.mktemp("serve_log") / "serve.log"


@pytest.fixture(scope="module")
def client(demo, log_file):
  with sf.client_for(demo["detector"], max_batch=8, max_wait_ms=50,
                     max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS,
                     max_images=4, log_file=str(log_file)) as c:
    yield c


@pytest.fixture(scope="module")
def image(demo):
  return cli_fixtures.target_test_images(demo)[0]


def _post(client, *named, **data):
  return client.post("/v1/predict", files=sf.files(*named), data=data)


def test_health_model_page_and_openapi(client):
  assert client.get("/healthz").json() == {"status": "ok"}
  model = client.get("/v1/model").json()
  assert model["method"] == "moeclip" and model["image_size"] == 32
  assert model["classes"] == ["poly"]  # the calibrated class
  assert model["threshold_source"] == "calibration"
  assert model["buckets"] == [1, 2, 4, 8]
  page = client.get("/")
  assert page.status_code == 200 and "threshold" in page.text
  assert "http" not in page.text.replace("http-equiv", "")  # no CDN
  assert client.get("/static/app.js").status_code == 200
  assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_good_image_scores_like_predict(client, image, tmp_path):
  row = sf.predict_score(client.app.state.service.engine.detector
                         .checkpoint_dir, image, tmp_path / "pred")
  data = image.read_bytes()
  multi = _post(client, (image.name, data), return_map="png")
  assert multi.status_code == 200
  got = multi.json()["results"][0]
  assert abs(got["score"] - row["score"]) <= 1e-6
  assert got["threshold"] == row["threshold"]
  assert got["is_anomalous"] == row["is_anomalous"]
  assert set(got["timings"]) == {"queue_ms", "compute_ms", "batch_size"}
  heat = Image.open(io.BytesIO(base64.b64decode(got["map_png"])))
  assert heat.size == Image.open(image).size
  js = client.post("/v1/predict", json={
      "images": [base64.b64encode(data).decode()], "class_name": "poly",
      "threshold": "0.25", "return_map": "array", "map_size": 16})
  entry = js.json()["results"][0]
  assert abs(entry["score"] - row["score"]) <= 1e-6
  assert entry["threshold"] == 0.25
  assert entry["is_anomalous"] == (entry["score"] >= 0.25)
  assert np.asarray(entry["map"]).shape == (16, 16)


def _truncated(image) -> bytes:
  data = image.read_bytes()
  return data[:len(data) // 2]


def _float_tiff() -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(
      buf, format="TIFF")
  return buf.getvalue()


@pytest.mark.parametrize("case, status, code", [
    ("text", 400, "not_an_image"),
    ("empty", 400, "empty_image"),
    ("truncated", 400, "truncated_image"),
    ("float_tiff", 400, "unsupported_mode"),
    ("big_file", 413, "too_many_bytes"),
    ("big_image", 413, "too_many_pixels"),
])
def test_bad_image_gets_its_code(client, image, case, status, code):
  data = {"text": lambda: b"not an image at all",
          "empty": lambda: b"",
          "truncated": lambda: _truncated(image),
          "float_tiff": _float_tiff,
          "big_file": lambda: sf.png_bytes(sf.noise(90, 90)),  # ~24 kB
          "big_image": lambda: sf.png_bytes(np.zeros((101, 100, 3),
                                                     np.uint8)),
          }[case]()
  r = _post(client, (f"{case}.png", data))
  assert r.status_code == status, r.text
  err = r.json()["error"]
  assert err["code"] == code and f"{case}.png" in err["message"]


def test_request_level_errors(client, image):
  good = (image.name, image.read_bytes())
  cases = [
      (_post(client, good, class_name="teapot"), 422, "unknown_class"),
      (_post(client, good, threshold="high"), 400, "bad_request"),
      (_post(client, good, return_map="gif"), 400, "bad_request"),
      (client.post("/v1/predict", data={"class_name": "poly"}), 400,
       "no_images"),
      (_post(client, *[good] * 5), 413, "too_many_images"),
      (client.post("/v1/predict", json={"images": ["%%%"]}), 400,
       "bad_request"),
      (client.post("/v1/prompts", files=sf.files(good)), 400,
       "bad_request"),  # MoECLIP takes no prompts
  ]
  for r, status, code in cases:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_bad_image_fails_only_its_entry(client, image):
  r = _post(client, (image.name, image.read_bytes()), ("bad.png", b"junk"),
            (image.name, image.read_bytes()))
  assert r.status_code == 200
  first, bad, third = r.json()["results"]
  assert bad == {"error": {"code": "not_an_image", "message": bad["error"][
      "message"]}} and "bad.png" in bad["error"]["message"]
  assert first["score"] == pytest.approx(third["score"], abs=1e-6)


def test_concurrent_requests_are_batched(client, demo):
  paths = cli_fixtures.target_test_images(demo)
  payloads = [(p.name, p.read_bytes()) for p in paths] * 4
  service = client.app.state.service
  service.engine.batches.clear()
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    replies = list(pool.map(lambda item: _post(client, item), payloads))
  assert all(r.status_code == 200 for r in replies)
  sizes = [r.json()["results"][0]["timings"]["batch_size"] for r in replies]
  assert max(sizes) > 1
  seen = service.engine.batches  # (images in the call, bucket) -> calls
  assert max(n for n, _ in seen) > 1
  assert sum(n * c for (n, _), c in seen.items()) == len(payloads)
  # Batch company does not change a score.
  scores = np.array([r.json()["results"][0]["score"] for r in replies])
  assert np.ptp(scores.reshape(4, len(paths)), axis=0).max() <= 1e-6


def test_timeout_gives_503_and_server_stays_healthy(client, image):
  config = client.app.state.service.config
  old, config.timeout_s = config.timeout_s, 1e-6
  try:
    r = _post(client, (image.name, image.read_bytes()))
  finally:
    config.timeout_s = old
  assert r.status_code == 503 and r.json()["error"]["code"] == "timeout"
  assert client.get("/healthz").status_code == 200
  assert _post(client, (image.name, image.read_bytes())).status_code == 200


def test_one_log_line_per_request(client, log_file):
  """The access log is written by a listener thread: lines land shortly
  after their reply (polled here), exactly one per request."""
  before = log_file.read_text().splitlines()
  client.get("/v1/model")
  client.post("/v1/predict", data={})
  deadline = time.monotonic() + 10
  while True:
    lines = log_file.read_text().splitlines()[len(before):]
    if len(lines) >= 2 or time.monotonic() > deadline:
      break
    time.sleep(0.02)
  time.sleep(0.2)  # nothing more arrives
  lines = log_file.read_text().splitlines()[len(before):]
  assert len(lines) == 2
  assert " GET /v1/model 200 " in lines[0] and lines[0].endswith("ms")
  assert " POST /v1/predict 400 " in lines[1]


def test_not_healthy_before_warm_up(demo):
  from fastapi.testclient import TestClient
  from moeclip_jax.serve import app as app_lib
  from moeclip_jax.serve import engine as engine_lib
  from moeclip_jax.verbs import common
  engine = engine_lib.Engine(common.load_detector(demo["detector"]), 2)
  bare = TestClient(app_lib.create_app(engine))  # no lifespan: no warm-up
  r = bare.get("/healthz")
  assert r.status_code == 503 and r.json()["status"] == "warming_up"
  r = bare.post("/v1/predict", files=sf.files(("a.png", b"x")))
  assert r.status_code == 503 and r.json()["error"]["code"] == "warming_up"


def test_tiled_request_scores_like_predict_tile(demo, tmp_path):
  from moeclip_jax.inference import tiling  # pylint: disable=g-import-not-at-top
  big = tmp_path / "in" / "big.png"
  big.parent.mkdir()
  Image.fromarray(sf.noise(70, 101, seed=3)).save(big)
  ck = demo["detector"]
  row = sf.predict_score(ck, big, tmp_path / "pred", "--class-name", "poly",
                         "--tile", "32,8", "--save-maps")
  want, = [np.load(p) for p in (tmp_path / "pred" / "maps").glob("*.npy")]
  assert want.shape == (70, 101)
  with sf.client_for(ck, tile=tiling.TileSpec(32, 8), max_batch=4) as c:
    assert c.get("/v1/model").json()["tile"] == {"size": 32, "overlap": 8,
                                                 "score": "max"}
    r = _post(c, (big.name, big.read_bytes()), class_name="poly",
              return_map="array")
    assert r.status_code == 200, r.text
    got = r.json()["results"][0]
    assert abs(got["score"] - row["score"]) <= 1e-6
    assert got["threshold"] == row["threshold"]
    assert got["is_anomalous"] == row["is_anomalous"]
    np.testing.assert_allclose(np.asarray(got["map"]), want, atol=1e-5)
    assert got["timings"]["tiles"] == 12  # 3 x 4 tiles of 32 px, stride 24
    assert got["timings"]["batch_size"] == 4
    png = _post(c, (big.name, big.read_bytes()), class_name="poly",
                return_map="png", map_size=50).json()["results"][0]
    assert Image.open(io.BytesIO(base64.b64decode(png["map_png"]))).size \
        == (50, 35)
    stats = c.get("/v1/stats").json()
    assert stats["tiled"] == {"images": 2, "tiles": 24}
    assert stats["batches"] == []  # tiled images bypass the batcher
  d, = moeclip_jax.load_detector(ck).predict(big, class_name="poly",
                                             tile="32,8")
  assert d.score == pytest.approx(row["score"], abs=1e-6)
  np.testing.assert_allclose(d.raw_map, want, atol=1e-5)


# ---- other methods ----------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("serve_methods")
  return {"data": cli_fixtures.methods_dataset(root / "data"),
          "root": root}


def test_anomalymoe_scores_like_predict(world, tmp_path):
  ck = cli_fixtures.tiny_anomalymoe_checkpoint(tmp_path / "amoe")
  for name in ("widget", "gadget"):
    assert cli.main(["calibrate", "--checkpoint", str(ck), "--normal",
                     str(world["data"] / name / "train" / "good"),
                     "--class-name", name, "--fpr", "0.5"]) == 0
  data = world["data"] / "widget"
  image = sorted((data / "test").rglob("*.png"))[0]
  row = sf.predict_score(ck, image, tmp_path / "pred", "--class-name",
                         "widget")
  with sf.client_for(ck, classes=["widget", "gadget", "thing"],
                     max_batch=2) as c:
    r = _post(c, (image.name, image.read_bytes()), class_name="widget")
    got = r.json()["results"][0]
    assert abs(got["score"] - row["score"]) <= 1e-6
    assert got["threshold"] == row["threshold"]
    r = _post(c, (image.name, image.read_bytes()), class_name="thing")
    assert r.status_code == 409  # no calibration entry, no checkpoint stats
    assert r.json()["error"]["code"] == "class_statistics_missing"
    assert _post(c, (image.name, image.read_bytes()),
                 class_name="teapot").status_code == 422


def test_inctrl_prompts_upload_then_scores_like_predict(world, tmp_path):
  ck = cli_fixtures.tiny_inctrl_checkpoint(tmp_path / "inctrl")
  data = world["data"] / "widget"
  prompts = sorted((data / "train" / "good").glob("*.png"))[:2]
  folder = tmp_path / "prompts"
  folder.mkdir()
  for p in prompts:
    shutil.copy(p, folder / p.name)
  image = sorted((data / "test").rglob("*.png"))[0]
  row = sf.predict_score(ck, image, tmp_path / "pred", "--class-name",
                         "widget", "--prompts", str(folder))
  with sf.client_for(ck, max_batch=2) as c:
    good = (image.name, image.read_bytes())
    r = _post(c, good, class_name="widget")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "prompts_missing"
    up = c.post("/v1/prompts", files=sf.files(
        *[(p.name, p.read_bytes()) for p in prompts[:1]]),
                data={"class_name": "widget"})
    assert up.status_code == 400 and up.json()["error"]["code"] == \
        "bad_prompts"  # fewer than K = 2
    up = c.post("/v1/prompts", files=sf.files(
        *[(p.name, p.read_bytes()) for p in prompts]),
                data={"class_name": "widget"})
    assert up.status_code == 200, up.text
    assert up.json()["shots"] == 2 and "widget" in up.json()["classes"]
    got = _post(c, good, class_name="widget").json()["results"][0]
    assert abs(got["score"] - row["score"]) <= 1e-6
  with sf.client_for(ck, {"prompts": [str(folder)]}, max_batch=2) as c:
    assert c.get("/v1/model").json()["not_ready"] == {}  # a --prompts pool
    got = _post(c, good, class_name="widget").json()["results"][0]
    assert abs(got["score"] - row["score"]) <= 1e-6
