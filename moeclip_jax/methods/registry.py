"""Explicit method registry: name -> trainer method class."""

from __future__ import annotations

from typing import Any


def _moeclip(config):
  from moeclip_jax.methods.moeclip import method  # pylint: disable=g-import-not-at-top
  return method.MoECLIPMethod(config)


def _inctrl(config):
  from moeclip_jax.methods.inctrl import method  # pylint: disable=g-import-not-at-top
  return method.InCTRLMethod(config)


def _anomalymoe(config):
  from moeclip_jax.methods.anomalymoe import method  # pylint: disable=g-import-not-at-top
  return method.AnomalyMoEMethod(config)


METHODS = {
    "moeclip": _moeclip,
    "inctrl": _inctrl,
    "anomalymoe": _anomalymoe,
}


def make_method(config: Any):
  name = config.method
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
  return METHODS[name](config)


def load_detector(checkpoint_dir, **kwargs):
  """Detector for a checkpoint folder; the method comes from its config.json."""
  import json  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(checkpoint_dir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing (not a detector checkpoint?)")
  method = json.loads(path.read_text()).get("method")
  if method == "moeclip":
    from moeclip_jax.methods.moeclip import detector  # pylint: disable=g-import-not-at-top
    return detector.MoECLIPDetector.load(checkpoint_dir, **kwargs)
  if method == "anomalymoe":
    from moeclip_jax.methods.anomalymoe import detector  # pylint: disable=g-import-not-at-top
    return detector.AnomalyMoEDetector.load(checkpoint_dir, **kwargs)
  if method == "inctrl":
    from moeclip_jax.methods.inctrl import detector  # pylint: disable=g-import-not-at-top
    return detector.InCTRLDetector.load(checkpoint_dir, **kwargs)
  raise ValueError(f"{path}: method {method!r} has no detector")
