"""The embedding cache's model key, without torch: the early extraction (prefetch.py) checks
with it, before torch is imported, that its features are the ones the run will ask for."""

from __future__ import annotations

import hashlib
import json

from annotate2model.training.images import Preprocessing


def model_key(backbone: str, weights_identity: str, prep: Preprocessing, bf16: bool) -> str:
    description = model_description(backbone, weights_identity, prep, bf16)
    return hashlib.sha256(description.encode()).hexdigest()[:32]


def model_description(backbone: str, weights_identity: str, prep: Preprocessing, bf16: bool) -> str:
    return json.dumps(
        {
            "backbone": backbone,
            "weights": weights_identity,
            "preprocessing": prep.key,
            "precision": "bf16" if bf16 else "fp32",
        },
        sort_keys=True,
    )
