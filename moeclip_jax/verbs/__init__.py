"""Implementations of the `moeclip-jax` verbs (eval, predict, calibrate,
export, demo) and their shared helpers (overlays, logging, image lists).

The `python -m moeclip_jax.<verb>` modules are thin shims over these.
"""
