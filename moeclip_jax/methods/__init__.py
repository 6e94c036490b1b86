"""moeclip_jax.methods."""
