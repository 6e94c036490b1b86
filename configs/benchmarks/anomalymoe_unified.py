"""AnomalyMoE unified: one detector over its paper's 8 datasets (MVTec
AD, VisA, MVTec LOCO, MVTec 3D-AD as RGB, Ped2 frames, BMAD BrainMRI /
LiverCT / RESC), each in the MVTec layout of the official README; the
`anomalymoe` protocol (image score = top-1% mean of the map, AUROCs).

  moeclip-jax benchmark run --suite anomalymoe_unified --out bench/amoe \\
      --suite.detector=runs/anomalymoe/detector
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.name = "anomalymoe_unified"
  config.description = "AnomalyMoE paper: unified model, 8 datasets"
  config.method = "anomalymoe"
  config.detector = "runs/anomalymoe/detector"
  config.protocol = "anomalymoe"
  config.references = []
  config.batch_size = 8
  config.targets = [
      dict(name="mvtec", reader="mvtec", root="data/mvtec"),
      dict(name="visa", reader="visa", root="data/visa"),
      dict(name="mvtec_loco", reader="mvtec", root="data/mvtec_loco"),
      dict(name="mvtec_3d", reader="mvtec", root="data/mvtec_3d"),
      dict(name="ped2", reader="mvtec", root="data/ped2"),
      dict(name="brainmri", reader="mvtec", root="data/BrainMRI",
           domain="medical"),
      dict(name="liver_ct", reader="mvtec", root="data/LiverCT",
           domain="medical"),
      dict(name="resc", reader="mvtec", root="data/RESC", domain="medical"),
  ]
  return config
