"""The default-dtype policy (models/precision.py): "auto" resolves by
backend (bfloat16 on TPU / GPU, float32 on CPU, as measured), explicit
dtypes always win, every method's config and checkpoint load go through it,
and `--dtype` reaches every detector."""

import jax
import jax.numpy as jnp
import pytest

import cli_fixtures
import train_fixtures as tf
from moeclip_jax.methods import registry
from moeclip_jax.methods.anomalymoe import method as anomalymoe_method
from moeclip_jax.methods.moeclip import config as moeclip_config
from moeclip_jax.models import clip_config, dinov2, layers, precision
from moeclip_jax.verbs import common
from moeclip_jax.verbs import predict


@pytest.mark.parametrize("backend,want", [
    ("tpu", "bfloat16"), ("gpu", "bfloat16"), ("cuda", "bfloat16"),
    ("rocm", "bfloat16"), ("cpu", "float32"), ("metal", "float32")])
def test_auto_resolves_by_backend(backend, want):
  assert precision.resolve("auto", backend) == want
  assert precision.resolve(None, backend) == want


@pytest.mark.parametrize("dtype", precision.CONCRETE)
def test_explicit_dtype_wins_on_every_backend(dtype):
  for backend in ("tpu", "gpu", "cpu"):
    assert precision.resolve(dtype, backend) == dtype


def test_unknown_dtype_is_refused_by_every_config():
  with pytest.raises(ValueError, match="dtype"):
    precision.resolve("bf16")
  with pytest.raises(ValueError, match="dtype"):
    clip_config.get_config("tiny-test", dtype="bf16")
  with pytest.raises(ValueError, match="dtype"):
    moeclip_config.MoECLIPConfig(dtype="bf16")
  with pytest.raises(ValueError, match="dtype"):
    dinov2.DinoV2Config(dtype="bf16")


def test_defaults_are_auto_and_float32_on_this_cpu():
  assert jax.default_backend() == "cpu"
  ccfg = clip_config.get_config("tiny-test")
  assert ccfg.dtype == "auto"
  assert layers.dtypes(ccfg) == (jnp.float32, jnp.float32)
  assert layers.dtypes(ccfg.replace(dtype="bfloat16"))[0] == jnp.bfloat16
  assert moeclip_config.MoECLIPConfig().dtype == "auto"
  assert dinov2.DinoV2Config().compute_dtype == jnp.float32
  assert dinov2.DinoV2Config(dtype="bfloat16").compute_dtype == jnp.bfloat16


def test_training_configs_follow_the_policy_and_overrides_win():
  config = tf.load_config("moeclip_tiny.py")
  assert config.backbone.dtype == "auto"
  assert registry.make_method(config).clip_config.dtype == "auto"
  config.backbone.dtype = "bfloat16"
  assert registry.make_method(config).clip_config.dtype == "bfloat16"
  amoe = tf.load_config("anomalymoe_dinov2_b14.py")
  amoe.backbone.variant = "tiny-test"
  assert anomalymoe_method.model_config(amoe).backbone.dtype == "auto"
  amoe.backbone.dtype = "bfloat16"
  assert anomalymoe_method.model_config(amoe).backbone.dtype == "bfloat16"


def test_tiny_clip_runs_in_the_resolved_dtype():
  from moeclip_jax.models import clip  # pylint: disable=g-import-not-at-top
  pixels = jnp.zeros((1, 32, 32, 3))
  for dtype, want in (("auto", jnp.float32), ("bfloat16", jnp.bfloat16)):
    ccfg = clip_config.get_config("tiny-test", dtype=dtype)
    params = clip.init_params(ccfg, jax.random.key(0))
    out = clip.CLIP(ccfg).apply({"params": params}, pixels,
                                method=clip.CLIP.encode_image)
    assert out["tokens"].dtype == want


def test_dtype_flag_is_one_flag_of_every_method():
  parser = predict.build_parser()
  action = {a.dest: a for a in parser._actions}["dtype"]  # pylint: disable=protected-access
  assert tuple(action.choices) == precision.CHOICES
  args = parser.parse_args(["x.png", "--checkpoint", "ckpt", "--out", "o",
                            "--dtype", "bfloat16"])
  assert common.method_options(args)["dtype"] == "bfloat16"
  assert registry.cli_options("predict")[0][0] == registry.EVERY_METHOD
  for cls in registry.DETECTORS.values():
    cls.check_options("ckpt", {"dtype": "bfloat16"})  # no error


def test_dtype_reaches_inctrl_and_anomalymoe_detectors(tmp_path):
  inctrl = cli_fixtures.tiny_inctrl_checkpoint(tmp_path / "inctrl")
  det = common.load_detector(inctrl, {"dtype": "bfloat16"})
  assert det.model.clip_config.dtype == "bfloat16"
  assert common.load_detector(inctrl).model.clip_config.dtype == "auto"
  amoe = cli_fixtures.tiny_anomalymoe_checkpoint(tmp_path / "amoe")
  det = common.load_detector(amoe, {"dtype": "bfloat16"})
  assert det.config.backbone.dtype == "bfloat16"
  assert common.load_detector(amoe).config.backbone.dtype == "auto"
