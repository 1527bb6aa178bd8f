"""VP noise schedules (paper Sec. 2.1, App. E; DPM-Solver App. D.4).

Every schedule is variance preserving: ``alpha_t**2 + sigma_t**2 = 1`` and the
half log-SNR is ``lambda_t = log(alpha_t) - log(sigma_t)``. Time runs from
``t_start`` (noise, ``T``) down to ``t_end`` (data, close to 0); a grid may also run up, from
data to noise, which encodes data into its noise by the ODE (DDIM inversion).

Methods accept a Python float or a tensor; a float is evaluated in float64 and the
result is a 0-d float64 tensor, a tensor keeps its dtype and device.
"""
from __future__ import annotations

import math
import operator

import torch

SPACINGS = ("uniform", "logSNR", "quadratic")


def as_steps(steps, what: str = "steps") -> int:
    """A number of steps: any integer-like value (``int``, ``numpy.int64``, a 0-d integer tensor) >= 1."""
    try:
        n = operator.index(steps)
    except TypeError:
        raise ValueError(f"{what} must be an integer >= 1, got {steps!r}") from None
    if n < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {steps!r}")
    return n


def _as_tensor(t) -> torch.Tensor:
    return t if torch.is_tensor(t) else torch.as_tensor(t, dtype=torch.float64)


class VPSchedule:
    """A VP schedule given by ``log alpha_t``; build one with ``linear``, ``cosine`` or ``discrete``."""

    T: float = 1.0       # largest admissible time
    t_min: float = 0.0   # times must stay strictly above this (discrete: 1/N)

    # -- the three constructors ----------------------------------------------------
    @staticmethod
    def linear(beta_min: float = 0.1, beta_max: float = 20.0) -> "VPSchedule":
        return LinearVP(beta_min, beta_max)

    @staticmethod
    def cosine(s: float = 0.008) -> "VPSchedule":
        return CosineVP(s)

    @staticmethod
    def discrete(betas) -> "VPSchedule":
        return DiscreteVP(betas)

    # -- to implement ----------------------------------------------------------------
    def log_alpha(self, t):
        raise NotImplementedError

    def dlog_alpha_dt(self, t):
        """``f(t) = d log(alpha_t)/dt``, the drift coefficient of eq. 2 (``g^2 = -2 f`` for VP)."""
        raise NotImplementedError

    def inverse_lambda(self, lam):
        """The time ``t`` with ``lambda_(t) = lam``."""
        raise NotImplementedError

    # -- derived quantities ------------------------------------------------------------
    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def rho(self, t):
        """``rho = sigma_t / alpha_t = exp(-lambda_t)``, the time variable of eq. 10."""
        return torch.exp(-self.lambda_(t))

    def time_of_rho(self, rho):
        return self.inverse_lambda(-torch.log(_as_tensor(rho)))

    def grid(self, steps: int, spacing: str = "logSNR", t_start: float | None = None,
             t_end: float = 1e-3) -> torch.Tensor:
        """``steps + 1`` times from ``t_start`` to ``t_end`` (float64): decreasing to sample,
        increasing to encode.

        ``uniform`` is uniform in t, ``logSNR`` uniform in lambda, ``quadratic`` uniform in
        sqrt(t) (DPM-Solver's three choices).
        """
        t_start = self.T if t_start is None else float(t_start)
        self.check_times(t_start, t_end)
        steps = as_steps(steps)
        if spacing == "uniform":
            ts = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
        elif spacing == "quadratic":
            ts = torch.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1, dtype=torch.float64) ** 2
        elif spacing == "logSNR":
            lams = torch.linspace(float(self.lambda_(t_start)), float(self.lambda_(t_end)), steps + 1,
                                  dtype=torch.float64)
            ts = self.inverse_lambda(lams)
        else:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        ts[0], ts[-1] = t_start, t_end   # exact ends, whatever round-off the inverse made
        return ts

    def check_times(self, t_start: float, t_end: float) -> None:
        for name, t in (("t_end", t_end), ("t_start", t_start)):
            if not t > 0:
                raise ValueError(f"{name} must be > 0 (the ODE is singular at t = 0), got {name}={t}")
            if t > self.T + 1e-12:
                raise ValueError(f"{name} must be <= {self.T} for {self!r}, got {name}={t}")
            if t < self.t_min - 1e-12:
                raise ValueError(f"{name} must be >= {self.t_min} for {self!r}, got {name}={t}")
        if t_end == t_start:
            raise ValueError(f"t_end must differ from t_start (t_start > t_end samples, t_start < t_end "
                             f"encodes), got t_start={t_start}, t_end={t_end}")


class LinearVP(VPSchedule):
    """``beta(t) = beta_min + t (beta_max - beta_min)`` (score_sde's VP SDE)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)

    def __repr__(self):
        return f"VPSchedule.linear(beta_min={self.beta_0}, beta_max={self.beta_1})"

    def log_alpha(self, t):
        t = _as_tensor(t)
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def dlog_alpha_dt(self, t):
        t = _as_tensor(t)
        return -0.5 * t * (self.beta_1 - self.beta_0) - 0.5 * self.beta_0

    def inverse_lambda(self, lam):
        lam = _as_tensor(lam)
        tmp = 2.0 * (self.beta_1 - self.beta_0) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        return tmp / (torch.sqrt(self.beta_0 ** 2 + tmp) + self.beta_0) / (self.beta_1 - self.beta_0)


class CosineVP(VPSchedule):
    """Improved-DDPM cosine schedule, continuous in t, used up to ``T = 0.9946``."""

    T = 0.9946

    def __init__(self, s: float = 0.008):
        if not s > 0:
            raise ValueError(f"s must be > 0, got s={s}")
        self.s = float(s)
        self._log_alpha_0 = math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def __repr__(self):
        return f"VPSchedule.cosine(s={self.s})"

    def _angle(self, t):
        return (_as_tensor(t) + self.s) / (1.0 + self.s) * math.pi / 2.0

    def log_alpha(self, t):
        return torch.log(torch.cos(self._angle(t))) - self._log_alpha_0

    def dlog_alpha_dt(self, t):
        return -torch.tan(self._angle(t)) * math.pi / (2.0 * (1.0 + self.s))

    def inverse_lambda(self, lam):
        lam = _as_tensor(lam)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        return torch.arccos(torch.exp(log_alpha + self._log_alpha_0)) * 2.0 * (1.0 + self.s) / math.pi - self.s


class DiscreteVP(VPSchedule):
    """A 1000-step (or N-step) model's betas, placed at ``t_n = (n + 1)/N``, with
    ``log alpha`` piecewise linear in ``t``. The inverse maps lambda to ``log alpha``
    (``-log(1 + e^{-2 lambda})/2``, exact for VP) and interpolates back, so it is the
    exact inverse of ``lambda_`` (as DPM-Solver's ``NoiseScheduleVP``)."""

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D table of at least 2 values, each in (0, 1)")
        self.betas = betas
        n = betas.numel()
        self.t_min = 1.0 / n
        self._t = torch.arange(1, n + 1, dtype=torch.float64) / n
        self._log_alpha = 0.5 * torch.cumsum(torch.log1p(-betas), 0)

    def __repr__(self):
        return f"VPSchedule.discrete(<{self.betas.numel()} betas>)"

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, n) -> torch.Tensor:
        """DDPM's forward noising at integer training steps ``n`` (one per row of ``x0``), what a
        discrete-time network learns to denoise: ``sqrt(abar_n) x0 + sqrt(1 - abar_n) eps`` with
        ``abar_n = prod_{k <= n} (1 - beta_k)``, i.e. ``alpha(t_n) x0 + sigma(t_n) eps`` at
        ``t_n = (n + 1)/N``. As diffusers' ``DDPMScheduler.add_noise``, ``abar`` is rounded to
        ``x0``'s dtype before the square roots: trained weights saw exactly these values."""
        n = torch.as_tensor(n, device=self.betas.device)
        abar = torch.cumprod(1 - self.betas, 0).to(dtype=x0.dtype)[n].to(x0.device)
        abar = abar.view(-1, *[1] * (x0.dim() - 1))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def model_time(self, t):
        """The training-step index ``n = N t - 1`` that a discrete-time network (a DDPM or Stable
        Diffusion UNet) takes at continuous ``t``: real-valued, so the network is interpolated between
        its training steps, not snapped (DPM-Solver's ``model_wrapper``). ``t = t_min = 1/N`` is step 0."""
        return self.betas.numel() * _as_tensor(t) - 1

    @staticmethod
    def _interp(x, xp, fp):
        """Piecewise-linear interpolation of (xp, fp), xp increasing, extrapolating linearly."""
        x = _as_tensor(x)
        xp, fp = xp.to(x), fp.to(x)
        i = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, xp.numel() - 1)
        x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
        return f0 + (x - x0) * (f1 - f0) / (x1 - x0)

    def log_alpha(self, t):
        return self._interp(t, self._t, self._log_alpha)

    def dlog_alpha_dt(self, t):
        t = _as_tensor(t)
        xp, fp = self._t.to(t), self._log_alpha.to(t)
        i = torch.searchsorted(xp, t.detach().contiguous()).clamp(1, xp.numel() - 1)
        return (fp[i] - fp[i - 1]) / (xp[i] - xp[i - 1])

    def inverse_lambda(self, lam):
        lam = _as_tensor(lam)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        return self._interp(log_alpha, self._log_alpha.flip(0), self._t.flip(0))
