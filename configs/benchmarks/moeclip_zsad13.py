"""MoECLIP zero-shot: the official scripts.sh list of 13 targets with a
detector trained on VisA, plus VisA with a detector trained on MVTec.

  moeclip-jax benchmark run --suite moeclip_zsad13 --out bench/zsad13 \\
      --suite.detector.*=runs/visa/detector \\
      --suite.detector.visa=runs/mvtec/detector \\
      --suite.targets.mvtec.root=/data/mvtec ...

Roots default to the official BASE_PATH layout (/data/<set>); the medical
and colonoscopy sets are read from their MoECLIP JSONL metadata
(`full-shot.jsonl` in each root). Instead of `detector`, a `train` list
(configs/moeclip_vitl14_336.py on VisA / MVTec) trains each source once.
"""

import ml_collections

_INDUSTRIAL = (
    ("mvtec", "mvtec", "/data/mvtec"),
    ("btad", "btad", "/data/btad"),
    ("rsdd", "rsdd", "/data/rsdd"),
    ("dtd_synthetic", "dtd_synthetic", "/data/dtd_synthetic"),
)
_MEDICAL = (
    ("brain_mri", "/data/BrainMRI"),
    ("headct", "/data/HeadCT"),
    ("liver_ct", "/data/LiverCT"),
    ("retina_oct", "/data/RetinaOCT"),
    ("colon_colondb", "/data/ColonDB"),
    ("colon_clinicdb", "/data/ClinicDB"),
    ("colon_cvc300", "/data/CVC-300"),
    ("endo", "/data/Endo"),
    ("colon_kvasir", "/data/Kvasir"),
)


def get_config():
  config = ml_collections.ConfigDict()
  config.name = "moeclip_zsad13"
  config.description = "MoECLIP paper main table (zero-shot)"
  config.method = "moeclip"
  # VisA is tested with the MVTec-trained detector, everything else with
  # the VisA-trained one (CoCoRessa/MoECLIP scripts.sh).
  config.detector = {"*": "runs/moeclip_visa/detector",
                     "visa": "runs/moeclip_mvtec/detector"}
  config.references = ["moeclip_paper", "moeclip_released_repro"]
  config.batch_size = 8
  targets = [dict(name=n, reader=r, root=root, domain="industrial")
             for n, r, root in _INDUSTRIAL]
  targets += [dict(name=n, reader="moeclip_jsonl", root=root,
                   domain="medical") for n, root in _MEDICAL]
  targets.append(dict(name="visa", reader="visa", root="/data/visa",
                      domain="industrial"))
  config.targets = targets
  return config
