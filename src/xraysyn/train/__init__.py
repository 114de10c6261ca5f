"""Training of XraySyn: stage-1 losses (eq. 9-10) and the stage-1 (3DPN) step."""

from xraysyn.train.losses import (
    Stage1LossWeights,
    ct_loss,
    mask_loss,
    stage1_generator_loss,
    xray_view_loss,
)
from xraysyn.train.stage1 import (
    Stage1Config,
    Stage1Views,
    make_optimizer,
    network_input_from_backprojection,
    predict_volumes,
    sample_view_angles,
    simulate_targets,
    stage1_step,
)

__all__ = [
    "Stage1Config",
    "Stage1LossWeights",
    "Stage1Views",
    "ct_loss",
    "make_optimizer",
    "mask_loss",
    "network_input_from_backprojection",
    "predict_volumes",
    "sample_view_angles",
    "simulate_targets",
    "stage1_generator_loss",
    "stage1_step",
    "xray_view_loss",
]
