"""gs:// workdirs (local staging + checkpoints on the remote), per-process
data-iterator states, and the compilation-cache switch."""

import jax
import pytest

from moeclip_jax.checkpoint import manager
from moeclip_jax.checkpoint import paths
from moeclip_jax.sharding import multihost
from moeclip_jax.sharding import presets


def test_remote_workdir_is_staged_locally(tmp_path, monkeypatch):
  monkeypatch.setenv(paths.STAGING_ENV, str(tmp_path / "staging"))
  local = paths.local_workdir("gs://bucket/runs/a/")
  assert local == tmp_path / "staging" / "gs" / "bucket" / "runs" / "a"
  assert str(paths.checkpoint_root(local)) == "gs://bucket/runs/a"
  assert str(paths.checkpoint_root("gs://bucket/x")) == "gs://bucket/x"
  plain = tmp_path / "plain"
  assert paths.local_workdir(plain) == plain
  assert str(paths.checkpoint_root(plain)) == str(plain.absolute())


def test_sync_up_copies_all_but_checkpoints(tmp_path, monkeypatch):
  local, remote = tmp_path / "local", tmp_path / "remote"
  (local / "ckpt" / "3").mkdir(parents=True)
  (local / "ckpt" / "3" / "x").write_text("big")
  (local / "eval" / "step_3").mkdir(parents=True)
  (local / "eval" / "step_3" / "metrics.json").write_text("{}")
  (local / "train.log").write_text("log")
  monkeypatch.setitem(paths._REMOTE_OF, str(local.absolute()), str(remote))  # pylint: disable=protected-access
  assert paths.sync_up(local) == 2
  assert (remote / "train.log").read_text() == "log"
  assert (remote / "eval" / "step_3" / "metrics.json").is_file()
  assert not (remote / "ckpt").exists()
  assert paths.sync_up(tmp_path / "not_staged") == 0


def test_manager_uses_checkpoint_root(tmp_path):
  mgr = manager.make_manager(tmp_path / "w", async_save=False)
  assert str(mgr.directory) == str((tmp_path / "w" / "ckpt").absolute())


def test_data_iterator_state_per_process():
  assert multihost.gather_strings("abc") == ["abc"]
  assert multihost.per_process('{"i": 3}') == '{"i": 3}'
  assert multihost.this_process('{"i": 3}') == '{"i": 3}'
  assert multihost.this_process(['{"i": 3}']) == '{"i": 3}'
  with pytest.raises(ValueError, match="2 processes"):
    multihost.this_process(["a", "b"])


def test_compilation_cache_switch(tmp_path, monkeypatch):
  monkeypatch.delenv(presets.COMPILE_CACHE_ENV, raising=False)
  before = jax.config.jax_compilation_cache_dir
  assert not presets.enable_compilation_cache("")
  try:
    assert presets.enable_compilation_cache(str(tmp_path / "cache"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
