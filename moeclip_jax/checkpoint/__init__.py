"""moeclip_jax.checkpoint."""
