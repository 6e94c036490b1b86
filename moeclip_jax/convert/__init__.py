"""moeclip_jax.convert."""
