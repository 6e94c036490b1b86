"""A tiny fourth method, as CONTRIBUTING.md walks through it ("contrast").

It lives in tests/ so that the package ships three methods; a real method is
the same three files under `moeclip_jax/methods/<name>/` plus one line in
each table of `moeclip_jax/methods/registry.py`.
"""
