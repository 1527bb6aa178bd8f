"""A resumable optimisation loop: stylization, the digits text-to-image model and the digits DDPM++
train with it.

The loop's state (the trained tensors, optimizer, learning-rate schedule, step, losses, the global
random generator's state (dropout draws from it) and an optional exponential moving average of the
tensors) is written atomically to ``checkpoint``
every ``save_every`` steps and read back when the loop starts again, so a killed run loses at
most ``save_every`` steps and then continues as if it had never stopped: each step's randomness
must come from the step index (``loss_fn(step)``), not from a global generator. Under several
processes (``accelerate launch``) gradients are averaged before each step and only the first
process writes. ``seconds`` sums the steps' wall time over every run that contributed.
What the state was made with is the caller's to key (``files.claim``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from adjointdpm.tools import files


class Training:
    """Gradient-descent optimisation of ``params`` (a dict name -> tensor) that survives interruption;
    ``grad_clip`` clips the gradients' global norm before each step. ``ema_decay`` keeps an exponential
    moving average of the weights; with ``ema_warmup`` its decay after ``n`` updates is score_sde's
    ``min(ema_decay, (1 + n) / (10 + n))``, so that the random initial weights do not linger in it
    (a constant 0.999 still holds ``0.999^n`` of them: 2 % after 3800 steps)."""

    def __init__(self, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, checkpoint: Path, *,
                 save_every: int = 10, scheduler=None, ema_decay: float | None = None, ema_warmup: bool = False,
                 grad_clip: float | None = None, accelerator=None, desc: str = "train"):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.params, self.optimizer, self.scheduler = params, optimizer, scheduler
        self.checkpoint, self.save_every, self.accelerator, self.desc = Path(checkpoint), save_every, accelerator, desc
        self.ema_decay, self.ema_warmup, self.grad_clip = ema_decay, ema_warmup, grad_clip
        self.ema = {n: p.detach().clone() for n, p in params.items()} if ema_decay else None
        self.step, self.losses, self.seconds = 0, [], 0.0

    @property
    def main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def _state(self) -> dict:
        return {"step": self.step, "losses": self.losses, "seconds": self.seconds, "rng": torch.get_rng_state(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "params": {n: p.detach() for n, p in self.params.items()}, "ema": self.ema}

    def resume(self) -> int:
        """Load the checkpoint if there is one; returns the step it had reached. A checkpoint that
        cannot be read (truncated, corrupt, not ours) is named and the training starts over."""
        if not self.checkpoint.exists():
            return 0
        device = next(iter(self.params.values())).device
        try:
            state = files.load(self.checkpoint, "training checkpoint", map_location=device)
            if set(state.get("params", {})) != set(self.params):
                raise ValueError(f"training checkpoint {self.checkpoint} holds other tensors than this training's")
        except (ValueError, AttributeError) as err:
            print(f"{err}: starting the training over", file=sys.stderr)
            return 0
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema = state["ema"]
        self.step, self.losses, self.seconds = state["step"], list(state["losses"]), state.get("seconds", 0.0)
        if "rng" in state:  # what draws from the global generator (dropout) continues as if never stopped
            torch.set_rng_state(state["rng"].cpu())
        return self.step

    def run(self, total: int, loss_fn: Callable[[int], torch.Tensor], progress: bool = True) -> list[float]:
        """Steps ``self.step .. total - 1``: ``loss_fn(step).backward()``, then one optimizer step."""
        if self.resume() > total:  # fewer steps than the checkpoint holds: its result is not this run's
            raise ValueError(f"training checkpoint {self.checkpoint} holds {self.step} steps, more than the {total} "
                             "asked for: ask for at least as many (more continue the training), or give another folder")
        for p in self.params.values():
            p.requires_grad_(True)
        bar = tqdm(total=total, initial=min(self.step, total), desc=self.desc, disable=not (progress and self.main))
        while self.step < total:
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(self.step)
            loss.backward()
            if self.accelerator is not None and self.accelerator.num_processes > 1:
                for p in self.params.values():
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.grad_clip)
            self.optimizer.step()
            if self.scheduler:
                self.scheduler.step()
            if self.ema is not None:
                n = self.step + 1  # score_sde counts this update
                decay = min(self.ema_decay, (1 + n) / (10 + n)) if self.ema_warmup else self.ema_decay
                with torch.no_grad():
                    for name, p in self.params.items():
                        self.ema[name].lerp_(p.detach(), 1 - decay)
            self.step += 1
            if self.accelerator is not None and self.accelerator.num_processes > 1:  # the step's loss, not this share's
                loss = self.accelerator.reduce(loss.detach(), reduction="mean")
            self.losses.append(loss.item())
            self.seconds += time.perf_counter() - start
            bar.update()
            bar.set_postfix(loss=f"{self.losses[-1]:.4g}", refresh=False)
            if self.main and (self.step % self.save_every == 0 or self.step == total):
                files.save_atomic(self._state(), self.checkpoint)
        bar.close()
        for p in self.params.values():
            p.requires_grad_(False)
        return self.losses
