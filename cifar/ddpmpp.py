"""DDPM++ (score_sde's ``NCSNpp`` with the VP CIFAR-10 configs), written to match the
released checkpoints' state_dict key for key: a flat ``all_modules`` list in
construction order, BigGAN residual blocks with skip rescaling, DDPM-style attention at
16x16, positional time embedding, GroupNorm(min(C/4, 32), eps 1e-6) and swish.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CONFIGS = {
    # name: (nf, ch_mult, num_res_blocks, attn_resolutions, image_size)
    "cifar10_ddpmpp_continuous": (128, (1, 2, 2, 2), 4, (16,), 32),
    "cifar10_ddpmpp_deep_continuous": (128, (1, 2, 2, 2), 8, (16,), 32),
    # trained here on scikit-learn's handwritten digits (cifar.train_digits): 16x16, as 32x32 does not
    # train within 25 minutes on 2 CPU cores and the 8x8 scans hold nothing finer
    "digits_ddpmpp": (32, (1, 2, 2), 1, (8,), 16),
}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding, sine half first: ``freqs = exp(-log(10000) k / (half - 1))``."""
    half = dim // 2
    dtype = timesteps.dtype if timesteps.is_floating_point() else torch.float32
    freqs = torch.exp(-math.log(max_positions) * torch.arange(half, dtype=dtype, device=timesteps.device)
                      / (half - 1))
    angles = timesteps.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class NIN(nn.Module):
    """A 1x1 linear map over channels stored as ``W: (in, out)``: ``y = x @ W + b``
    (the transpose of ``nn.Linear``'s layout, as in the checkpoints)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(cin, cout))
        self.b = nn.Parameter(torch.zeros(cout))

    def forward(self, x):
        return torch.einsum("bchw,cd->bdhw", x, self.W) + self.b[:, None, None]


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels, residual, divided by sqrt(2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.GroupNorm_0 = _norm(channels)
        self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3 = (NIN(channels, channels) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(y), self.NIN_1(y), self.NIN_2(y)
        weights = torch.einsum("bcq,bck->bqk", q.reshape(b, c, h * w), k.reshape(b, c, h * w)) * c ** -0.5
        out = torch.einsum("bqk,bck->bcq", weights.softmax(-1), v.reshape(b, c, h * w)).reshape(b, c, h, w)
        return (x + self.NIN_3(out)) / math.sqrt(2.0)


class ResBlock(nn.Module):
    """BigGAN residual block: norm, swish, (resample), conv, + time bias, norm, swish,
    dropout, conv; a 1x1 conv on the skip when the shape changes; sum divided by sqrt(2)."""

    def __init__(self, cin: int, cout: int | None = None, temb_dim: int = 512, up: bool = False,
                 down: bool = False, dropout: float = 0.1):
        super().__init__()
        cout = cout or cin
        self.up, self.down = up, down
        self.GroupNorm_0 = _norm(cin)
        self.Conv_0 = _conv3x3(cin, cout)
        self.Dense_0 = nn.Linear(temb_dim, cout)
        self.GroupNorm_1 = _norm(cout)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv3x3(cout, cout)
        self.Conv_2 = nn.Conv2d(cin, cout, 1) if (cin != cout or up or down) else None

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, temb):
        h = self._resample(F.silu(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h) + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0)


class DDPMpp(nn.Module):
    """``eps = net(x, labels)`` with ``labels = t * 999`` for continuous VP time ``t``.

    ``config`` names one of :data:`CONFIGS`; ``nf``/``num_res_blocks``/... override it
    (a tiny network of the same code for tests: ``DDPMpp(nf=16, num_res_blocks=1)``).
    ``image_size`` is the side of the images it was built for (the config's, unless overridden).
    """

    def __init__(self, config: str = "cifar10_ddpmpp_deep_continuous", *, nf: int | None = None,
                 ch_mult=None, num_res_blocks: int | None = None, attn_resolutions=None,
                 image_size: int | None = None, channels: int = 3, dropout: float = 0.1):
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"config must be one of {tuple(CONFIGS)}, got {config!r}")
        d_nf, d_mult, d_blocks, d_attn, d_size = CONFIGS[config]
        self.image_size = image_size = image_size or d_size
        self.nf = nf = nf or d_nf
        ch_mult = tuple(ch_mult or d_mult)
        self.num_res_blocks = blocks = num_res_blocks or d_blocks
        self.attn_resolutions = attn = tuple(d_attn if attn_resolutions is None else attn_resolutions)
        self.num_resolutions = len(ch_mult)
        resolutions = [image_size // 2 ** i for i in range(len(ch_mult))]
        temb_dim = 4 * nf
        self.register_buffer("sigmas", torch.zeros(1000))  # score_sde keeps it; VP never reads it
        block = lambda cin, cout=None, **kw: ResBlock(cin, cout, temb_dim=temb_dim, dropout=dropout, **kw)

        modules = [nn.Linear(nf, temb_dim), nn.Linear(temb_dim, temb_dim), _conv3x3(channels, nf)]
        skips, cin = [nf], nf
        for level, mult in enumerate(ch_mult):                      # down path
            for _ in range(blocks):
                modules.append(block(cin, nf * mult))
                cin = nf * mult
                if resolutions[level] in attn:
                    modules.append(AttnBlock(cin))
                skips.append(cin)
            if level != len(ch_mult) - 1:
                modules.append(block(cin, down=True))
                skips.append(cin)
        modules += [block(cin), AttnBlock(cin), block(cin)]         # middle
        for level in reversed(range(len(ch_mult))):                 # up path
            for _ in range(blocks + 1):
                modules.append(block(cin + skips.pop(), nf * ch_mult[level]))
                cin = nf * ch_mult[level]
            if resolutions[level] in attn:
                modules.append(AttnBlock(cin))
            if level != 0:
                modules.append(block(cin, up=True))
        modules += [_norm(cin), _conv3x3(cin, channels)]
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x, labels):
        mods = iter(self.all_modules)
        temb = next(mods)(timestep_embedding(labels, self.nf))
        temb = next(mods)(F.silu(temb))
        hs = [next(mods)(x)]
        for level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(next(mods)(hs[-1], temb))
        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if level != 0:
                h = next(mods)(h, temb)
        norm, conv = next(mods), next(mods)
        return conv(F.silu(norm(h)))
