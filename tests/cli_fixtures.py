"""One reduced demo run per test session, shared by the CLI / demo tests.

The demo trains a tiny MoECLIP (converted random CLIP) on synthetic
defects over ELPV mono cells; its detector and datasets then serve every
verb test, so the session trains only once.
"""

from __future__ import annotations

import pathlib

_CACHE: dict = {}

REDUCED = dict(steps=3, images=8, cell_size=48, image_size=32,
               batch_size=8, baseline=False)


def demo_result(tmp_path_factory) -> dict:
  """The reduced demo's `run` result (cached for the session)."""
  if "demo" not in _CACHE:
    from moeclip_jax.verbs import demo  # pylint: disable=g-import-not-at-top
    out = tmp_path_factory.mktemp("cli") / "moeclip_demo"
    opts = demo.DemoOptions(out=str(out), **REDUCED)
    result = demo.run(opts)
    result["out"] = pathlib.Path(out)
    result["opts"] = opts
    _CACHE["demo"] = result
  return _CACHE["demo"]


def target_root(result) -> pathlib.Path:
  return result["out"] / "data" / "target"


def target_test_images(result) -> list[pathlib.Path]:
  from moeclip_jax.verbs import demo  # pylint: disable=g-import-not-at-top
  folder = target_root(result) / demo.TARGET_CLASS / "test"
  return sorted(p for p in folder.rglob("*.png"))
