"""MoECLIP prompt tables: official nouns, sentence layout, fallback."""

import logging

import pytest

from moeclip_jax.methods.moeclip import prompts

SPEC_DATASETS = (
    "MVTec", "VisA", "BTAD", "RSDD", "DTD-Synthetic", "Brain", "headct",
    "Liver", "Retina", "Endo", "Colon_clinicDB", "Colon_colonDB",
    "Colon_cvc300", "Colon_Kvasir")


def test_every_spec_dataset_has_nouns_and_a_domain():
  assert sorted(prompts.datasets()) == sorted(SPEC_DATASETS)
  for ds in SPEC_DATASETS:
    assert prompts.domain_of(ds) in ("industrial", "medical")
    for cls in prompts.class_names(ds):
      assert prompts.real_name(cls, ds, strict=True)


@pytest.mark.parametrize("dataset, cls, noun", [
    ("MVTec", "bottle", "dark bottle"),
    ("mvtec", "capsule", "black asd orange capsule"),
    ("VisA", "macaroni1", "orange macaroni"),
    ("VisA", "pcb1", "dual ultrasonic distance sensor pcb module"),
    ("BTAD", "02", "vertical fabric lines in warm, dusty pink and beige tones"),
    ("Brain", "Brain", "scan"),
    ("Endo", "Endo", "polyp"),
    ("Colon_cvc300", "CVC-300", "colon endoscopy image"),
    ("DTD-Synthetic", "Woven_001", "Woven"),
    (None, "pcb3", "infrared sensor pcb module"),
])
def test_official_nouns(dataset, cls, noun):
  assert prompts.real_name(cls, dataset) == noun


def test_sentences_match_the_golden_layout():
  sentences, abnormal = prompts.class_sentences("bottle", "MVTec")
  assert len(sentences) == 16 and abnormal.tolist() == [0] * 6 + [1] * 10
  assert sentences[:3] == ["dark bottle.", "a photo of dark bottle.",
                           "a dark bottle."]
  assert sentences[-1] == "a photo of a dark bottle with damage."


def test_unknown_class_falls_back_or_raises(caplog):
  with caplog.at_level(logging.WARNING):
    assert prompts.real_name("gizmo", "MVTec") == "object"
  assert "gizmo" in caplog.text
  assert prompts.real_name("object") == "object"
  with pytest.raises(KeyError, match="gizmo"):
    prompts.real_name("gizmo", "MVTec", strict=True)
  with pytest.raises(KeyError, match="unknown dataset"):
    prompts.real_name("bottle", "NoSuchSet")
