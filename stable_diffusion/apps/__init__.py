"""The paper's applications on Stable Diffusion (Sec. 4, App. A-D), and the AdjointDEIS poster's
morphing, one module each; each is a subcommand of ``python -m stable_diffusion`` (see ``--help``).

Every one optimises through ``adjointdpm.sample(..., gradient=...)``: the guided sampler
runs forward without a graph, and the gradient strategy (``Adjoint`` by default) gives
``dL/dx_T``, ``dL/d(embedding)`` or ``dL/d(cross-attention weights)`` with memory that does
not grow with the number of steps.
"""
from .audit import audit_classifier
from .common import Pipeline, Sampler, latent_noise, read_image, save_images
from .guided import Restraints, guided_sampling
from .invert import invert_embedding
from .morph import morph_identities
from .stylize import add_lora, cross_attention_parameters, fine_tune_style, save_lora

__all__ = ["Sampler", "Pipeline", "latent_noise", "read_image", "save_images", "Restraints", "guided_sampling",
           "audit_classifier", "fine_tune_style", "cross_attention_parameters", "add_lora", "save_lora", "invert_embedding",
           "morph_identities"]
