"""InCTRL: few-shot anomaly detection by in-context residual learning.

Modules:
  model       the Flax module (patch / image residuals, text prior, heads)
  heads       Adapter, TransformerBasicHead, torch-semantics BatchNorm
  prompts     the official text-prompt tables (`get_texts`)
  text        per-class text-feature cache (the text tower runs once per class)
  losses      the official binary focal loss (double sigmoid kept)
  detector    the Detector protocol: load, `set_prompts`, `predict`, verbs
  fewshot     seeded prompt draws, saved prompt sets, mean +- std metrics
  evaluate    per-class evaluation over prompt draws (library)
  method      the generic trainer's seam (`python -m moeclip_jax.train`)
  data        auxiliary-set episodes (resumable sampler), held-out classes
"""
