r"""AnomalyMoE on DINOv2-with-registers ViT-B/14 at 392 px (official recipe).

Command (official DINOv2 weights, or a HF Dinov2WithRegistersModel folder):
  python -m moeclip_jax.convert hf-dinov2 \
      --src dinov2_vitb14_reg4_pretrain.pth --dst ckpt/dinov2reg_b14
  python -m moeclip_jax.data components mvtec --root /data/mvtec_ad \
      --backbone ckpt/dinov2reg_b14          # -> /data/mvtec_ad_components
  python -m moeclip_jax.train --config configs/anomalymoe_dinov2_b14.py \
      --workdir runs/anomalymoe \
      --config.backbone.checkpoint=ckpt/dinov2reg_b14 \
      --config.data.name=mvtec --config.data.root=/data/mvtec_ad \
      --config.data.component_masks=/data/mvtec_ad_components
  # -> runs/anomalymoe/detector (moeclip_jax.load_detector)

Trains on the normal `train/good` images only; held-out evaluation runs on
the test split (`data.holdout_fraction` of it). Expert parallelism: add
`--config.mesh.expert=2` (or 3, 6; each group of 6 experts splits over it).

Official released weights (`model_final.pth`) convert directly:
  python -m moeclip_jax.convert anomalymoe-official \
      --checkpoint model_final.pth --dst ckpt/anomalymoe

Expected numbers: the paper's tables are not available (spec B7); the
released code gives no reference numbers either. Golden parity with the
official code is tested in tests/test_anomalymoe_golden.py.

`arg` = "tiny" gives the small test configuration (random tiny backbone).
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.method = "anomalymoe"
  c.seed = 42

  c.backbone = ml_collections.ConfigDict()
  c.backbone.checkpoint = ""        # converted DINOv2-reg; "" = random
  c.backbone.variant = "dinov2reg_vit_base_14"
  c.backbone.interpolation = "official"  # (G + 0.1)/G0 bicubic, as trained
  c.backbone.dtype = "auto"  # bf16 on TPU/GPU, f32 on CPU (models/precision.py)

  c.model = ml_collections.ConfigDict()
  c.model.image_size = 392          # global experts need exactly 392
  c.model.num_patch_experts = 6
  c.model.num_global_experts = 6
  c.model.num_component_experts = 6
  c.model.top_k = 3
  c.model.target_layers = (2, 3, 4, 5, 6, 7, 8, 9)
  c.model.train_fusion = ((0, 1, 2, 3), (4, 5, 6, 7))  # train.py
  c.model.test_fusion = ((0, 1, 2, 3, 4, 5, 6, 7),)    # test.py
  # "auto": "vmap" (expert-parallel) when the mesh has an expert axis > 1
  # (e.g. --config.mesh_preset=expert_parallel), else "scan" (lean, fast on
  # one host); "scan" / "vmap" force one.
  c.model.expert_loop = "auto"

  c.loss = ml_collections.ConfigDict()
  c.loss.p_hm = 0.9
  c.loss.factor_hm = 0.1
  c.loss.capacity_factor = 4.0
  c.loss.lambda_esb = 0.01
  c.loss.lambda_eir = 1e-4

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "stable_adamw"     # AdamW + amsgrad + per-tensor clipping
  c.optim.lr = 5e-4
  c.optim.weight_decay = 1e-4
  c.optim.eps = 1e-10
  c.optim.grad_clip = 0.1
  c.optim.warmup_steps = 100
  c.optim.final_lr_ratio = 0.01
  c.optim.estimator_lr = 5e-4       # CLUB estimator: Adam, wd 1e-4, clip 0.1

  c.data = ml_collections.ConfigDict()
  c.data.name = "mvtec"
  c.data.root = ""
  c.data.resize = 448               # Resize(448) then CenterCrop(392)
  c.data.component_masks = ""       # masks from `data components`; "" = none
  c.data.component_slots = 5        # mask slots per image (k of k-means)
  c.data.holdout_fraction = 1.0     # share of the test split for eval
  c.data.eval_batch_size = 8
  c.data.worker_count = 0
  c.data.test_time_jitter = False   # official test.py jitters image_ae

  c.calibration = ml_collections.ConfigDict()
  c.calibration.momentum = 0.9      # EMA of per-class map min / max

  c.eval = ml_collections.ConfigDict()
  c.eval.map_size = 196             # held-out maps kept at 196 px (host RAM)
  c.eval.protocol = "raw"

  c.batch_size = 8                  # per device in the official DDP run
  c.total_steps = 100_000
  c.log_every = 50
  c.eval_every = 5000
  c.ckpt_every = 5000
  c.keep_ckpts = 3
  c.resume = ""
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1,
                                      "expert": 1})
  c.loggers = "tensorboard"  # comma list: tensorboard,wandb,mlflow
  if arg == "tiny":
    _tiny(c)
  return c


def _tiny(c):
  """Tiny random backbone and narrow experts (tests, smoke runs)."""
  c.backbone.variant = "tiny-test"
  c.model.target_layers = (0, 1, 2, 3)
  c.model.train_fusion = ((0, 1), (2, 3))
  c.model.test_fusion = ((0, 1, 2, 3),)
  c.batch_size = 4
  c.total_steps = 50
  c.optim.warmup_steps = 5
  c.optim.lr = 1e-3
  c.loggers = ""
