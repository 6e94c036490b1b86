"""Helpers of the serve tests: a TestClient on a warmed-up app, image
bytes, the `predict` verb's score of a file, a free localhost port."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import socket
import time

import numpy as np
from PIL import Image

from moeclip_jax import cli


@contextlib.contextmanager
def client_for(checkpoint, options=None, classes=None, tile=None,
               **config):
  """A started TestClient (warm-up done) on `checkpoint` (`tile`: a
  tiling.TileSpec, as `serve --tile`)."""
  from fastapi.testclient import TestClient  # pylint: disable=g-import-not-at-top
  from moeclip_jax.serve import app as app_lib  # pylint: disable=g-import-not-at-top
  from moeclip_jax.serve import engine as engine_lib  # pylint: disable=g-import-not-at-top
  from moeclip_jax.verbs import common  # pylint: disable=g-import-not-at-top
  detector = common.load_detector(checkpoint, options)
  cfg = app_lib.ServeConfig(**config)
  engine = engine_lib.Engine(detector, cfg.max_batch, classes, tile)
  app = app_lib.create_app(engine, cfg)
  with TestClient(app) as client:
    wait_healthy(client.get)
    yield client


def wait_healthy(get, timeout_s: float = 300.0, proc=None) -> None:
  """Polls /healthz until ok (`proc`: the server process, if any)."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if proc is not None and proc.poll() is not None:
      raise RuntimeError(f"server exited {proc.returncode}")
    try:
      r = get("/healthz")
    except Exception:  # pylint: disable=broad-except
      time.sleep(0.3)  # not listening yet
      continue
    if r.status_code == 200 and r.json() == {"status": "ok"}:
      return
    if r.json().get("status") == "error":
      raise RuntimeError(f"warm-up failed: {r.json()}")
    time.sleep(0.2)
  raise TimeoutError("server never became healthy")


def png_bytes(array: np.ndarray, **kwargs) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG", **kwargs)
  return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def files(*named):
  """[(name, bytes)] -> httpx multipart `files` in the field `images`."""
  return [("images", (name, data, "application/octet-stream"))
          for name, data in named]


def predict_score(checkpoint, image: pathlib.Path, out, *flags) -> dict:
  """The `moeclip-jax predict` row of one file."""
  assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint),
                   "--out", str(out), *flags]) == 0
  return json.loads((pathlib.Path(out) / "predictions.jsonl").read_text())


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
