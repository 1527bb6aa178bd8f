"""Train the digits model in three resumable stages: the digit classifier, the VAE, then the
UNet together with the text encoder. ``python -m stable_diffusion.digits train --out DIR``.

Every stage is a :class:`~adjointdpm.tools.training.Training` whose steps draw their batch
and noise from generators seeded by ``(seed, stage, step)``, so a run killed at any point
and started again ends with the same weights as one that never stopped. ``DIR`` is keyed by
the recipe (``files.claim``). The result is a ``StableDiffusionPipeline`` folder (what
``save_pretrained`` writes, safetensors), the classifier beside it, and ``recipe.json``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from adjointdpm.tools import files
from adjointdpm.seeds import mix_seed
from adjointdpm.tools.training import Training
from handwritten.data import augment
from handwritten.slant import shear

from ..components import SD_BETAS, SDComponents, scaled_linear_betas
from . import data
from .classifier import DigitClassifier
from .architecture import build

STAGES = ("classifier", "vae", "unet")
CLASSIFIER_FILE = "digit_classifier.safetensors"  # written beside the pipeline folder


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights."""
    seed: int = 0
    classifier_steps: int = 600
    classifier_batch: int = 64
    classifier_lr: float = 2e-3
    vae_steps: int = 800
    vae_batch: int = 64
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-4
    unet_steps: int = 1500
    unet_batch: int = 128
    unet_lr: float = 1e-3
    unet_warmup: int = 100
    unet_ema: float = 0.998
    drop_prompt: float = 0.1  # share of examples trained with the empty prompt (classifier-free guidance)
    generic_share: float = 0.3  # share of the named digits captioned generically (data.draw_examples)
    slant_share: float = 0.25  # share of examples sheared by data.SLANT_DEGREES and captioned "slanted"


def _generator(recipe: Recipe, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(recipe.seed, STAGES.index(stage) * 100_003 + step))


def _cosine(optimizer, total: int, warmup: int = 0, floor: float = 0.1):
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_classifier(out: Path, recipe: Recipe, progress: bool = True, save_every: int = 100
                     ) -> tuple[DigitClassifier, dict]:
    torch.manual_seed(recipe.seed)
    net = DigitClassifier()
    images, labels = data.load("guide")  # the guide's part of the split: the judges train on the other
    images = data.to_unit(images)
    params = dict(net.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=recipe.classifier_lr, weight_decay=1e-4)

    def loss_fn(step):
        gen = _generator(recipe, "classifier", step)
        idx = torch.randint(len(images), (recipe.classifier_batch,), generator=gen)
        return F.cross_entropy(net(augment(images[idx], gen)), labels[idx])

    training = Training(params, opt, out / "checkpoints" / "classifier.pt", save_every=save_every,
                        scheduler=_cosine(opt, recipe.classifier_steps), desc="classifier")
    losses = training.run(recipe.classifier_steps, loss_fn, progress)
    net.eval()
    held, held_labels = data.load("heldout")
    with torch.no_grad():
        accuracy = float((net(data.to_unit(held)).argmax(1) == held_labels).float().mean())
    return net, {"steps": recipe.classifier_steps, "final_loss": _tail(losses), "heldout_accuracy": accuracy,
                 "heldout_images": len(held), "seconds": training.seconds}


def _kl_per_element(posterior) -> torch.Tensor:
    return posterior.kl().mean() / posterior.mean[0].numel()


def _slanted(images: torch.Tensor) -> torch.Tensor:
    """Training images (``[-1, 1]``) slanted by :data:`data.SLANT_DEGREES`: sheared in ``[0, 1]``, where
    the frame's outside is no ink."""
    return torch.cat([shear(data.to_unit(x), data.SLANT_DEGREES) * 2 - 1 for x in images.split(512)])


def _training_images() -> torch.Tensor:
    """The training images, then each one slanted (image i's slanted copy is i + len(plain)), in ``[-1, 1]``."""
    plain, _ = data.load("train")
    return torch.cat([plain, _slanted(plain)])


def train_vae(out: Path, comps: SDComponents, recipe: Recipe, progress: bool = True, save_every: int = 100
              ) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """Train the VAE, then set its latent scaling from its posterior means over the training images.
    Returns the record and those posteriors (mean and std, unscaled), which the UNet's training draws from."""
    vae = comps.vae.train()
    images = _training_images()  # the VAE must reconstruct what the UNet will draw
    n_plain = len(images) // 2
    params = dict(vae.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=recipe.vae_lr, weight_decay=0.0)

    def loss_fn(step):
        gen = _generator(recipe, "vae", step)
        idx = torch.randint(n_plain, (recipe.vae_batch,), generator=gen)
        slanted = torch.rand(recipe.vae_batch, generator=gen) < recipe.slant_share
        x = images[idx + n_plain * slanted]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        return (vae.decode(z).sample - x).abs().mean() + recipe.vae_kl_weight * _kl_per_element(posterior)

    training = Training(params, opt, out / "checkpoints" / "vae.pt", save_every=save_every,
                        scheduler=_cosine(opt, recipe.vae_steps), desc="VAE")
    losses = training.run(recipe.vae_steps, loss_fn, progress)
    vae.eval()
    with torch.no_grad():
        posteriors = [vae.encode(x).latent_dist for x in images.split(256)]
        mean, std = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])
        scaling = 1.0 / float(mean.std())
        vae.register_to_config(scaling_factor=scaling)
        errors = {}
        held_named, _ = data.load("heldout", range(9))
        held_nines, _ = data.load("heldout", [data.UNSEEN])
        for name, held in (("named digits", held_named), ("nines (never named)", held_nines),
                           ("slanted named digits", _slanted(held_named))):
            rec = torch.cat([vae.decode(vae.encode(x).latent_dist.mean).sample for x in held.split(256)])
            errors[name] = float((data.to_unit(rec) - data.to_unit(held)).abs().mean())
    return {"steps": recipe.vae_steps, "final_loss": _tail(losses), "scaling_factor": scaling,
            "heldout_reconstruction_mae": errors, "seconds": training.seconds}, (mean, std)


def train_unet(out: Path, comps: SDComponents, recipe: Recipe, posterior: tuple[torch.Tensor, torch.Tensor],
               progress: bool = True, save_every: int = 100) -> dict:
    """Train the UNet and the text encoder on latents drawn from the fixed VAE's ``posterior`` (mean and std
    of every training image, then of its slanted copy: :func:`train_vae`'s), scaled as the VAE's config says."""
    plain, labels = data.load("train")
    mean, std = (part * comps.vae.config.scaling_factor for part in posterior)
    ids = comps.tokenizer(data.captions(), padding="max_length",
                          max_length=comps.tokenizer.model_max_length, return_tensors="pt").input_ids
    schedule = comps.schedule  # VPSchedule.discrete of the training betas: owns the forward noising
    unet, encoder = comps.unet.train(), comps.text_encoder.train()
    params = {f"unet.{n}": p for n, p in unet.named_parameters()}
    params.update({f"text_encoder.{n}": p for n, p in encoder.named_parameters()})
    opt = torch.optim.AdamW(params.values(), lr=recipe.unet_lr, weight_decay=0.0)

    def loss_fn(step):
        gen = _generator(recipe, "unet", step)
        idx, caption, slanted = data.draw_examples(labels, recipe.unet_batch, recipe.generic_share,
                                                   recipe.drop_prompt, gen, recipe.slant_share)
        idx = idx + len(plain) * slanted
        z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        t = torch.randint(len(comps.betas), (recipe.unet_batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        cond = encoder(ids[caption])[0]
        pred = unet(schedule.add_noise(z0, noise, t), t, encoder_hidden_states=cond).sample
        return F.mse_loss(pred, noise)

    training = Training(params, opt, out / "checkpoints" / "unet.pt", save_every=save_every, ema_decay=recipe.unet_ema,
                        scheduler=_cosine(opt, recipe.unet_steps, recipe.unet_warmup), desc="UNet")
    losses = training.run(recipe.unet_steps, loss_fn, progress)
    with torch.no_grad():  # sample with the moving average of the weights
        for name, p in params.items():
            p.copy_(training.ema[name])
    unet.eval(), encoder.eval()
    return {"steps": recipe.unet_steps, "final_loss": _tail(losses), "seconds": training.seconds}


def _tail(losses, n: int = 50) -> float:
    """The mean of the last ``n`` losses: one batch's loss is noisy."""
    return sum(losses[-n:]) / len(losses[-n:])


def save_pipeline(comps: SDComponents, folder: Path) -> Path:
    """The components as ``StableDiffusionPipeline.save_pretrained`` writes them (safetensors), with a
    DPM-Solver++ multistep scheduler on the components' own training betas: named as Stable Diffusion's
    (:data:`~stable_diffusion.components.SD_BETAS`) when they are those, listed (float64 text) otherwise."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    betas = SD_BETAS if torch.equal(comps.betas, scaled_linear_betas()) else \
        {"num_train_timesteps": len(comps.betas), "trained_betas": comps.betas.tolist()}
    scheduler = DPMSolverMultistepScheduler(**betas, prediction_type="epsilon", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
                                   unet=comps.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def train(out: Path, recipe: Recipe = Recipe(), export: Path | None = None, progress: bool = True,
          command: str = "stable_diffusion.digits.train.train()", checkpoint_every: int = 100) -> dict:
    """Train all three stages in ``out`` (resuming whatever is there) and write the pipeline
    to ``export`` (default ``out/pipeline``), the classifier beside it, and ``recipe.json``:
    the command, the recipe, each stage's final loss. The times differ on every run, so they go to
    ``out/timing.json`` (untracked) and the returned record's ``timing``, not into the exported
    recipe: each stage's training steps summed over every run that contributed, their total
    (``seconds``), and ``wall_seconds_of_last_run`` (this call's, set-up and export included)."""
    start = time.perf_counter()
    out = Path(out)
    files.claim(out, asdict(recipe), "training folder")
    with files.exclusive(out):
        classifier, record_classifier = train_classifier(out, recipe, progress, checkpoint_every)
        comps = build(recipe.seed)
        record_vae, posterior = train_vae(out, comps, recipe, progress, checkpoint_every)
        record_unet = train_unet(out, comps, recipe, posterior, progress, checkpoint_every)
    export = Path(export or out / "pipeline")
    save_pipeline(comps, export)
    files.save_tensors(classifier.state_dict(), export.parent / CLASSIFIER_FILE)
    stages = {"classifier": record_classifier, "vae": record_vae, "unet": record_unet}
    timing = {name: stage.pop("seconds") for name, stage in stages.items()}
    timing.update(seconds=sum(timing.values()), wall_seconds_of_last_run=time.perf_counter() - start)
    record = {"command": command, "recipe": asdict(recipe), **stages,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    files.write_json(export / "recipe.json", record, significant=6)
    files.write_json(out / "timing.json", timing, significant=6)
    return {**record, "timing": timing}

