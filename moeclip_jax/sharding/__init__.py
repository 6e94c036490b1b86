"""moeclip_jax.sharding."""
