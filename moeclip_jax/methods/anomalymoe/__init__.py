"""AnomalyMoE: language-free hierarchical MoE (patch / component / global
experts) on a frozen DINOv2-with-registers backbone."""
