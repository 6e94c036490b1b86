"""The method tables: name -> trainer method class, name -> detector class.

Adding a method is one line in each table (plus its package under
methods/ and a config); the trainer, the verbs and `load_detector` look
methods up here and nowhere else.
"""

from __future__ import annotations

from typing import Any, Sequence

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.methods import base
from moeclip_jax.methods.anomalymoe import detector as anomalymoe_detector
from moeclip_jax.methods.anomalymoe import method as anomalymoe_method
from moeclip_jax.methods.inctrl import detector as inctrl_detector
from moeclip_jax.methods.inctrl import method as inctrl_method
from moeclip_jax.methods.moeclip import detector as moeclip_detector
from moeclip_jax.methods.moeclip import method as moeclip_method

METHODS = {
    "moeclip": moeclip_method.MoECLIPMethod,
    "inctrl": inctrl_method.InCTRLMethod,
    "anomalymoe": anomalymoe_method.AnomalyMoEMethod,
}

DETECTORS = {
    "moeclip": moeclip_detector.MoECLIPDetector,
    "inctrl": inctrl_detector.InCTRLDetector,
    "anomalymoe": anomalymoe_detector.AnomalyMoEDetector,
}


def make_method(config: Any):
  name = config.method
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
  return METHODS[name](config)


def detector_class(checkpoint_dir) -> type:
  """The detector class of a checkpoint folder (config.json's "method")."""
  method = ckpt_params.checkpoint_method(checkpoint_dir)
  if method not in DETECTORS:
    raise ValueError(f"{checkpoint_dir}: method {method!r} has no detector "
                     f"(known: {sorted(DETECTORS)})")
  return DETECTORS[method]


def load_detector(checkpoint_dir, **method_options):
  """Detector for a checkpoint folder; the method comes from its config.json.

  `method_options` are the method's own options (`cli_options()` dests,
  e.g. shots=4, minmax="test"); a given option the method does not use is
  an error that names it.
  """
  return detector_class(checkpoint_dir).load(checkpoint_dir, **method_options)


EVERY_METHOD = "every method"


def cli_options(verb: str) -> list[tuple[str, Sequence[base.Option]]]:
  """[(method, its options for `verb`)], each flag once (first method);
  the flags every detector takes come first, as (EVERY_METHOD, ...)."""
  common = [o for o in base.COMMON_OPTIONS if verb in o.verbs]
  seen = {o.flag for o in common}
  out = [(EVERY_METHOD, common)] if common else []
  for method, cls in DETECTORS.items():
    options = [o for o in cls.cli_options()
               if verb in o.verbs and o.flag not in seen]
    seen.update(o.flag for o in options)
    if options:
      out.append((method, options))
  return out


def option_dests() -> set[str]:
  return ({o.dest for cls in DETECTORS.values() for o in cls.cli_options()}
          | set(base.COMMON_DESTS))
