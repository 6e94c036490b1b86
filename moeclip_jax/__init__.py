"""moeclip_jax: generalist visual anomaly detection in JAX/Flax.

Public surface (kept small on purpose):
  * `moeclip_jax.checkpoint.backbones.load_clip(checkpoint_dir)` -> (module,
    params, config, tokenizer) for a converted CLIP checkpoint;
  * `moeclip_jax.load_detector(checkpoint_dir)` -> a detector with `.predict`.
"""

__version__ = "0.1.0"


def load_detector(checkpoint_dir, **kwargs):
  """Loads a detector (MoECLIP, InCTRL or AnomalyMoE) from a checkpoint dir.

  The method is read from the checkpoint's metadata. Imported lazily so that
  `import moeclip_jax` stays cheap.
  """
  from moeclip_jax.methods import registry  # pylint: disable=g-import-not-at-top

  return registry.load_detector(checkpoint_dir, **kwargs)
