"""Test set-up shared by every test module.

* 8 fake CPU devices (set before jax is imported anywhere), so sharding code
  really runs on a mesh.
* float32 matmuls at full precision, so parity tolerances hold on any backend.
* `shared_dir`: the sibling `../shared` folder (golden fixtures, tokenizer),
  found through one setting, `MOECLIP_JAX_SHARED`. Absent -> skip with a clear
  reason; absent while `CI=true` -> fail.
"""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # pylint: disable=g-import-not-at-top

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

jax.config.update("jax_default_matmul_precision", "highest")
# One compilation cache per test session (shared by xdist workers): tests
# that train or evaluate the same tiny programs compile them once.
_CACHE = os.environ.setdefault(
    "MOECLIP_JAX_TEST_CACHE",
    os.path.join(os.environ.get("TMPDIR", "/tmp"),
                 f"moeclip_jax_jit_cache_{os.getppid()}"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_ENV = "MOECLIP_JAX_SHARED"


def shared_path() -> pathlib.Path:
  """The shared folder: $MOECLIP_JAX_SHARED, else ../shared beside the repo."""
  return pathlib.Path(
      os.environ.get(SHARED_ENV, str(REPO_ROOT.parent / "shared"))
  ).resolve()


def require_shared(*parts: str) -> pathlib.Path:
  """Returns shared/<parts>; skips (or fails under CI=true) when absent."""
  path = shared_path().joinpath(*parts)
  if not path.exists():
    msg = (
        f"{path} not found: set {SHARED_ENV} to the shared folder "
        "(golden fixtures, tokenizer) to run this test"
    )
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(msg + " (CI=true: shared/ must be present)")
    pytest.skip(msg)
  return path


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  return require_shared()


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
  return require_shared("golden")
