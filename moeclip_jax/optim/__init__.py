"""moeclip_jax.optim."""
