"""`train` on a damaged backbone checkpoint: exit 2, one `error:` line
naming the folder and the parameter, no traceback, no step run."""

import os
import pathlib
import re
import subprocess
import sys

import train_fixtures as tf
from moeclip_jax.convert import clip_cli
from moeclip_jax.tools import tiny_hf_clip


def test_train_on_a_truncated_backbone_blob(tmp_path):
  hf = tiny_hf_clip.write_tiny_hf_clip(tmp_path / "hf", seed=0, image_size=32)
  clip = pathlib.Path(clip_cli.convert_hf_clip(hf, tmp_path / "clip",
                                               overwrite=True))
  blobs = [p for p in (clip / "params").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  blob = max(blobs, key=lambda p: p.stat().st_size)
  os.truncate(blob, blob.stat().st_size // 2)
  data = tf.synthetic_mvtec(tmp_path / "data", classes=("a",), n_good=2,
                            n_bad=2, size=40)
  done = subprocess.run(
      [sys.executable, "-m", "moeclip_jax.train", "--config",
       str(tf.REPO / "configs" / "moeclip_tiny.py"), "--workdir",
       str(tmp_path / "w"), f"--config.data.root={data}",
       f"--config.backbone.checkpoint={clip}", "--config.total_steps=2"],
      capture_output=True, text=True, timeout=600, check=False,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, done.stderr[-3000:]
  assert re.match(rf"error: {re.escape(str(clip))}: checkpoint is damaged "
                  r"or incomplete \((txt|vis)\.\S+: .+\)$", errors[0]), errors[0]
  assert "done: step" not in done.stdout
