"""InCTRL behind the verbs: K normal prompts per class, prompt draws.

Dataset runs (`eval`, `calibrate --dataset`): every class's prompts are
drawn from its normal TRAIN images (or `--prompts`, see prompt_sets.py),
encoded once per draw, and every test image is scored against its own
class's prompts and text prior inside one jitted `predict_fn` (mixed-class
batches, the trainer's seam). `--prompt-draws N` gives N runs (draw d:
seed + d). Loose images (`predict`, `calibrate --normal`) use
`detector.set_prompts` + `detector.predict` with the prompts of
`--prompts`. image_score = (s_h + s_p) / 2, anomaly_map = M_p (bilinear).
"""

from __future__ import annotations

import logging
import pathlib

import jax.numpy as jnp
import numpy as np

from moeclip_jax.data import records as rec
from moeclip_jax.data import transforms
from moeclip_jax.methods.inctrl import fewshot
from moeclip_jax.methods.inctrl import method as inctrl_method
from moeclip_jax.verbs import adapters
from moeclip_jax.verbs import common
from moeclip_jax.verbs import prompt_sets

log = logging.getLogger("moeclip_jax.verbs")
DEFAULT_SHOTS = 2
PROMPT_SET_FILE = "prompt_set.npz"


def default_shots(checkpoint_dir) -> int:
  """K from the checkpoint's config.json (`shots`), else 2."""
  cfg = adapters.checkpoint_config(checkpoint_dir)
  shots = cfg.get("shots") or cfg.get("inctrl", {}).get("shots")
  return int(shots or DEFAULT_SHOTS)


class InCTRLAdapter(adapters.Adapter):
  """InCTRL few-shot detector (see the module docstring)."""

  name = "inctrl"
  accepted = frozenset({"shots", "prompt_seed", "prompts", "prompt_draws",
                        "save_prompts"})

  def __init__(self, detector, checkpoint_dir, options=None):
    super().__init__(detector, checkpoint_dir, options)
    o = self.options
    self.image_size = detector.image_size
    s = self.image_size
    self.preprocess = {"preset": "inctrl", "size": s, "crop": s}
    self.shots = o.shots or default_shots(checkpoint_dir)
    if self.shots < 1:
      raise ValueError(f"--shots must be >= 1, got {self.shots}")
    self.seed = o.prompt_seed or 0
    self.source = prompt_sets.PromptSource(o.prompts, self.preprocess,
                                           self.shots, self.seed)
    self.source.check_shots(explicit=o.shots is not None)
    self.num_draws = o.prompt_draws or 1
    if self.num_draws < 1:
      raise ValueError(f"--prompt-draws must be >= 1, got {self.num_draws}")
    if self.num_draws > 1 and self.source.only_fixed_sets:
      raise ValueError("--prompt-draws > 1 with saved prompt sets only: a "
                       "saved set is one fixed draw")
    self.prompt_set = None  # the loose-image path's set (begin_predict)
    # predict_fn depends on the detector only: one jit for every adapter
    # (draw, shots) of it (train.evaluator.make_predict).
    self.jit_key = ("inctrl", detector)

  def run_facts(self) -> dict:
    return {"method": "inctrl", "shots": self.shots,
            "prompt_seed": self.seed, "prompt_draws": self.num_draws,
            "producer_smoothing": "none (M_p bilinear from the patch grid)"}

  # ---- the trainer seam ----
  def predict_fn(self, variables, batch, context):
    """Query features -> scores against each image's class prompts.

    context: prompts {layer_tokens [C, K, L, T, W], pooled [C, K, D]},
    text [C, 2, D].
    """
    return inctrl_method.predict_with_class_prompts(
        self.detector.model, variables, batch["image"], batch["class_id"],
        context)

  def _normalise(self, images_uint8) -> np.ndarray:
    cfg = transforms.get_preprocess(self.preprocess)
    return np.stack([transforms.normalize(im, cfg) for im in images_uint8])

  def _context(self, sets: dict[str, fewshot.PromptSet], class_names):
    feats = [self.detector.encode(self._normalise(sets[c].images))
             for c in class_names]
    prompts = {k: jnp.asarray(np.stack([f[k] for f in feats]))
               for k in feats[0]}  # [C, K, ...]
    text = jnp.asarray(np.stack([np.asarray(self.detector.text_cache(c))
                                 for c in class_names]))  # [C, 2, D]
    return {"prompts": prompts, "text": text}

  def _save(self, ps: fewshot.PromptSet) -> None:
    folder = pathlib.Path(self.options.save_prompts)
    folder.mkdir(parents=True, exist_ok=True)
    fewshot.save_prompt_set(
        folder / f"{ps.class_name}_k{ps.shots}_seed{ps.seed}.npz", ps)

  def eval_runs(self, records, all_records, batch_size=8, map_size=None):
    from moeclip_jax.verbs import inference  # pylint: disable=g-import-not-at-top
    names = rec.class_names(records)
    for d in range(self.num_draws):
      sets = {c: self.source.draw(c, d, all_records) for c in names}
      if self.options.save_prompts:
        for ps in sets.values():
          self._save(ps)
      pred = inference.run_method(
          self, self.detector.variables, self._context(sets, names), records,
          self.preprocess, batch_size, map_size,
          desc=f"eval draw {d}" if self.num_draws > 1 else "eval")
      pred["prompt_sets"] = sets
      yield pred, {"draw": d, "seed": self.seed + d,
                   "prompts": {c: prompt_sets.describe(ps)
                               for c, ps in sets.items()}}

  # ---- loose images ----
  def begin_predict(self, paths, class_name, entry, out=None) -> dict:
    """Draws the prompts from --prompts and hands them to the detector."""
    del paths
    if not self.source.given:
      raise ValueError("InCTRL needs --prompts (K normal images of the "
                       "class, a folder of them, or a saved prompt set "
                       ".npz) to score images")
    ps = self.source.draw(class_name, 0)
    self.detector.set_prompts(self._normalise(ps.images))
    self.prompt_set = ps
    facts = prompt_sets.describe(ps)
    stored = (entry or {}).get("prompts")
    if stored and stored.get("fingerprint") != facts["fingerprint"]:
      log.warning("predict: calibration of %r used other prompt images "
                  "(%s); its threshold may not fit these prompts",
                  class_name, stored.get("paths"))
      common.console().print("warning: the calibration used other prompt "
                             "images; its threshold may not fit")
    if out is not None:
      fewshot.save_prompt_set(pathlib.Path(out) / PROMPT_SET_FILE, ps)
    return {"prompts": facts}

  def predict_images(self, images, class_name, batch_size=8, entry=None,
                     desc="predict"):
    del entry
    if self.prompt_set is None:
      self.begin_predict(None, class_name, None)
    s = self.image_size
    maps_, scores = [], []
    starts = adapters.chunks(len(images), batch_size)
    for start in common.progress(starts, desc, total=len(starts)):
      x = adapters.prepare_images(images[start:start + batch_size],
                                  self.preprocess)
      out = self.detector.predict(adapters.pad_batch(x, batch_size),
                                  class_name)
      maps_.append(np.asarray(out["anomaly_map"])[:len(x)])
      scores.append(np.asarray(out["image_score"])[:len(x)])
    if not maps_:
      return np.zeros((0, s, s), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(maps_), np.concatenate(scores)

  def calibration_extras(self, pred, cid):
    if pred is not None and "prompt_sets" in pred:
      name = pred["class_names"][cid]
      return {"prompts": prompt_sets.describe(pred["prompt_sets"][name])}
    if self.prompt_set is not None:
      return {"prompts": prompt_sets.describe(self.prompt_set)}
    return {}
