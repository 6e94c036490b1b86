"""moeclip_jax.train."""
