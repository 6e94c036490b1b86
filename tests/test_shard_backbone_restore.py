"""The converted frozen backbone is restored straight into sharded arrays:
`MoECLIPMethod.load_pretrained` gives orbax a target carrying each param's
NamedSharding (FSDP preset here), values equal the converted checkpoint."""

import jax
import numpy as np
import pytest

import train_fixtures as tf
from moeclip_jax.methods import registry
from moeclip_jax.models import clip
from moeclip_jax.models import clip_config
from moeclip_jax.sharding import partition
from moeclip_jax.sharding import presets
from moeclip_jax.utils import tree as tree_utils
from moeclip_jax.checkpoint import params as ckpt_params


@pytest.fixture(autouse=True)
def _reset_rules():
  yield
  partition.set_rules(None)


def test_backbone_lands_in_fsdp_shards(tmp_path):
  ccfg = clip_config.get_config("tiny-test")
  backbone = clip.init_params(ccfg, jax.random.key(7))
  ckpt = ckpt_params.write_params_checkpoint(
      tmp_path / "tiny_clip", backbone, {"clip": ccfg.to_dict()}, {})
  config = presets.apply(tf.tiny_config(tmp_path), "fsdp")
  config.backbone.checkpoint = str(ckpt)
  mesh = presets.configure(config)
  method = registry.make_method(config)
  params, shardings = partition.sharded_init(method.init_fn,
                                             jax.random.key(0), mesh)
  loaded = method.load_pretrained(params)
  want = dict(tree_utils.flatten_with_names(
      {k: backbone[k] for k in ("img", "txt")}))
  got = dict(tree_utils.flatten_with_names(loaded))
  sh = dict(tree_utils.flatten_with_names(shardings))
  split = 0
  for name, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(value),
                                  err_msg=name)
    assert got[name].sharding == sh[name], name
    split += "fsdp" in str(got[name].sharding.spec)
  assert split > 20  # most backbone leaves are split over fsdp
  kernel = got["img/blocks_0/mlp/c_fc/kernel"]
  assert {s.data.shape for s in kernel.addressable_shards} == {(8, 256)}
  # Adapters keep their fresh initial values.
  np.testing.assert_array_equal(np.asarray(loaded["moe_0"]["lora_b"]),
                                np.asarray(params["moe_0"]["lora_b"]))
