"""Toy scale: Gaussian mixtures with exact scores, where every gradient has a reference."""
from .gaussian import flow_map, flow_map_vjp, sde_map_vjp, sde_slope
from .mixture import eight_modes, three_modes
from .mlp import EpsMLP, train_eps_mlp

__all__ = ["eight_modes", "three_modes", "flow_map", "flow_map_vjp", "sde_map_vjp", "sde_slope",
           "EpsMLP", "train_eps_mlp"]
