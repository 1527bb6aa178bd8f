"""Load score_sde's released VP CIFAR-10 checkpoints safely, as an adjointdpm eps-model.

A checkpoint (``checkpoint_8.pth`` etc.) is a dict with ``model`` (the state_dict of
``DataParallel(NCSNpp)``, keys prefixed ``module.``), ``ema`` (``shadow_params`` in
``model.parameters()`` order), ``optimizer`` and ``step``. It is read with
``torch.load(..., weights_only=True)``, so no code in the file runs.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adjointdpm.tools import files

from .ddpmpp import DDPMpp


class ScoreSDEEps(nn.Module):
    """``model(x, t, cond)`` for adjointdpm: epsilon at continuous VP time ``t``
    (the network is called with ``labels = t * 999``; data in [-1, 1]; ``cond`` unused)."""

    def __init__(self, net: DDPMpp):
        super().__init__()
        self.net = net

    def forward(self, x, t, cond=None):
        return self.net(x, t * 999)


def _check_state_dict(net: nn.Module, state: dict, path) -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{title} ({len(items)}): " + ", ".join(items[:3]) + (" ..." if len(items) > 3 else "")
                 for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("shape differences", shapes)) if items]
        raise ValueError(f"checkpoint {path} does not match {type(net).__name__} (another --config?): "
                         + "; ".join(parts))


def load_score_sde(path, config: str = "cifar10_ddpmpp_deep_continuous", *, ema: bool = True,
                   map_location="cpu", **net_kwargs) -> ScoreSDEEps:
    """Read a score_sde checkpoint into :class:`DDPMpp` (EMA weights by default) and wrap
    it as an eps-model. ``net_kwargs`` override the architecture (tests use tiny ones)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint path {path} is not a file: download score_sde's checkpoint "
                         f"(e.g. checkpoint_8.pth of {config}) and pass its local path")
    ckpt = files.load(path, "checkpoint", map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise ValueError(f"checkpoint {path} is not a score_sde checkpoint: expected a dict with a 'model' "
                         f"state_dict, got {type(ckpt).__name__}"
                         + (f" with keys {sorted(ckpt)[:6]}" if isinstance(ckpt, dict) else ""))
    net = DDPMpp(config, **net_kwargs)
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    _check_state_dict(net, state, path)
    net.load_state_dict(state)
    if ema:
        shadow = (ckpt.get("ema") or {}).get("shadow_params") if isinstance(ckpt.get("ema"), dict) else None
        params = list(net.parameters())
        if shadow is None:
            raise ValueError(f"checkpoint {path} has no ema.shadow_params: pass ema=False to use the raw weights")
        bad = [i for i, (s, p) in enumerate(zip(shadow, params)) if tuple(s.shape) != tuple(p.shape)]
        if len(shadow) != len(params) or bad:
            raise ValueError(f"checkpoint {path}: ema.shadow_params has {len(shadow)} tensors for {len(params)} "
                             f"parameters" + (f"; shape differences at indices {bad[:10]}" if bad else ""))
        with torch.no_grad():
            for s, p in zip(shadow, params):
                p.copy_(s)
    return ScoreSDEEps(net.eval())
