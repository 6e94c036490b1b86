"""moeclip_jax.eval."""
