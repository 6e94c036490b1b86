"""Class name -> prompt noun, per method, from the `class_names.json` table."""

from __future__ import annotations

import functools
import importlib.resources
import json


@functools.cache
def table() -> dict:
  text = importlib.resources.files("moeclip_jax.data").joinpath(
      "class_names.json").read_text(encoding="utf-8")
  return json.loads(text)


def prompt_noun(method: str, dataset: str, class_name: str) -> str:
  """The noun a method's prompts use for `class_name` of `dataset`.

  Looks in table()[method][dataset], then table()["generic"][dataset]; any
  dataset key holding the class matches when `dataset` is not a key. InCTRL
  keeps folder names as they are.
  """
  data = table()
  if method not in data:
    raise KeyError(f"no prompt-noun table for method {method!r}")
  if method == "inctrl":
    return class_name
  for section in (data[method], data["generic"]):
    if class_name in section.get(dataset, {}):
      return section[dataset][class_name]
    for per_dataset in section.values():
      if class_name in per_dataset and dataset not in section:
        return per_dataset[class_name]
  return class_name.replace("_", " ")
