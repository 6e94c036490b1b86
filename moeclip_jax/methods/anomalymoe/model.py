"""AnomalyMoE: frozen DINOv2-reg backbone, gate, 6 + 6 + 6 dense experts.

Dimension legend: B batch, L tokens (1 + R registers + N patches), N = g*g
patches, D width, E experts of one group, nb decoder blocks, G fusion
groups, K component slots per image (padded; `component_valid` marks real
ones), H/W pixels.

Layouts: images are NHWC; token arrays [B, L, D]; maps NHWC [B, g, g, D]
(the official code is channels-first; tests transpose).

Forward (official `AnomalyMoE.forward`):
  1. backbone on `images`: outputs of the target blocks (2..9) and of the
     last block (CLS = routing token, before the final norm);
  2. gate -> top-k over all experts jointly -> softmax over the k logits,
     scattered into `routing_weights` [B, E_total];
  3. every patch expert reconstructs the mean of the target layers (all L
     tokens); decoder outputs are reversed and fused per group;
  4. every global expert maps `images_ae` to (ae, student) [B, g, g, D];
  5. component features: masks -> nearest to g -> 5x5 max-pool dilation ->
     masked mean of the all-layer mean map; every component expert
     reconstructs them.
All experts run densely; routing weights only weight losses and maps.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moeclip_jax.methods.anomalymoe import experts, ops
from moeclip_jax.models import dinov2

TRAIN_FUSION = ((0, 1, 2, 3), (4, 5, 6, 7))
TEST_FUSION = ((0, 1, 2, 3, 4, 5, 6, 7),)


@dataclasses.dataclass(frozen=True)
class AnomalyMoEConfig:
  """Model hyper-parameters (official values by default)."""

  backbone: dinov2.DinoV2Config = dinov2.DinoV2Config(
      interpolation="official")
  dims: experts.ExpertDims = experts.ExpertDims()
  image_size: int = 392
  num_patch_experts: int = 6
  num_global_experts: int = 6
  num_component_experts: int = 6
  top_k: int = 3
  target_layers: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9)
  train_fusion: tuple[tuple[int, ...], ...] = TRAIN_FUSION
  test_fusion: tuple[tuple[int, ...], ...] = TEST_FUSION
  dilation: int = 5
  # "vmap": experts of a group run batched (expert-parallel sharding);
  # "scan": one after the other, same parameters (less memory on CPU).
  expert_loop: str = "vmap"

  @property
  def grid(self) -> int:
    return self.image_size // self.backbone.patch_size

  @property
  def num_experts(self) -> int:
    return (self.num_patch_experts + self.num_global_experts
            + self.num_component_experts)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "AnomalyMoEConfig":
    d = dict(d)
    d["backbone"] = dinov2.DinoV2Config(**d["backbone"])
    dims = {k: tuple(v) if isinstance(v, list) else v
            for k, v in d["dims"].items()}
    d["dims"] = experts.ExpertDims(**dims)
    for key in ("target_layers",):
      d[key] = tuple(d[key])
    for key in ("train_fusion", "test_fusion"):
      d[key] = tuple(tuple(g) for g in d[key])
    return cls(**d)


def route(logits: jax.Array, top_k: int):
  """Top-k over all experts, softmax over the k selected logits.

  Args:
    logits: float[B, E_total].
    top_k: k.

  Returns:
    dict with topk_idx int32[B, k] (descending), topk_weights float[B, k],
    routing_weights float[B, E_total] (zeros off the top-k), expert_mask
    float[B, E_total] (one-hot sum, no gradient).
  """
  top_logits, top_idx = jax.lax.top_k(logits, top_k)  # [B, k]
  top_w = jax.nn.softmax(top_logits, axis=-1)  # [B, k]
  onehot = jax.nn.one_hot(top_idx, logits.shape[-1], dtype=logits.dtype)
  weights = jnp.einsum("bk,bke->be", top_w, onehot)  # [B, E_total]
  mask = jax.lax.stop_gradient(jnp.sum(onehot, axis=1))  # [B, E_total]
  return {"topk_idx": top_idx, "topk_weights": top_w,
          "routing_weights": weights, "expert_mask": mask}


def tokens_to_map(tokens: jax.Array, num_prefix: int, grid: int):
  """[..., L, D] -> [..., g, g, D], dropping CLS and registers."""
  patches = tokens[..., num_prefix:, :]
  return patches.reshape(*patches.shape[:-2], grid, grid, patches.shape[-1])


def process_component_masks(masks: jax.Array, grid: int, dilation: int):
  """masks: [B, K, H, W] {0,1} -> float[B, K, g, g] (nearest + max-pool)."""
  small = ops.resize_nearest_maps(masks.astype(jnp.float32), (grid, grid))
  if dilation > 1:
    small = ops.max_pool_same(small, dilation)
  return small


def component_features(source_map: jax.Array, masks_grid: jax.Array):
  """Masked means: map [B, g, g, D], masks [B, K, g, g] -> [B, K, D]."""
  summed = jnp.einsum("bhwd,bkhw->bkd", source_map, masks_grid)
  area = jnp.sum(masks_grid, axis=(-2, -1))[..., None] + 1e-8  # [B, K, 1]
  return summed / area


class AnomalyMoE(nn.Module):
  """The full model; see the module docstring for the stages."""

  config: AnomalyMoEConfig

  def setup(self):
    cfg = self.config
    dims = cfg.dims
    self.encoder = dinov2.DinoV2(cfg.backbone)
    self.gate = experts.Gate(cfg.num_experts, dims.gate_hidden)
    loop = cfg.expert_loop
    self.patch_experts = experts.stacked(
        experts.PatchExpert, cfg.num_patch_experts, 2, loop)(dims)
    self.global_experts = experts.stacked(
        experts.GlobalExpert, cfg.num_global_experts, 2, loop)(dims, cfg.grid)
    self.component_experts = experts.stacked(
        experts.ComponentExpert, cfg.num_component_experts, 2, loop)(dims)

  def _run(self, group, *args):
    return experts.run_stacked(group, self.config.expert_loop, *args)

  @property
  def _num_prefix(self) -> int:
    return 1 + self.config.backbone.num_registers

  def encode(self, images: jax.Array):
    """Frozen backbone. Returns (target stack [n, B, L, D], last [B, L, D])."""
    layers = self.config.target_layers
    _, aux = self.encoder(images, layers=tuple(layers))
    stack = jnp.stack([aux["hidden"][i] for i in layers])
    return (jax.lax.stop_gradient(stack),
            jax.lax.stop_gradient(aux["final_block"]))

  def patch_branch(self, en_stack, fusion, deterministic=True):
    """en_stack [n, B, L, D] -> dict of fused maps and decoder outputs."""
    grid, prefix = self.config.grid, self._num_prefix
    fused = jnp.mean(en_stack, axis=0)  # [B, L, D]
    de_blocks = self._run(self.patch_experts, fused, deterministic)
    de_blocks = nn.with_logical_constraint(
        de_blocks, ("act_exp", None, "act_batch", "act_len", "act_embed"))
    de_rev = de_blocks[:, ::-1]
    de_groups = jnp.stack(
        [experts.group_mean(d, fusion) for d in de_rev])  # [E, G, B, L, D]
    en_groups = experts.group_mean(en_stack, fusion)  # [G, B, L, D]
    return {
        "fused_tokens": fused,
        "decoder_blocks": de_blocks,
        "en_maps": tokens_to_map(en_groups, prefix, grid),  # [G, B, g, g, D]
        "de_maps": tokens_to_map(de_groups, prefix, grid),  # [E, G, B, ...]
    }

  def global_branch(self, images_ae, deterministic=True):
    ae, student = self._run(self.global_experts, images_ae, deterministic)
    return {"ae_out": ae, "student_out": student}  # [E, B, g, g, D] each

  def component_branch(self, source_map, masks, deterministic=True):
    """source_map [B, g, g, D], masks [B, K, H, W] -> features and recon."""
    cfg = self.config
    masks_grid = process_component_masks(masks, cfg.grid, cfg.dilation)
    feats = component_features(source_map, masks_grid)  # [B, K, D]
    recon = self._run(self.component_experts, feats, deterministic)
    return {"component_masks_grid": masks_grid,
            "component_features": feats, "component_recon": recon}

  def ae_target(self, images_ae, fusion):
    """Mean of the last fusion group's encoder blocks on images_ae."""
    stack, _ = self.encode(images_ae)
    group = jnp.mean(stack[jnp.asarray(fusion[-1])], axis=0)  # [B, L, D]
    return tokens_to_map(group, self._num_prefix, self.config.grid)

  def __call__(self, images, images_ae, component_masks,
               component_valid=None, *, train: bool = False,
               deterministic: bool = True, with_ae_target: bool = False):
    """Runs every stage.

    Args:
      images: float[B, S, S, 3], normalised (`image_st`).
      images_ae: float[B, S, S, 3], the colour-jittered view.
      component_masks: {0,1}[B, K, S, S] (K >= 1; padded slots all zero).
      component_valid: bool[B, K]; defaults to "mask non-empty".
      train: use the train fusion groups (else the test fusion).
      deterministic: disable dropout.
      with_ae_target: also run the backbone on images_ae (training target).

    Returns:
      dict of named intermediates (see the module docstring).
    """
    cfg = self.config
    fusion = cfg.train_fusion if train else cfg.test_fusion
    en_stack, last = self.encode(images)
    out = {"routing_cls_token": last[:, 0]}
    out["gate_logits"] = self.gate(last[:, 0])  # [B, E_total]
    out.update(route(out["gate_logits"], cfg.top_k))
    out.update(self.patch_branch(en_stack, fusion, deterministic))
    out.update(self.global_branch(images_ae, deterministic))
    source = tokens_to_map(out["fused_tokens"], self._num_prefix, cfg.grid)
    out.update(self.component_branch(source, component_masks, deterministic))
    if component_valid is None:
      component_valid = jnp.any(component_masks > 0, axis=(-2, -1))
    out["component_valid"] = component_valid.astype(bool)
    out["component_masks"] = component_masks
    if with_ae_target:
      out["ae_target"] = self.ae_target(images_ae, fusion)
    return out


def param_counts(config: AnomalyMoEConfig) -> dict[str, int]:
  """Parameter counts per module (per single expert), via `eval_shape`."""
  s = config.image_size
  shapes = jax.eval_shape(
      AnomalyMoE(config).init, jax.random.key(0),
      jnp.zeros((1, s, s, 3)), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, 1, s, s)))
  params = nn.unbox(shapes)["params"]

  def count(tree):
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))

  return {
      "encoder": count(params["encoder"]),
      "patch_expert": count(params["patch_experts"])
                      // config.num_patch_experts,
      "global_expert": count(params["global_experts"])
                       // config.num_global_experts,
      "component_expert": count(params["component_experts"])
                          // config.num_component_experts,
      "gate": count(params["gate"]),
      "trainable": count({k: v for k, v in params.items() if k != "encoder"}),
  }


def tiny_config(**overrides) -> AnomalyMoEConfig:
  """A small configuration for tests (392-px input, narrow widths)."""
  backbone = dinov2.DinoV2Config(
      width=32, depth=4, num_heads=4, pos_grid=4, interpolation="official")
  dims = experts.ExpertDims(
      width=32, decoder_depth=4, decoder_heads=4, ae_channels=(4, 8, 8),
      student_channels=(8, 16), component_dims=(16, 8, 8), gate_hidden=16)
  base = dict(backbone=backbone, dims=dims, target_layers=(0, 1, 2, 3),
              train_fusion=((0, 1), (2, 3)), test_fusion=((0, 1, 2, 3),))
  base.update(overrides)
  return AnomalyMoEConfig(**base)


def split_groups(config: AnomalyMoEConfig, x: jax.Array) -> Sequence[jax.Array]:
  """[..., E_total] -> (patch, global, component) slices."""
  p, g = config.num_patch_experts, config.num_global_experts
  return x[..., :p], x[..., p:p + g], x[..., p + g:]
