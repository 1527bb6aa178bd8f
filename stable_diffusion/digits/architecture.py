"""The digits model's components: the real diffusers and transformers classes, sized so that
training and every application run on a 2-core CPU.

* ``AutoencoderKL``: 32x32x3 images to 8x8x4 latents (two downsamplings), scaling factor
  set after training to ``1 / std`` of the training latents (as Stable Diffusion's 0.18215).
* ``UNet2DConditionModel`` on 8x8x4 latents, cross-attention to the prompt at 4x4 and in the
  middle block, epsilon prediction.
* ``CLIPTextModel`` with a small vocabulary written in code (:data:`WORDS`; any other word is
  spelled in letters), 16 positions, trained together with the UNet.
* Stable Diffusion's ``scaled_linear`` betas, 1000 steps.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..components import SDComponents, freeze, scaled_linear_betas, small_tokenizer
from .data import KEYWORD, NAMES

WORDS = ("a", "handwritten", "digit", *NAMES, "photo", "of", "the", "number", "drawing", KEYWORD)
MAX_TOKENS = 16

VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
           norm_num_groups=8, sample_size=32)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16)
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def build(seed: int = 0) -> SDComponents:
    """Randomly initialised components of the digits model's architecture (``seed``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae, unet = AutoencoderKL(**VAE), UNet2DConditionModel(**UNET)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = small_tokenizer(Path(tmp), WORDS, MAX_TOKENS)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT))
    return freeze(SDComponents(unet, vae, text_encoder, tokenizer, scaled_linear_betas()))
