"""CIFAR-10 scale: score_sde's DDPM++ network and checkpoint loader."""
from .checkpoint import ScoreSDEEps, load_score_sde
from .ddpmpp import CONFIGS, DDPMpp

__all__ = ["DDPMpp", "CONFIGS", "load_score_sde", "ScoreSDEEps"]
