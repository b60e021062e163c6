"""Training: backbones, embedding cache, trainer, metrics, artifacts, run orchestration."""
