"""moeclip_jax.utils."""
