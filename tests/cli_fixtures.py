"""One reduced demo run per test session, shared by the CLI / demo tests.

The demo trains a tiny MoECLIP (converted random CLIP) on synthetic
defects over ELPV mono cells; its detector and datasets then serve every
verb test, so the session trains only once.
"""

from __future__ import annotations

import pathlib

from moeclip_jax.checkpoint import params as ckpt_params

_CACHE: dict = {}

REDUCED = dict(steps=3, images=8, train_images=8, cell_size=48,
               image_size=32, batch_size=8, baseline=False)


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


def uncalibrated_copy(result, dst) -> pathlib.Path:
  """A private copy of the demo detector without calibration.json (tests
  that write one)."""
  import shutil  # pylint: disable=g-import-not-at-top
  from moeclip_jax.inference import calibration  # pylint: disable=g-import-not-at-top
  dst = pathlib.Path(dst)
  shutil.copytree(result["detector"], dst)
  (dst / calibration.FILE).unlink(missing_ok=True)
  return dst


def target_root(result) -> pathlib.Path:
  return result["out"] / "data" / "target"


def target_test_images(result) -> list[pathlib.Path]:
  from moeclip_jax.verbs import demo  # pylint: disable=g-import-not-at-top
  folder = target_root(result) / demo.TARGET_CLASS / "test"
  return sorted(p for p in folder.rglob("*.png"))


# ---- tiny InCTRL / AnomalyMoE checkpoints (tests/test_cli_verbs_methods.py)

METHOD_CLASSES = ("widget", "gadget")


def methods_dataset(root) -> pathlib.Path:
  """A tiny synthetic MVTec tree: 2 classes x (4 train, 2 good, 2 bad)."""
  from moeclip_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  synthetic.write_mvtec_tree(str(root), METHOD_CLASSES, n_train=4, n_good=2,
                             n_bad=2, size=(48, 48), seed=3)
  return root


def tiny_inctrl_checkpoint(dst, shots: int = 2) -> pathlib.Path:
  """Random tiny-test CLIP InCTRL (32 px, blocks 1-3) in the converter's
  layout (config.json with `shots`, params, tokenizer)."""
  import jax  # pylint: disable=g-import-not-at-top
  from moeclip_jax.methods.inctrl import model as inctrl_model  # pylint: disable=g-import-not-at-top
  from moeclip_jax.models import clip_config  # pylint: disable=g-import-not-at-top
  config = clip_config.get_config("tiny-test", image_size=32)
  model = inctrl_model.InCTRL(clip_config=config, feature_layers=(1, 2, 3))
  variables = inctrl_model.init_variables(model, jax.random.key(0))
  cfg = {"method": "inctrl", "clip": config.to_dict(), "shots": shots,
         "inctrl": {"feature_layers": [1, 2, 3], "adapter_reduction": 4,
                    "text_scale": 100.0}}
  return ckpt_params.write_checkpoint_with_tokenizer(
      dst, variables, cfg, {"source_format": "test"}, overwrite=True)


def micro_anomalymoe_config():
  """tiny_config with 2 backbone / decoder blocks (392 px, fast)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from moeclip_jax.methods.anomalymoe import model as model_lib  # pylint: disable=g-import-not-at-top
  base = model_lib.tiny_config()
  return model_lib.tiny_config(
      backbone=dataclasses.replace(base.backbone, depth=2),
      dims=dataclasses.replace(base.dims, decoder_depth=2),
      target_layers=(0, 1), train_fusion=((0,), (1,)), test_fusion=((0, 1),))


def _random_like(shapes, seed: int):
  """Random parameters for a shape tree (no compiled init: ~50 s on CPU):
  norm scales 1, biases 0, other weights N(0, 0.05)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def make(path, x):
    name = jax.tree_util.keystr(path)
    if "scale" in name and "layer_scale" not in name and len(x.shape) == 1:
      return np.ones(x.shape, x.dtype)
    if "bias" in name:
      return np.zeros(x.shape, x.dtype)
    return (0.05 * rng.standard_normal(x.shape)).astype(x.dtype)
  return jax.tree_util.tree_map_with_path(make, shapes)


def tiny_anomalymoe_checkpoint(dst) -> pathlib.Path:
  """Random micro AnomalyMoE (config.json + params {"model"}), no classes."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from moeclip_jax.methods.anomalymoe import model as model_lib  # pylint: disable=g-import-not-at-top
  config = micro_anomalymoe_config()
  module = model_lib.AnomalyMoE(config)
  s = config.image_size
  shapes = jax.eval_shape(lambda k: nn.unbox(module.init(
      k, jnp.zeros((1, s, s, 3)), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, 1, s, s)))["params"]), jax.random.key(0))
  params = {"model": _random_like(shapes, 0)}
  return ckpt_params.write_params_checkpoint(
      dst, params, {"method": "anomalymoe", **config.to_dict()},
      {"source_format": "test"}, overwrite=True)


def moeclip_checkpoint(dst, ccfg, cfg, seed: int = 1) -> pathlib.Path:
  """Random MoECLIP of the given (CLIPConfig, MoECLIPConfig) in the
  trainer's export layout (config.json, params, tokenizer), no training."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from moeclip_jax.methods.moeclip import model as model_lib  # pylint: disable=g-import-not-at-top
  shapes = nn.unbox(model_lib.abstract_params(ccfg, cfg))
  config = {"method": "moeclip", "clip": ccfg.to_dict(),
            "moeclip": cfg.to_dict(), "domain": "industrial"}
  return ckpt_params.write_checkpoint_with_tokenizer(
      dst, _random_like(shapes, seed), config, {"source_format": "test"},
      overwrite=True)


def tiny_moeclip_checkpoint(dst) -> pathlib.Path:
  """Random tiny-test CLIP MoECLIP (32 px, MoE on blocks 0-3)."""
  from moeclip_jax.methods.moeclip import config as config_lib  # pylint: disable=g-import-not-at-top
  from moeclip_jax.models import clip_config  # pylint: disable=g-import-not-at-top
  ccfg = clip_config.get_config("tiny-test", image_size=32)
  layers = (0, 1, 2, 3)
  return moeclip_checkpoint(dst, ccfg, config_lib.MoECLIPConfig(
      moe_layers=layers, feature_layers=layers, proj_dim=32,
      text_width=ccfg.text.width))
