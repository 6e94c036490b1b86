"""The inference side (`methods.base.Detector`) of the contrast example."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.inference import runner
from moeclip_jax.methods import base
from tests.example_method import method as method_lib


class ContrastDetector(base.DetectorBase):
  """A loaded contrast checkpoint: no class inputs, no statistics."""

  method = method_lib.NAME

  def __init__(self, params, image_size: int, checkpoint_dir):
    self.params = params
    self.image_size = image_size
    self.preprocess = {"preset": "moeclip", "size": image_size}
    self.checkpoint_dir = pathlib.Path(checkpoint_dir)
    self._forward = jax.jit(method_lib.forward)

  @classmethod
  def load(cls, checkpoint_dir, **options):
    cls.check_options(checkpoint_dir, options)  # it takes no options
    config = ckpt_params.read_config(checkpoint_dir)
    params = ckpt_params.read_params_checkpoint(checkpoint_dir)
    return cls(params, int(config["image_size"]), checkpoint_dir)

  def predict_fn(self, params, batch, context):
    del context
    amap, score = method_lib.forward(params, batch["image"])
    return {"anomaly_map": amap, "image_score": score}

  def predict_pixels(self, pixels, class_name, entry):
    del class_name, entry
    amap, score = self._forward(self.params, jnp.asarray(pixels))
    return {"anomaly_map": np.asarray(amap), "image_score": np.asarray(score)}

  def eval_runs(self, records, all_records, batch_size=8, map_size=None):
    del all_records
    yield runner.run_method(self, self.params, {}, records, self.preprocess,
                            batch_size, map_size), {}
