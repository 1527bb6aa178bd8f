"""Stable Diffusion's parts (UNet, VAE, CLIP text encoder and tokenizer, betas), loaded
offline from a local directory or the Hugging Face cache, or built tiny from configs in code.

Nothing here downloads: every ``from_pretrained`` runs with ``local_files_only=True``. A
model directory has diffusers' layout (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), as ``StableDiffusionPipeline.save_pretrained`` writes it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from adjointdpm import VPSchedule

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class SDComponents:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    betas: torch.Tensor  # the training betas (float64), e.g. SD's scaled_linear
    prediction_type: str = "epsilon"

    @cached_property
    def schedule(self) -> VPSchedule:
        return VPSchedule.discrete(self.betas)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def latent_shape(self) -> tuple:
        """``(channels, h, w)`` of the latents for the UNet's native resolution."""
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        """Side of the decoded images: the latents' times the VAE's upsampling (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) * self.latent_shape[-1]

    def save_pretrained(self, path) -> Path:
        """Write the diffusers layout (what :func:`load_components` reads)."""
        from diffusers import DDPMScheduler
        path = Path(path)
        for name in ("unet", "vae", "text_encoder", "tokenizer"):
            getattr(self, name).save_pretrained(path / name)
        DDPMScheduler(trained_betas=self.betas.tolist(), num_train_timesteps=len(self.betas),  # float64 text
                      prediction_type=self.prediction_type).save_pretrained(path / "scheduler")
        return path


def _offline_error(model, err) -> ValueError:
    return ValueError(
        f"cannot load Stable Diffusion from {model!r} offline ({type(err).__name__}: {str(err).splitlines()[0]}). "
        "Give a local directory in diffusers' layout with subfolders " + ", ".join(f"{s}/" for s in SUBFOLDERS)
        + " (e.g. a snapshot of stable-diffusion-v1-5 placed there by `huggingface-cli download` on a machine "
        "with internet, or StableDiffusionPipeline.save_pretrained), or a model id already in the Hugging Face "
        "cache (HF_HOME). Nothing is downloaded.")


def check_model_dir(model) -> None:
    """An existing directory must have diffusers' layout (a cache id is checked on loading)."""
    local = Path(model)
    if local.exists():
        missing = [s for s in SUBFOLDERS if not (local / s).is_dir()]
        if missing:
            raise ValueError(f"model directory {local} lacks the subfolders {missing}: it needs diffusers' layout "
                             f"({', '.join(s + '/' for s in SUBFOLDERS)})")


def model_argument(text: str) -> str:
    """``--model``'s type: ``tiny``, ``digits``, a folder with diffusers' layout, or a Hugging Face cache id
    (checked when it loads)."""
    if text not in ("tiny", "digits") and Path(text).exists():
        try:
            check_model_dir(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _default_device(device) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def open_model(model: str | Path, device=None, dtype: torch.dtype | None = None) -> SDComponents:
    """What the commands' ``--model`` names: ``"tiny"`` (:func:`tiny_components`, float32),
    ``"digits"`` (the committed digits model, float32) or anything :func:`load_components`
    reads; on ``device``."""
    if str(model) == "tiny":
        return freeze(tiny_components(), _default_device(device))
    if str(model) == "digits":
        from .digits import PIPELINE
        return load_components(PIPELINE, device, dtype or torch.float32)
    return load_components(model, device, dtype)


def load_components(model: str | Path, device=None, dtype: torch.dtype | None = None) -> SDComponents:
    """Load UNet, VAE, text encoder, tokenizer and betas from ``model`` (directory or cached id).

    ``dtype`` defaults to float16 on CUDA (UNet and VAE: the solve itself stays in the
    latents' dtype, float32) and float32 elsewhere; the text encoder stays float32.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = _default_device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    check_model_dir(model)
    kw = dict(local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype, **kw)
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype, **kw)
        text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
        scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw)
    except (OSError, ValueError) as err:
        raise _offline_error(model, err) from None
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"{model}: prediction_type {scheduler.config.prediction_type!r} is not supported "
                         "(epsilon or v_prediction)")
    comps = SDComponents(unet, vae, text_encoder, tokenizer, _betas(scheduler.config),
                         scheduler.config.prediction_type)
    return freeze(comps, device)


def _betas(config) -> torch.Tensor:
    """The training betas in float64 (diffusers computes them in float32)."""
    if config.trained_betas is not None:
        return torch.tensor(config.trained_betas, dtype=torch.float64)
    n = config.num_train_timesteps
    if config.beta_schedule == "scaled_linear":
        return scaled_linear_betas(n, config.beta_start, config.beta_end)
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float64)
    raise ValueError(f"beta_schedule {config.beta_schedule!r} is not supported (scaled_linear, linear or "
                     "trained_betas)")


def freeze(comps: SDComponents, device=None) -> SDComponents:
    """Eval mode, no parameter requires grad (applications unfreeze what they optimise)."""
    for net in (comps.unet, comps.vae, comps.text_encoder):
        net.requires_grad_(False).eval()
        if device is not None:
            net.to(device)
    return comps


def scaled_linear_betas(n: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's training betas: ``linspace(sqrt(b0), sqrt(b1), n)^2``."""
    return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2


TINY_WORDS = ("a", "photo", "of", "painting", "dog", "cat", "bird", "flower", "house", "tree", "in", "the", "style")


def small_tokenizer(folder: Path, words, model_max_length: int = 77):
    """A CLIP BPE tokenizer, written to ``folder``, over lowercase letters, digits, a little
    punctuation and whole ``words`` (each one token; any other word is spelled in letters)."""
    from transformers import CLIPTokenizer
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789,.!")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars] + [w + "</w>" for w in words]
    merges = {}  # insertion-ordered: a merge must come after those that build its parts
    for word in words:  # merge letters left to right until the word is one token
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.setdefault((parts[0], parts[1]), None)
            parts = [parts[0] + parts[1]] + parts[2:]
            if parts[0] not in tokens:
                tokens.append(parts[0])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length)


def tiny_components(seed: int = 0, sample_size: int = 16) -> SDComponents:
    """Randomly initialised components of the real architectures, small enough for CPU
    tests: latents ``(4, sample_size, sample_size)``, images twice that size."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=2 * sample_size)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = small_tokenizer(Path(tmp), TINY_WORDS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return freeze(SDComponents(unet, vae, text_encoder, tokenizer, scaled_linear_betas()))
