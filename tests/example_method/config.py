"""Training config of the contrast example (configs/<method>_<size>.py)."""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.method = "contrast"
  c.seed = 0
  c.model = ml_collections.ConfigDict({"image_size": 32})
  c.data = ml_collections.ConfigDict({
      "name": "mvtec", "root": "", "options": {}, "split": "test",
      "holdout_fraction": 0.0, "synthetic_p": 0.0, "augment": "none",
      "eval_batch_size": 4, "worker_count": 0})
  c.optim = ml_collections.ConfigDict({
      "name": "adam", "lr": 5e-2, "b1": 0.9, "b2": 0.999,
      "schedule": "constant"})
  c.batch_size = 8
  c.total_steps = 30
  c.log_every = 10
  c.eval_every = 0
  c.ckpt_every = 30
  c.keep_ckpts = 1
  c.resume = ""
  c.eval = ml_collections.ConfigDict({"protocol": "raw", "map_size": None})
  c.tensorboard = False
  return c
