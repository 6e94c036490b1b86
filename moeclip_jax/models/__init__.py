"""moeclip_jax.models."""
