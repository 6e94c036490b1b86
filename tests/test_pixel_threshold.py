"""A pixel threshold set from normal images alone meets its target FPR."""

import numpy as np
import pytest

from moeclip_jax.inference import calibration


@pytest.mark.parametrize("pixel_fpr", [0.01, 0.05])
def test_normals_only_pixel_threshold_meets_fpr_on_held_out(pixel_fpr):
  rng = np.random.default_rng(0)
  maps = rng.gamma(2.0, 1.5, (80, 32, 32)).astype(np.float32)
  scores = rng.normal(0, 1, 80).astype(np.float32)
  fit, held = slice(0, 40), slice(40, 80)
  entry = calibration.calibrate_class(maps[fit], scores[fit], None,
                                      "quantile", 0.2, pixel_fpr=pixel_fpr)
  assert (calibration.normalise_maps(maps[fit], entry)
          >= entry["map_threshold"]).mean() <= pixel_fpr  # in sample: exact
  rate = (calibration.normalise_maps(maps[held], entry)
          >= entry["map_threshold"]).mean()
  assert abs(rate - pixel_fpr) < 0.25 * pixel_fpr
  # The image threshold keeps its own rate (--fpr), unaffected.
  default = calibration.calibrate_class(maps[fit], scores[fit], None,
                                        "quantile", 0.2)
  assert entry["threshold"] == default["threshold"]
  assert default["map_threshold"] < entry["map_threshold"]
