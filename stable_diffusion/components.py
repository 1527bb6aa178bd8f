"""Stable Diffusion's parts (UNet, VAE, CLIP text encoder and tokenizer, betas), loaded
offline from a local directory or the Hugging Face cache, or built tiny from configs in code.

Nothing here downloads: every ``from_pretrained`` runs with ``local_files_only=True``. A
model directory has diffusers' layout (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), as ``StableDiffusionPipeline.save_pretrained`` writes it.
"""
from __future__ import annotations

import contextlib
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

    def at_resolution(self, resolution: int) -> "SDComponents":
        """Sample ``resolution x resolution`` images (the UNet's default ``sample_size`` becomes
        ``resolution / 8``; the weights do not depend on it)."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        multiple = factor * 2 ** (len(self.unet.config.block_out_channels) - 1)  # the UNet halves the latents
        if resolution <= 0 or resolution % multiple:
            raise ValueError(f"resolution must be a positive multiple of {multiple} for this model, got {resolution}")
        self.unet.register_to_config(sample_size=resolution // factor)
        return self

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


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers' log off while a part loads: a folder with ``.bin`` weights makes it log an error and "Defaulting
    to unsafe serialization", though it reads them with ``weights_only`` (a pickle is refused) and loads them
    well; what fails is raised, and said in one line by :func:`_part_error`."""
    from diffusers.utils import logging
    level = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _part_error(folder: Path, err: Exception) -> ValueError:
    """One line for a part of a local model that does not load, naming the folder and the cause, in words
    that never advise lifting a safety guard (torch's message for a refused pickle does)."""
    chain = []  # the libraries wrap the cause (diffusers: "Unable to load weights ..."): read every link
    while err is not None and len(chain) < 8:
        chain.append(err)
        err = err.__cause__ or err.__context__
    text = " ".join(str(e) for e in chain)
    err = chain[0]
    if "weights_only" in text or "Unsupported global" in text or "unsafe" in text.lower():
        cause = "a weight file holds Python objects, not only tensors: refused, nothing in it ran"
    elif isinstance(err, MemoryError) or "not enough memory" in text or "allocate" in text:
        cause = f"its config asks for more memory than this machine has ({text.splitlines()[0][:200]})"
    else:
        cause = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else 'no message'}"
    return ValueError(f"cannot load the model part in {folder}: {cause}")


def check_model_dir(model) -> None:
    """An existing directory must have diffusers' layout (a cache id is checked on loading)."""
    local = Path(model)
    if local.exists():
        missing = [s for s in SUBFOLDERS if not (local / s).is_dir()]
        if missing:
            raise ValueError(f"model directory {local} lacks the subfolders {missing}: it needs diffusers' layout "
                             f"({', '.join(s + '/' for s in SUBFOLDERS)})")


def default_device(device=None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_components(model: str | Path, device=None, dtype: torch.dtype | None = None) -> SDComponents:
    """Load UNet, VAE, text encoder, tokenizer and betas from ``model`` (directory or cached id).

    ``dtype`` defaults to float16 on CUDA (UNet and VAE: the solve itself stays in the
    latents' dtype, float32) and float32 elsewhere; the text encoder stays float32.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    device = default_device(device)
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    check_model_dir(model)
    kw = dict(local_files_only=True)
    parts = {"unet": (UNet2DConditionModel, dict(torch_dtype=dtype)), "vae": (AutoencoderKL, dict(torch_dtype=dtype)),
             "text_encoder": (CLIPTextModel, {}), "tokenizer": (CLIPTokenizer, {}), "scheduler": (DDPMScheduler, {})}
    loaded = {}
    for name, (cls, extra) in parts.items():
        try:
            with _quiet_diffusers():
                loaded[name] = cls.from_pretrained(model, subfolder=name, **extra, **kw)
        except Exception as err:  # the libraries' many kinds: a missing file, a refused pickle, an allocation
            raise (_part_error(Path(model) / name, err) if Path(model).is_dir() else _offline_error(model, err)) from None
    unet, vae, text_encoder, tokenizer, scheduler = loaded.values()
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


ATTENTION = ("sdpa", "classic")


@dataclass(frozen=True)
class Saving:
    """A memory saving that keeps the gradient exact: its kind (``checkpointing`` a network's blocks,
    ``release`` a part's weights, or ``allocator``), what it saves and costs (the bench's own measurements at
    512x512 on SD 1.5's architecture), and whether the applications take it (they still use the parts the bench
    releases: they encode prompts as they go, and inversion trains through the text encoder)."""
    kind: str
    cost: str
    applications: bool = True


# Every saving by name: the one table that --save-memory of the applications and of the bench read.
SAVINGS = {
    "unet": Saving("checkpointing", "checkpoint the UNet's blocks: one UNet VJP keeps 0.58 instead of 3.0 GiB; each "
                   "UNet evaluation's forward runs again in backward"),
    "vae": Saving("checkpointing", "checkpoint the VAE decoder's up blocks (diffusers): the decode keeps 0.8 instead "
                  "of 5.9 GiB; one more decoder forward"),
    "vae-resnets": Saving("checkpointing", "checkpoint the VAE decoder per residual block and upsampler instead: a "
                          "smaller transient in backward; one more decoder forward"),
    "text-encoder": Saving("release", "release the text encoder once the prompt is encoded: 0.46 GiB of weights; "
                           "no time", applications=False),
    "vae-encoder": Saving("release", "release the VAE's encoder (a gradient only decodes): 0.13 GiB of weights; no "
                          "time", applications=False),
    "allocator": Saving("allocator", "return freed memory to the system at once (a fixed glibc mmap threshold): the "
                        "resident size follows the live bytes; costs fresh pages for every large tensor"),
}
GRAINS = ("vae", "vae-resnets")  # two grains of one saving: at most one
ALL_SAVINGS = ("unet", "vae-resnets", "text-encoder", "vae-encoder", "allocator")  # "all": the finer grain
CHECKPOINTING = tuple(name for name, s in SAVINGS.items() if s.kind == "checkpointing")
RELEASABLE = tuple(name for name, s in SAVINGS.items() if s.kind == "release")


def asked_savings(names, applications: bool = False) -> list[str]:
    """The savings ``names`` asks for (``"all"``: :data:`ALL_SAVINGS`, those the applications take if
    ``applications``), in the table's order; refuses both :data:`GRAINS` in one line."""
    allowed = [name for name, s in SAVINGS.items() if s.applications or not applications]
    unknown = set(names) - set(allowed) - {"all"}
    if unknown:
        raise ValueError(f"argument --save-memory: savings are among {tuple(allowed)}, got {sorted(unknown)}")
    asked = set(names) | (set(ALL_SAVINGS) & set(allowed) if "all" in names else set())
    if set(GRAINS) <= asked:
        raise ValueError(f"argument --save-memory: {GRAINS[0]!r} and {GRAINS[1]!r} are two grains of one saving; "
                         "choose one")
    return [name for name in SAVINGS if name in asked]


def save_memory(comps: SDComponents, attention: str = "sdpa", checkpointing=()) -> SDComponents:
    """The memory savings that keep gradients exact, for UNet and VAE.

    ``attention="sdpa"`` is diffusers' default on torch 2 (``F.scaled_dot_product_attention``:
    fused kernels that keep no attention matrix for backward); ``"classic"`` materialises
    softmax(QK^T), 4096 x 4096 per head at 64 x 64 latents, as diffusers did before. In
    ``checkpointing``, ``"unet"`` or ``"vae"`` turns on diffusers' gradient checkpointing of that
    network's blocks (the VAE's: its decoder's mid and up blocks): under autograd each block keeps
    only its input and is recomputed during backward, exact because the networks are in eval mode
    (no dropout). ``"vae-resnets"`` checkpoints the VAE decoder at a finer grain instead: its mid
    block and each residual block and upsampler of its up blocks, so the recomputation in backward
    holds one residual block's activations at a time rather than a whole up block's (at 512x512 an
    up block holds several 128- and 256-channel maps of 512x512). Each recomputes its forward once
    in backward. VAE slicing and tiling are left out: slicing splits the batch (one image here) and
    tiling blends overlapping tiles, which changes the image.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    unknown = set(checkpointing) - set(CHECKPOINTING)
    if unknown:
        raise ValueError(f"checkpointing names networks among {CHECKPOINTING}, got {sorted(unknown)}")
    if set(GRAINS) <= set(checkpointing):
        raise ValueError(f"checkpointing: {GRAINS[0]!r} and {GRAINS[1]!r} are two grains of the same saving; choose one")
    for name in ("unet", "vae"):
        net = getattr(comps, name)
        net.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
        if name in checkpointing:
            net.enable_gradient_checkpointing()
        else:
            net.disable_gradient_checkpointing()
    decoder = comps.vae.decoder
    pieces = [decoder.mid_block] + [m for block in decoder.up_blocks for m in (*block.resnets, *(block.upsamplers or ()))]
    for module in pieces:
        _checkpointed(module, "vae-resnets" in checkpointing)
    return comps


def _checkpointed(module: torch.nn.Module, on: bool) -> None:
    """Make ``module`` keep only its inputs under autograd and recompute its forward in backward (or undo it)."""
    import torch.utils.checkpoint
    vars(module).pop("forward", None)  # undo: the class's forward again
    if on:
        forward = module.forward

        def checkpointed(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        module.forward = checkpointed


def release(comps: SDComponents, parts) -> SDComponents:
    """Free the weights of parts a gradient no longer needs (:data:`RELEASABLE`): the text encoder once
    the prompts are encoded, the VAE's encoder when only decoding follows. Their parameters move to
    PyTorch's ``meta`` device (shapes without storage): the gradient is unchanged, and a released
    part cannot run again until the model is loaded anew."""
    unknown = set(parts) - set(RELEASABLE)
    if unknown:
        raise ValueError(f"release names parts among {RELEASABLE}, got {sorted(unknown)}")
    if "text-encoder" in parts:
        comps.text_encoder.to("meta")
    if "vae-encoder" in parts:
        comps.vae.encoder.to("meta")
        if comps.vae.quant_conv is not None:
            comps.vae.quant_conv.to("meta")
    return comps


# Stable Diffusion's training betas as a diffusers scheduler's config names them: the one definition.
SD_BETAS = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def scaled_linear_betas(n: int = SD_BETAS["num_train_timesteps"], beta_start: float = SD_BETAS["beta_start"],
                        beta_end: float = SD_BETAS["beta_end"]) -> torch.Tensor:
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


def sd15_random_components(seed: int = 0) -> SDComponents:
    """Stable Diffusion 1.5's architecture with random weights, float32, seeded: memory and
    time at the real shapes with nothing downloaded.

    The configs are those of ``stable-diffusion-v1-5`` (``unet/``, ``vae/`` and
    ``text_encoder/config.json``; the UNet has 859.5 M parameters, the VAE 83.7 M, CLIP
    ViT-L/14's text encoder 123.1 M). The tokenizer is the small offline one, padded to CLIP's
    77 tokens; the embedding table keeps CLIP's 49408 rows.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
        sample_size=512, scaling_factor=0.18215)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = small_tokenizer(Path(tmp), TINY_WORDS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))  # the small tokenizer's ids for its start/end tokens
    return SDComponents(unet, vae, text_encoder, tokenizer, scaled_linear_betas())
