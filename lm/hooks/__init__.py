"""Experiment hooks: forward, backward, update-rule and auxiliary-loss hooks.

Chosen from ``conf/hooks/`` (``hooks=grad_clip_custom``, ``hooks=[grad_clip_custom,z_loss]``;
the order given is the order applied), built by ``build_hooks(cfg)`` and run by
``LMModule``. See ``lm/hooks/base.py`` for the interface and README "Writing a hook".
"""

from lm.hooks.auxiliary import ActL2, AttnEntropy, ZLoss
from lm.hooks.backward import (
    GradScale,
    ScaleGradFunction,
    StraightThroughClamp,
    StraightThroughClampFunction,
)
from lm.hooks.base import AuxLossHook, BackwardHook, ForwardHook, Hook, UpdateHook
from lm.hooks.build import build_hooks
from lm.hooks.forward import AttentionImages, AttnTemperature, HeadAblation, ResidNoise
from lm.hooks.update import GradClipCustom, GradNoise, SignUpdate, clip_groups

__all__ = [
    "ActL2", "AttentionImages", "AttnEntropy", "AttnTemperature", "AuxLossHook", "BackwardHook",
    "ForwardHook", "GradClipCustom", "GradNoise", "GradScale", "HeadAblation", "Hook",
    "ResidNoise", "ScaleGradFunction", "SignUpdate", "StraightThroughClamp",
    "StraightThroughClampFunction", "UpdateHook", "ZLoss", "build_hooks", "clip_groups",
]
