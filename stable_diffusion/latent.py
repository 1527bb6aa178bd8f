"""Stable Diffusion as an ``adjointdpm`` eps-model over latents, and the differentiable
pieces around it (prompt encoding, a new token's embedding row, VAE decoding).

Time: SD's UNet is trained at discrete steps ``n = 0..N-1`` with ``t_n = (n + 1)/N`` on
``VPSchedule.discrete(betas)``; a continuous ``t`` reaches the UNet as the schedule's
``model_time(t)`` (its sinusoidal embedding accepts any real timestep).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from adjointdpm import CFG, VPSchedule

from .components import SDComponents


class LatentEps(nn.Module):
    """``model(x, t, cond)``: epsilon over latents ``x`` at continuous ``t`` with prompt
    embeddings ``cond`` of shape ``(batch, tokens, dim)``. The UNet may run in half
    precision; inputs and outputs keep the latents' dtype. A half-precision UNet whose trained
    parameters were upcast to float32 (as diffusers' ``cast_training_params``) runs under autocast
    in its half dtype, so the float32 parameters take part in every op and keep their small updates."""

    def __init__(self, unet: nn.Module, schedule: VPSchedule, prediction_type: str = "epsilon"):
        super().__init__()
        self.unet, self.prediction_type = unet, prediction_type
        self.schedule = schedule  # VPSchedule.discrete of the training betas

    def forward(self, x, t, cond):
        if cond is None:
            raise ValueError("Stable Diffusion needs prompt embeddings as cond")
        dtypes = {p.dtype for p in self.unet.parameters()}
        dtype = min(dtypes, key=lambda d: torch.finfo(d).bits)  # the half dtype of a partly upcast UNet
        timestep = self.schedule.model_time(t)  # in the solve's dtype, not the UNet's: fp16 spacing is 0.5 near 999
        with torch.autocast(x.device.type, dtype=dtype, enabled=len(dtypes) > 1):
            out = self.unet(x.to(dtype), timestep, encoder_hidden_states=cond.to(dtype)).sample
        out = out.to(x.dtype)
        if self.prediction_type == "v_prediction":  # v = alpha eps - sigma x_0  =>  eps = sigma x_t + alpha v
            shape = (-1,) + (1,) * (x.dim() - 1)
            alpha, sigma = self.schedule.alpha(t).view(shape), self.schedule.sigma(t).view(shape)
            out = sigma * x + alpha * out
        return out


def eps_model(comps: SDComponents, guidance_scale: float = 7.5) -> nn.Module:
    """The guided eps-model (paper Sec. 2.1): ``s eps(x, t, c) + (1 - s) eps(x, t, null)``
    with the empty prompt as null; ``guidance_scale=1`` gives the plain conditional model."""
    model = LatentEps(comps.unet, comps.schedule, comps.prediction_type)
    if guidance_scale == 1:
        return model
    with torch.no_grad():
        null = encode_prompt(comps, [""])
    return CFG(model, guidance_scale, null)


def as_read(comps: SDComponents, prompt: str) -> str:
    """The prompt as the text encoder reads it: itself, or for one longer than the encoder's length the
    words of the tokens kept (what results record, so that they never claim words the model never read)."""
    limit = comps.tokenizer.model_max_length
    ids = comps.tokenizer(prompt).input_ids
    return prompt if len(ids) <= limit else comps.tokenizer.decode(ids[1:limit - 1])


def token_ids(comps: SDComponents, prompts: list[str]) -> torch.Tensor:
    """The prompts' token ids, padded to the text encoder's length; a longer prompt is cut to it, with a
    warning that says what the model reads (as diffusers' pipelines do)."""
    limit = comps.tokenizer.model_max_length
    for prompt in dict.fromkeys(prompts):
        if (read := as_read(comps, prompt)) != prompt:
            warnings.warn(f"a prompt of {len(comps.tokenizer(prompt).input_ids)} tokens is cut to the text "
                          f"encoder's {limit}: the model reads {read!r}", stacklevel=2)
    return comps.tokenizer(prompts, padding="max_length", max_length=limit,
                           truncation=True, return_tensors="pt").input_ids.to(comps.device)


def encode_prompt(comps: SDComponents, prompts: list[str], embedding_row=None, token_id: int | None = None):
    """CLIP's last hidden states ``(len(prompts), tokens, dim)``. With ``embedding_row``
    (a ``(dim,)`` tensor, may require grad), the token ``token_id`` uses that row instead
    of its stored embedding: the gradient of anything downstream reaches it."""
    ids = token_ids(comps, prompts)
    encoder = comps.text_encoder
    if embedding_row is None:
        return encoder(ids)[0]
    name = next(n for n, p in encoder.named_parameters() if n.endswith("token_embedding.weight"))
    table = dict(encoder.named_parameters())[name]
    onehot = torch.zeros(table.shape[0], 1, dtype=table.dtype, device=table.device)
    onehot[token_id] = 1
    weight = table * (1 - onehot) + onehot * embedding_row.to(table)  # row token_id replaced, differentiably
    return torch.func.functional_call(encoder, {name: weight}, (ids,))[0]


def add_token(comps: SDComponents, token: str, init_token: str | None = None) -> int:
    """Add ``token`` to the tokenizer (error if it exists), grow the embedding table, and
    initialise its row from ``init_token``'s (or the mean row). Returns its id."""
    if comps.tokenizer.add_tokens([token]) == 0:
        raise ValueError(f"token {token!r} is already in the tokenizer: choose a new placeholder")
    comps.text_encoder.resize_token_embeddings(len(comps.tokenizer), mean_resizing=False)  # row set below
    token_id = comps.tokenizer.convert_tokens_to_ids(token)
    table = comps.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        if init_token is None:
            table[token_id] = table[:token_id].mean(0)
        else:
            init = comps.tokenizer.encode(init_token, add_special_tokens=False)
            if len(init) != 1:
                raise ValueError(f"init_token {init_token!r} must be one token, got {len(init)}")
            table[token_id] = table[init[0]]
    return token_id


def decode(comps: SDComponents, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], float32, differentiable in ``latents`` (the latent scaling factor
    of SD's VAE applied)."""
    vae = comps.vae
    images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


def check_latents(comps: SDComponents, x_T: torch.Tensor) -> None:
    if x_T.dim() != 4 or tuple(x_T.shape[1:]) != comps.latent_shape:
        raise ValueError(f"latents must have shape (batch, {', '.join(map(str, comps.latent_shape))}) for this "
                         f"UNet, got {tuple(x_T.shape)}")
