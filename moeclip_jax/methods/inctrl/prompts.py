"""InCTRL text prompts (the official `get_texts`), kept as data.

A class name yields 7 normal states x 22 templates = 154 normal prompts and
4 anomaly states x 22 templates = 88 anomaly prompts, ordered state-major
(all templates of the first state, then the next state). The ten CIFAR-10
class names and "animal" are a special case with one prompt per side.
Underscores in class names are read as spaces, as the official forward does
before calling `get_texts`.
"""

from __future__ import annotations

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

ANOMALY_STATES = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

# The WinCLIP-style template list, in the official order.
TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of a {}.",
    "a dark photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.",
    "a photo of the {} for anomaly detection.",
)

# Semantic (one-vs-all) class names that get a single prompt per side.
SEMANTIC_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
    "animal",
)
SEMANTIC_NORMAL = "a photo of {} for anomaly detection."
SEMANTIC_ANOMALY = "a photo without {} for anomaly detection."


def get_texts(class_name: str) -> tuple[list[str], list[str]]:
  """Normal and anomaly prompt sentences for one class.

  Args:
    class_name: the dataset's class (folder) name, e.g. "bottle" or
      "metal_nut"; underscores become spaces.

  Returns:
    (normal_texts, anomaly_texts): 154 and 88 sentences, or 1 and 1 for the
    CIFAR-10 names and "animal".
  """
  name = class_name.replace("_", " ")
  if name in SEMANTIC_CLASSES:
    return [SEMANTIC_NORMAL.format(name)], [SEMANTIC_ANOMALY.format(name)]
  normal = [t.format(s.format(name)) for s in NORMAL_STATES for t in TEMPLATES]
  anomaly = [
      t.format(s.format(name)) for s in ANOMALY_STATES for t in TEMPLATES
  ]
  return normal, anomaly
