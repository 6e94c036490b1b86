"""TFDS builders (array_record files) for every reader, without TensorFlow.

One registered builder, `moeclip_ad`, with one builder config per layout
(`mvtec`, `visa`, ..., `folder`, `elpv`); a custom config name (e.g. one per
generic folder) is allowed. The raw dataset is the builder's `manual_dir`.

The no-TensorFlow route (tensorflow-datasets 4.9.x): TFDS encodes a numpy
image through a TF graph, but passes `bytes` straight through. So images are
decoded and converted here (`images.py`), re-encoded as lossless PNG with
PIL, and handed to `tfds.features.Image` as bytes; files are written as
`array_record`, and `tfds.data_source` / `as_data_source` decodes them back
with PIL. Nothing imports TensorFlow (`tests/test_data_tfds.py` checks
`sys.modules`).

Features per example:
  image: uint8[H, W, 3]; mask: uint8[H, W, 1] in {0, 255} (zeros when the
  record has none); has_mask: bool; label: 0 normal / 1 anomalous;
  class_name, defect_type, dataset, image_path, mask_path: text;
  crop: int32[4] (left, top, right, bottom; zeros = whole image).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Any, Iterator, Optional

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from moeclip_jax.data import checks, images, readers
from moeclip_jax.data import records as rec

NAME = "moeclip_ad"
VERSION = "1.0.0"


class BadInputsError(ValueError):
  """Raised when a build meets bad inputs and skip_bad is off."""

  def __init__(self, report: checks.CheckReport):
    lines = [str(i) for i in report.issues]
    super().__init__(f"{len(lines)} bad input(s):\n" + "\n".join(lines))
    self.report = report


def encode_record(record: rec.Record) -> dict[str, Any]:
  """Decodes, converts and PNG-encodes one record into a TFDS example."""
  image, mask = images.load_pair(
      record.image_path, record.mask_path, record.crop)  # [H, W, 3], [H, W]
  return {
      "image": images.encode_png(image),
      "mask": images.encode_png(mask),
      "has_mask": record.mask_path is not None,
      "label": record.label,
      "class_name": record.class_name,
      "defect_type": record.defect_type,
      "dataset": record.dataset,
      "image_path": record.image_path,
      "mask_path": record.mask_path or "",
      "crop": np.asarray(record.crop or (0, 0, 0, 0), np.int32),
  }


def _features() -> tfds.features.FeaturesDict:
  text = tfds.features.Text
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format="png"),
      "mask": tfds.features.Image(shape=(None, None, 1),
                                  encoding_format="png"),
      "has_mask": tfds.features.Scalar(dtype=np.bool_),
      "label": tfds.features.ClassLabel(names=["normal", "anomalous"]),
      "class_name": text(), "defect_type": text(), "dataset": text(),
      "image_path": text(), "mask_path": text(),
      "crop": tfds.features.Tensor(shape=(4,), dtype=np.int32),
  })


class MoeclipAd(tfds.core.GeneratorBasedBuilder):
  """Anomaly-detection datasets read by `moeclip_jax.data.readers`."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in readers.READERS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point manual_dir (`--root`) at the dataset folder in its own layout; "
      "see docs/data.md.")

  # tfds 4.9.10 resolves the builder's source file through the optional
  # `importlib_resources` backport (absent on Python >= 3.9 installs); giving
  # the path directly avoids that import.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # pytype: disable=invalid-annotation
    return epath.Path(__file__)

  def __init__(self, *, layout: Optional[str] = None,
               reader_options: Optional[dict[str, Any]] = None,
               records: Optional[list[rec.Record]] = None,
               skip_bad: bool = False, num_threads: int = 4, **kwargs):
    """Extra args: the layout (default: the config name), reader options,
    pre-checked records (skips scanning manual_dir), skip_bad, threads."""
    super().__init__(**kwargs)
    self._layout = layout or self.builder_config.name
    self._reader_options = dict(reader_options or {})
    self._records = records
    self._skip_bad = skip_bad
    self._num_threads = num_threads

  def _info(self) -> tfds.core.DatasetInfo:
    # disable_shuffling keeps the reader's order: grain shuffles, and eval
    # wants a stable order.
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=_features(),
        disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _checked_records(self, manual_dir: str) -> list[rec.Record]:
    scan = readers.scan(self._layout, manual_dir, **self._reader_options)
    report = checks.check(scan)
    for note in report.notes:
      logging.info("%s", note)
    if report.issues and not self._skip_bad:
      raise BadInputsError(report)
    return report.kept

  def _split_generators(self, dl_manager):
    records = self._records
    if records is None:
      records = self._checked_records(os.fspath(dl_manager.manual_dir))
    splits = sorted({r.split for r in records})
    self.info.metadata["class_names"] = rec.class_names(records)
    return {s: self._generate_examples([r for r in records if r.split == s])
            for s in splits}

  def _generate_examples(self, records) -> Iterator[tuple[int, dict]]:
    with concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool:
      for i, example in enumerate(pool.map(encode_record, records)):
        yield i, example


def build(
    layout: str, root: Optional[str], data_dir: str, *,
    config_name: Optional[str] = None,
    reader_options: Optional[dict[str, Any]] = None,
    records: Optional[list[rec.Record]] = None, skip_bad: bool = False,
    overwrite: bool = False,
) -> MoeclipAd:
  """Builds one dataset as array_record files under `data_dir`.

  Args:
    layout: a reader name (`readers.READERS`).
    root: the raw dataset folder (the builder's manual_dir).
    data_dir: TFDS data dir to write into.
    config_name: builder config name (default: `layout`).
    reader_options: keyword options for the reader.
    records: pre-checked records to write (skips scanning `root`).
    skip_bad: leave bad inputs out instead of raising BadInputsError.
    overwrite: rebuild when the dataset already exists (default: reuse).

  Returns:
    The prepared builder.
  """
  name = config_name or layout
  config = (name if name in readers.READERS and name == layout
            else tfds.core.BuilderConfig(name=name))
  builder = MoeclipAd(
      layout=layout, reader_options=reader_options, records=records,
      skip_bad=skip_bad, data_dir=data_dir, config=config,
      file_format="array_record")
  manual_dir = root or os.path.join(data_dir, "manual")
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=mode))
  return builder


def dataset_dir(data_dir: str, config_name: str) -> str:
  """The newest version folder of a built dataset."""
  base = os.path.join(data_dir, NAME, config_name)
  if not os.path.isdir(base):
    raise FileNotFoundError(f"{base}: dataset {config_name!r} not built")
  versions = sorted(os.listdir(base),
                    key=lambda v: tuple(int(x) for x in v.split(".")))
  return os.path.join(base, versions[-1])


def load(data_dir: str, config_name: str) -> dict[str, Any]:
  """split -> random-access data source (no TensorFlow)."""
  builder = tfds.builder_from_directory(dataset_dir(data_dir, config_name))
  return dict(builder.as_data_source())


def load_class_names(data_dir: str, config_name: str) -> list[str]:
  """The sorted class names of a built dataset (its class vocabulary)."""
  builder = tfds.builder_from_directory(dataset_dir(data_dir, config_name))
  return list(builder.info.metadata["class_names"])
