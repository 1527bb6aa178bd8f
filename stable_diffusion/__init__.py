"""Stable Diffusion scale: the paper's applications (Sec. 4, App. A-D) on diffusers components."""
from .components import SDComponents, load_components, scaled_linear_betas, tiny_components
from .latent import LatentEps, add_token, decode, encode_prompt, eps_model

__all__ = ["SDComponents", "load_components", "tiny_components", "scaled_linear_betas", "LatentEps",
           "eps_model", "encode_prompt", "add_token", "decode"]
