"""`metrics`: notes under the table for substituted / undefined cells, a
--help that documents PRED.npz, and errors that name the file once."""

import numpy as np
import pytest

from moeclip_jax.verbs import metrics as metrics_cli


def _pred(tmp_path):
  """Class `a` has both labels; class `b` only normal images."""
  rng = np.random.default_rng(0)
  masks = (rng.random((8, 8, 8)) > 0.7).astype(np.uint8)
  labels = np.array([0, 1, 0, 1, 0, 0, 0, 0])
  masks[labels == 0] = 0
  path = tmp_path / "pred.npz"
  np.savez(path, image_scores=rng.random(8), image_labels=labels,
           anomaly_maps=rng.random((8, 8, 8)), masks=masks,
           class_names=np.array(["a"] * 4 + ["b"] * 4))
  return path


def _notes(out: str) -> list[str]:
  return [ln for ln in out.splitlines() if ln.startswith("note:")]


def _run(capsys, *args):
  rc = metrics_cli.main([str(a) for a in args])
  return rc, capsys.readouterr()


def test_released_protocol_names_the_substituted_classes(tmp_path, capsys,
                                                         monkeypatch):
  monkeypatch.setenv("COLUMNS", "400")
  rc, out = _run(capsys, "--pred", _pred(tmp_path), "--out", tmp_path / "o",
                 "--protocol", "moeclip-released")
  assert rc == 0
  notes = _notes(out.out)
  subs = [n for n in notes if "one label only" in n]
  assert len(subs) == 1, out.out
  assert "b:" in subs[0] and "image auroc 0.00" in subs[0], subs[0]
  assert "a" not in subs[0].split(":")[1].split()  # only class b


def test_raw_protocol_says_why_cells_are_dashes(tmp_path, capsys,
                                                monkeypatch):
  monkeypatch.setenv("COLUMNS", "400")
  rc, out = _run(capsys, "--pred", _pred(tmp_path), "--out", tmp_path / "o",
                 "--protocol", "raw")
  assert rc == 0
  notes = _notes(out.out)
  assert len(notes) == 1, out.out
  assert "'-' = undefined" in notes[0]
  assert "b: no anomalous image (image)" in notes[0], notes[0]


def test_help_lists_the_keys_an_example_and_the_real_usage(capsys):
  with pytest.raises(SystemExit) as exc:
    metrics_cli.main(["--help"])
  assert exc.value.code == 0
  text = capsys.readouterr().out
  assert text.startswith("usage: moeclip-jax metrics")
  assert "python -m moeclip_jax.metrics" not in text
  for key in metrics_cli.PRED_KEYS:
    assert key in text, key
  assert "examples:" in text and "moeclip-jax metrics --pred" in text


@pytest.mark.parametrize("case", ["missing_key", "bad_shape"])
def test_errors_name_the_file_once(tmp_path, capsys, case):
  path = tmp_path / "m_key.npz"
  if case == "missing_key":
    np.savez(path, image_scores=np.zeros(3))
  else:
    np.savez(path, image_scores=np.zeros(3), image_labels=np.zeros(4))
  rc, out = _run(capsys, "--pred", path, "--out", tmp_path / "o")
  assert rc == 2
  lines = out.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ")
  assert lines[0].count("m_key.npz") == 1, lines[0]
