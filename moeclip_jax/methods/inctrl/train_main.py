r"""`python -m moeclip_jax.methods.inctrl.train_main --config C.py --workdir D`.

Trains InCTRL's heads on an auxiliary dataset as the official `main.py` does
(see configs/inctrl_vitb16p_240.py) and writes `D/checkpoint_{epoch}` after
every epoch, each loadable with `methods.inctrl.detector.load` and
evaluable with `python -m moeclip_jax.methods.inctrl.evaluate`.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from moeclip_jax.convert import common
from moeclip_jax.data import images
from moeclip_jax.data import readers
from moeclip_jax.data import transforms
from moeclip_jax.methods.inctrl import detector
from moeclip_jax.methods.inctrl import model as inctrl_model
from moeclip_jax.methods.inctrl import text as inctrl_text
from moeclip_jax.methods.inctrl import train as inctrl_train
from moeclip_jax.models import clip
from moeclip_jax.models import clip_config
from moeclip_jax.models import tokenize


def build_model(config):
  """(InCTRL, variables): towers from `backbone.checkpoint` or random."""
  ckpt = config.backbone.checkpoint
  meta = json.loads((pathlib.Path(ckpt) / "config.json").read_text()) \
      if ckpt else {}
  if meta.get("method") == "inctrl":
    _, variables = detector.load_variables(ckpt)
    ccfg = clip_config.CLIPConfig.from_dict(meta["clip"])
  elif ckpt:
    _, backbone, ccfg, _ = clip.load(ckpt)
  else:
    ccfg = clip_config.get_config(config.backbone.variant,
                                  image_size=config.backbone.image_size)
  m = config.model
  model = inctrl_model.InCTRL(
      clip_config=ccfg, feature_layers=tuple(m.feature_layers),
      adapter_reduction=m.adapter_reduction, text_scale=m.text_scale,
      official_batch_layout=m.official_batch_layout)
  if meta.get("method") != "inctrl":
    variables = inctrl_model.init_variables(
        model, jax.random.key(config.seed), shots=config.shots)
    if ckpt:
      variables["params"].update(
          {k: v for k, v in backbone.items() if k in ("img", "txt")})
  return model, variables


def load_auxiliary(config, image_size: int):
  """Official aux split: normals (any split) and test anomalies, by class.

  Returns:
    (normals, anomalies): class -> uint8[N, S, S, 3] resized images.
  """
  cfg = transforms.get_preprocess({"preset": "inctrl", "size": image_size,
                                   "crop": image_size})
  records = readers.scan(config.data.name, config.data.root or None,
                         **config.data.options.to_dict()).records
  rng = np.random.default_rng(config.seed)
  pools = ({}, {})
  for label, pool in enumerate(pools):
    for name in sorted({r.class_name for r in records}):
      paths = sorted(r.image_path for r in records
                     if r.class_name == name and r.label == label
                     and (label == 0 or r.split == "test"))
      cap = config.data.max_per_class
      if cap and len(paths) > cap:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), cap, False))]
      if paths:
        pool[name] = np.stack([transforms.resize_image(
            images.load_image(p), cfg) for p in paths])
  missing = sorted(set(pools[1]) - set(pools[0]))
  if missing:
    raise ValueError(f"classes without normal images for prompts: {missing}")
  return pools


def train(config, workdir: str) -> list[dict]:
  """Runs the whole recipe; returns the metric history."""
  model, variables = build_model(config)
  size = model.clip_config.vision.image_size
  normals, anomalies = load_auxiliary(config, size)
  sampler = inctrl_train.EpisodeSampler(
      normals, anomalies, shots=config.shots,
      per_label=config.data.per_label, seed=config.seed)
  cache = inctrl_text.TextFeatureCache.from_model(
      model, variables["params"], tokenize.load_tokenizer())
  pre = transforms.get_preprocess({"preset": "inctrl", "size": size,
                                   "crop": size})
  prepare = lambda x: transforms.normalize(x, pre)
  o = config.optim
  tx = inctrl_train.make_optimizer(o.lr, o.b1, o.b2, o.eps, o.weight_decay)
  cfg_json = {"method": "inctrl", "clip": model.clip_config.to_dict(),
              "inctrl": {"feature_layers": list(model.feature_layers),
                         "adapter_reduction": model.adapter_reduction,
                         "text_scale": model.text_scale}}

  def save(epoch, current):
    common.write_params_checkpoint(
        pathlib.Path(workdir) / f"checkpoint_{epoch}", current, cfg_json,
        {"source_format": "inctrl-train", "epoch": epoch,
         "config": config.to_json()},
        tokenizer_dir=tokenize.packaged_tokenizer_dir(), overwrite=True)

  _, history = inctrl_train.fit(
      model, variables, sampler, cache,
      steps=config.epochs * config.steps_per_epoch, tx=tx,
      log_every=config.log_every, prepare=prepare, on_epoch=save,
      steps_per_epoch=config.steps_per_epoch)
  return history


def main(argv=None) -> int:
  config_flag = config_flags.DEFINE_config_file("config", None, "config file",
                                                lock_config=True)
  workdir_flag = flags.DEFINE_string("workdir", None, "output folder")

  def _main(_):
    if config_flag.value is None or workdir_flag.value is None:
      raise app.UsageError("--config and --workdir are required")
    train(config_flag.value, workdir_flag.value)

  app.run(_main, argv=["inctrl_train"] + list(
      sys.argv[1:] if argv is None else argv))
  return 0


if __name__ == "__main__":
  main()
