"""The converter table: every module exposes `register(subparsers)`, which
adds its `moeclip-jax convert <name>` subcommand (flags + `func(args)`)."""

from moeclip_jax.convert import (
  anomalymoe_official,
  clip_cli,
  hf_dinov2,
  inctrl_official,
  moeclip_official,
)

CONVERTERS = (clip_cli, moeclip_official, inctrl_official, hf_dinov2,
              anomalymoe_official)
