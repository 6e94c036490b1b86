"""InCTRL: few-shot anomaly detection by in-context residual learning.

Modules:
  model       the Flax module (patch / image residuals, text prior, heads)
  heads       Adapter, TransformerBasicHead, torch-semantics BatchNorm
  prompts     the official text-prompt tables (`get_texts`)
  text        per-class text-feature cache (the text tower runs once per class)
  losses      the official binary focal loss (double sigmoid kept)
  detector    load a converted checkpoint, `set_prompts`, `predict`
  fewshot     seeded prompt draws, saved prompt sets, mean +- std metrics
  evaluate    `python -m moeclip_jax.methods.inctrl.evaluate` (prompt draws)
  method      the generic trainer's seam (`python -m moeclip_jax.train`)
  data        auxiliary-set episodes (resumable sampler), held-out classes
  train_main  deprecated alias of `python -m moeclip_jax.train`
"""
