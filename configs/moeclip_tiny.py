r"""A tiny MoECLIP (random tiny CLIP) for tests, smoke runs and the demo.

  python -m moeclip_jax.train --config configs/moeclip_tiny.py \
      --workdir runs/tiny --config.data.name=mvtec --config.data.root=DIR

Numbers mean nothing beyond "the loop learns": 200 steps on synthetic defects
raise held-out pixel AUROC well above step 0 (tests/test_moeclip_train.py).
"""

import importlib.util
import pathlib


def _base():
  path = pathlib.Path(__file__).with_name("moeclip_vitl14_336.py")
  spec = importlib.util.spec_from_file_location("moeclip_vitl14_336", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _base().get_config(arg)
  c.seed = 0
  c.backbone.variant = "tiny-test"
  c.backbone.image_size = 32
  c.model.moe_layers = (1, 3)
  c.model.feature_layers = (1, 3)
  c.model.proj_dim = 32
  c.data.name = "mvtec"
  c.data.holdout_fraction = 0.25
  c.data.worker_count = 0
  c.data.eval_batch_size = 4
  c.optim.lr = 1e-3
  c.optim.schedule = "constant"
  c.batch_size = 8
  c.total_steps = 20
  c.log_every = 5
  c.eval_every = 0
  c.ckpt_every = 10
  c.eval.map_size = None
  c.loggers = ""
  return c
