"""`calibrate`'s table never cuts numbers on an 80-column terminal."""

import io

from rich.console import Console

from moeclip_jax.verbs import calibrate


def test_calibration_table_keeps_every_digit_at_80_columns():
  entry = dict(num_images=12345, num_anomalous=0, threshold=0.78307092,
               map_threshold=0.92063951, score_min=0.44712345,
               score_max=0.56614744, map_min=-11.669783, map_max=-6.2389187)
  buf = io.StringIO()
  console = Console(width=80, file=buf, color_system=None)
  calibrate._print_table(  # pylint: disable=protected-access
      {"poly": entry, "a_rather_long_class_name": entry}, console)
  text = buf.getvalue()
  assert "…" not in text
  for value in ("0.447..0.566", "-11.7..-6.24", "0.7831", "0.9206",
                "12345"):
    assert text.count(value) == 2, (value, text)
