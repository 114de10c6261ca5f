"""Training of XraySyn.

* :mod:`xraysyn.train.losses` — the stage-1 losses (eq. 9-10);
* :mod:`xraysyn.train.stage1` — the stage-1 computation (targets, input, prediction, losses);
* :mod:`xraysyn.train.prior_config` — the typed config of a stage-1 run and its presets;
* :mod:`xraysyn.train.sources` — data sources, the split, the deterministic item plan;
* :mod:`xraysyn.train.loop` — the one training loop (logs, pictures, checkpoints, resume, DDP);
* :mod:`xraysyn.train.prior` — stage 1 as a run (``xraysyn train prior``);
* :mod:`xraysyn.train.export` — weights-only model files (``xraysyn export``).
"""

from xraysyn.train.losses import (
    Stage1LossWeights,
    ct_loss,
    mask_loss,
    soft_dice_loss,
    stage1_generator_loss,
    xray_view_loss,
)
from xraysyn.train.prior_config import PriorTrainingConfig, load_config, preset_config
from xraysyn.train.stage1 import (
    network_input_from_radiograph,
    predict_volumes,
    simulate_targets,
    simulated_network_input,
    stage1_losses,
    view_poses,
)

__all__ = [
    "PriorTrainingConfig",
    "Stage1LossWeights",
    "ct_loss",
    "load_config",
    "mask_loss",
    "network_input_from_radiograph",
    "predict_volumes",
    "preset_config",
    "simulate_targets",
    "simulated_network_input",
    "soft_dice_loss",
    "stage1_generator_loss",
    "stage1_losses",
    "view_poses",
    "xray_view_loss",
]
