"""Official AnomalyMoE state dict (`model_final.pth`) -> Flax params.

Source layout (CASIA-LMC-Lab/AnomalyMoE `AnomalyMoE.state_dict()`, after
stripping DDP's `module.` prefix):
  encoder.*                       official DINOv2-reg (see hf_dinov2)
  patch_experts.<i>.bottleneck.0.fc{1,2}.*, patch_experts.<i>.decoder.<j>.*
  global_experts.<i>.autoencoder.<n>.*, global_experts.<i>.student.<n>.*
  component_experts.<i>.{encoder,decoder}.<n>.*
  gating_network.gate.{0,2}.*
  mi_estimator.*                  optional (CLUB estimator; train.py does not
                                  save it, the golden fixture does)

Expert groups are stacked first: `patch_experts.<i>.X` for i = 0..E-1
becomes one source tensor `patch_experts.*.X` of shape [E, ...] (every index
must be present, none extra); the mapping table then works on the stacked
tensors with batched hooks. Coverage is checked both ways.

CLI: `python -m moeclip_jax.convert anomalymoe-official --checkpoint FILE
--dst OUT`.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.convert import common, hf_dinov2
from moeclip_jax.methods.anomalymoe import losses
from moeclip_jax.methods.anomalymoe import model as model_lib

GROUPS = ("patch_experts", "global_experts", "component_experts")
_AE_CONVS = (0, 2, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 36, 38)
_STUDENT_CONVS = (0, 3, 6, 8, 10, 12)


# ---- batched hooks (leading expert axis) ------------------------------------
def s_linear(x):
  """[E, out, in] -> [E, in, out]."""
  return x.transpose(0, 2, 1)


def s_conv(x):
  """[E, O, I, kh, kw] -> [E, kh, kw, I, O]."""
  return x.transpose(0, 3, 4, 2, 1)


def s_qkv_kernel(heads):
  return lambda x: x.transpose(0, 2, 1).reshape(
      x.shape[0], x.shape[2], 3, heads, -1)


def s_qkv_bias(heads):
  return lambda x: x.reshape(x.shape[0], 3, heads, -1)


def s_proj_kernel(heads):
  return lambda x: x.transpose(0, 2, 1).reshape(
      x.shape[0], heads, -1, x.shape[1])


def stack_groups(state: Mapping[str, np.ndarray], counts: Mapping[str, int]):
  """Stacks `<group>.<i>.<rest>` into `<group>.*.<rest>` [E, ...]."""
  out, per_rest = {}, {}
  problems = []
  for key, value in state.items():
    match = re.match(r"^(%s)\.(\d+)\.(.+)$" % "|".join(GROUPS), key)
    if not match:
      out[key] = value
      continue
    group, index, rest = match.group(1), int(match.group(2)), match.group(3)
    if index >= counts[group]:
      problems.append(f"unused key {key} (expert {index} >= {counts[group]})")
      continue
    per_rest.setdefault((group, rest), {})[index] = value
  for (group, rest), items in sorted(per_rest.items()):
    missing = [i for i in range(counts[group]) if i not in items]
    if missing:
      problems.append(f"missing key {group}.{missing[0]}.{rest}")
      continue
    out[f"{group}.*.{rest}"] = np.stack([items[i] for i in range(len(items))])
  if problems:
    raise common.ConversionError(
        f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
  return out


def _patch_table(config) -> dict:
  dims, heads = config.dims, config.dims.decoder_heads
  src, dst = "patch_experts.*.", "patch_experts/"
  table = {}
  for name, key in (("bottleneck_fc1", "bottleneck.0.fc1"),
                    ("bottleneck_fc2", "bottleneck.0.fc2")):
    table[f"{dst}{name}/kernel"] = (f"{src}{key}.weight", s_linear)
    table[f"{dst}{name}/bias"] = (f"{src}{key}.bias", common.identity)
  for j in range(dims.decoder_depth):
    s, d = f"{src}decoder.{j}.", f"{dst}decoder_{j}/"
    for norm in ("norm1", "norm2"):
      table[f"{d}{norm}/scale"] = (f"{s}{norm}.weight", common.identity)
      table[f"{d}{norm}/bias"] = (f"{s}{norm}.bias", common.identity)
    table[f"{d}qkv/kernel"] = (f"{s}attn.qkv.weight", s_qkv_kernel(heads))
    table[f"{d}qkv/bias"] = (f"{s}attn.qkv.bias", s_qkv_bias(heads))
    table[f"{d}proj/kernel"] = (f"{s}attn.proj.weight", s_proj_kernel(heads))
    table[f"{d}proj/bias"] = (f"{s}attn.proj.bias", common.identity)
    for fc in ("fc1", "fc2"):
      table[f"{d}{fc}/kernel"] = (f"{s}mlp.{fc}.weight", s_linear)
      table[f"{d}{fc}/bias"] = (f"{s}mlp.{fc}.bias", common.identity)
  return table


def _seq_table(src, dst, prefix, indices, hook) -> dict:
  table = {}
  for n in indices:
    table[f"{dst}{prefix}_{n}/kernel"] = (f"{src}{n}.weight", hook)
    table[f"{dst}{prefix}_{n}/bias"] = (f"{src}{n}.bias", common.identity)
  return table


def expert_table(config) -> dict:
  """{flax path: (stacked/plain source key, hook)} for all trainable parts."""
  table = _patch_table(config)
  g = "global_experts.*."
  table.update(_seq_table(g + "autoencoder.", "global_experts/", "ae",
                          _AE_CONVS, s_conv))
  table.update(_seq_table(g + "student.", "global_experts/", "student",
                          _STUDENT_CONVS, s_conv))
  c = "component_experts.*."
  table.update(_seq_table(c + "encoder.", "component_experts/", "enc",
                          (0, 2, 4), s_linear))
  table.update(_seq_table(c + "decoder.", "component_experts/", "dec",
                          (1, 4, 7), s_linear))
  table.update(_seq_table("gating_network.gate.", "gate/", "gate", (0, 2),
                          common.linear))
  return table


def estimator_table() -> dict:
  """CLUB estimator (`mi_estimator.*`) -> `losses.MIEstimator` params."""
  table = {
      "normalizer/scale": ("mi_estimator.normalizer.weight", common.identity),
      "normalizer/bias": ("mi_estimator.normalizer.bias", common.identity),
  }
  for est in ("patch_estimator", "global_estimator"):
    for net in ("p_mu", "p_logvar"):
      table.update(_seq_table(f"mi_estimator.{est}.{net}.", f"{est}/", net,
                              (0, 2), common.linear))
  return table


def _target_shapes(config) -> dict:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  s = config.image_size
  shapes = jax.eval_shape(
      model_lib.AnomalyMoE(config).init, jax.random.key(0),
      jnp.zeros((1, s, s, 3)), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, 1, s, s)))
  flat = common.flatten(nn.unbox(shapes)["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


def strip_module_prefix(state: Mapping) -> dict:
  return {k[len("module."):] if k.startswith("module.") else k: v
          for k, v in state.items()}


def convert_state(state: Mapping[str, np.ndarray],
                  config: model_lib.AnomalyMoEConfig | None = None,
                  source_name: str = "checkpoint", partial: bool = False):
  """Official state dict -> (params, estimator_params or None, config).

  Args:
    state: numpy state dict (a `module.` prefix is stripped).
    config: model config; default: the official one with the backbone
      inferred from the `encoder.*` shapes.
    source_name: named in error messages.
    partial: convert only the modules present in `state` (tests load a few
      modules at a time); every given key must still be used.
  """
  state = strip_module_prefix(state)
  enc = {k: v for k, v in state.items() if k.startswith("encoder.")}
  enc_params = None
  if enc or not partial:
    enc_params, backbone = hf_dinov2.params_from_official(
        enc, prefix="encoder.", source_name=source_name)
    if config is None:
      config = model_lib.AnomalyMoEConfig(backbone=backbone)
  if config is None:
    config = model_lib.AnomalyMoEConfig()
  counts = {"patch_experts": config.num_patch_experts,
            "global_experts": config.num_global_experts,
            "component_experts": config.num_component_experts}
  rest = {k: v for k, v in state.items()
          if not k.startswith(("encoder.", "mi_estimator."))}
  stacked = stack_groups(rest, counts)
  shapes = {k: v for k, v in _target_shapes(config).items()
            if not k.startswith("encoder/")}
  table = expert_table(config)
  if partial:
    table = {k: v for k, v in table.items() if v[0] in stacked}
    shapes = {k: v for k, v in shapes.items() if k in table}
  params = common.apply_mapping(
      table, stacked, shapes, source_name=source_name)
  if enc_params is not None:
    params["encoder"] = enc_params
  est = {k: v for k, v in state.items() if k.startswith("mi_estimator.")}
  est_params = None
  if est:
    est_params = common.apply_mapping(
        estimator_table(), est, losses.estimator_shapes(config.dims.width),
        source_name=source_name)
  return params, est_params, config


def convert_anomalymoe_official(checkpoint, dst, overwrite: bool = False):
  """`model_final.pth` -> params checkpoint at `dst` (method anomalymoe)."""
  state = hf_dinov2.load_torch_state(checkpoint)
  params, est_params, config = convert_state(state, source_name=str(checkpoint))
  tree = {"model": params}
  if est_params is not None:
    tree["mi_estimator"] = est_params
  meta = {"method": "anomalymoe", "source": str(checkpoint),
          "source_format": "anomalymoe-official",
          "sha256": common.sha256_file(checkpoint)}
  return ckpt_params.write_params_checkpoint(
      dst, tree, {"method": "anomalymoe", **config.to_dict()}, meta,
      overwrite=overwrite)


def _run(args):
  # the convert CLI prints "wrote <out>"
  return convert_anomalymoe_official(args.checkpoint, args.dst,
                                     args.overwrite)


def register(subparsers) -> None:
  """Adds the `anomalymoe-official` verb to the convert CLI."""
  p = subparsers.add_parser(
      "anomalymoe-official",
      help="official AnomalyMoE model_final.pth -> params checkpoint")
  p.add_argument("--checkpoint", required=True, help="model_final.pth")
  p.add_argument("--dst", required=True, help="output checkpoint folder")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=_run)
