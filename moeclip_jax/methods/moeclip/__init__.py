"""MoECLIP: MoE of FOFS-LoRA experts on a frozen CLIP (CoCoRessa/MoECLIP).

Modules: config (hyperparameters, faithful modes), model (Linen module),
heads (PAA, seg/det/text heads), maps (anomaly maps, scores, per-class
fusion), losses (CE, focal, dice, ETF, CV^2), prompts (official prompt
tables).
"""
