"""InCTRL few-shot: K = 2 / 4 / 8 normal prompts x 5 prompt draws.

The paper trains one model per K on MVTec AD and tests the other sets;
MVTec AD itself is tested with the VisA-trained models. Prompts are drawn
from each class's train/good (draw d uses prompt_seed + d). Roots are the
InCTRL converters' MVTec-layout folders (datasets/preprocess/convert_*);
ELPV is read from the `elpv-dataset` package.

  moeclip-jax benchmark run --suite inctrl_fewshot --out bench/inctrl \\
      --suite.detector.*=ckpt/inctrl_mvtec/{shots} \\
      --suite.detector.mvtec=ckpt/inctrl_visa/{shots}
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.name = "inctrl_fewshot"
  config.description = "InCTRL paper: 2/4/8-shot over 5 prompt draws"
  config.method = "inctrl"
  config.detector = {"*": "ckpt/inctrl_mvtec/{shots}",
                     "mvtec": "ckpt/inctrl_visa/{shots}"}
  config.shots = [2, 4, 8]
  config.prompt_draws = 5
  config.prompt_seed = 0
  config.references = ["inctrl_paper"]
  config.batch_size = 8
  config.targets = [
      dict(name="mvtec", reader="mvtec", root="/data/mvtec"),
      dict(name="visa", reader="visa", root="/data/visa"),
      dict(name="elpv", reader="elpv", root=None),
      dict(name="sdd", reader="mvtec", root="/data/inctrl/SDD"),
      dict(name="aitex", reader="mvtec", root="/data/inctrl/AITEX"),
      dict(name="brainmri", reader="mvtec", root="/data/inctrl/BrainMRI",
           domain="medical"),
      dict(name="headct", reader="mvtec", root="/data/inctrl/HeadCT",
           domain="medical"),
  ]
  return config
