"""An adaptive Runge-Kutta solver for ODEs over tensors (for the probability-flow likelihood).

Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae": the 5th-order solution
is propagated, the embedded 4th-order one estimates the local error, and the step size is
controlled as in Hairer, Norsett & Wanner, "Solving Ordinary Differential Equations I", II.4
(also scipy's ``RK45``). Written over torch tensors so it runs where the network runs (CPU or
GPU) without copying the state to the host; only the accept/reject decision is read back,
once per step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

# Butcher tableau (c, A, the 5th-order weights B5 = the last row of A: "first same as last")
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_A[6] + (0.0,), _B4))  # 5th minus 4th order weights

State = tuple[torch.Tensor, ...]


def _combine(y: State, h: float, weights, ks: list[State]) -> State:
    out = []
    for j, y_j in enumerate(y):
        acc = y_j.clone()
        for w, k in zip(weights, ks):
            if w:
                acc.add_(k[j], alpha=h * w)
        out.append(acc)
    return tuple(out)


def _error_norm(y: State, y_new: State, err: State, rtol: float, atol: float) -> torch.Tensor:
    """RMS over all components of err / (atol + rtol max(|y|, |y_new|)) (a 0-d tensor)."""
    total, count = 0.0, 0
    for a, b, e in zip(y, y_new, err):
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        total = total + (e / scale).double().square().sum()
        count += e.numel()
    return (total / max(count, 1)).sqrt()


def dormand_prince(f: Callable[[float, State], State], t0: float, t1: float, y0: State, rtol: float = 1e-5,
                   atol: float = 1e-5, max_steps: int = 100_000) -> tuple[State, int]:
    """Solve dy/dt = f(t, y) from ``t0`` to ``t1`` (> t0) with adaptive steps; returns ``(y(t1), evaluations of f)``.

    ``y`` is a tuple of tensors (each component keeps its dtype and device). A step of size h is
    accepted when the RMS of the error estimate, scaled by atol + rtol |y|, is at most 1; the
    next size is h min(10, max(0.2, 0.9 err^(-1/5))). Raises ``RuntimeError`` when the error is
    not finite, the step size vanishes, or ``max_steps`` steps do not reach ``t1``.
    """
    if not (t1 > t0):
        raise ValueError(f"need t1 > t0, got {t0} and {t1}")
    y = tuple(y0)
    k1 = f(t0, y)
    nfe = 1
    # initial step (Hairer et al. II.4): h = 0.01 ||y|| / ||f(y)|| in the error norm's scale
    d0 = float(_error_norm(y, y, y, rtol, atol))
    d1 = float(_error_norm(y, y, k1, rtol, atol))
    h = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6
    h = min(h, t1 - t0)
    t = t0
    for _ in range(max_steps):
        if t >= t1:
            return y, nfe
        h = min(h, t1 - t)
        ks = [k1]
        for stage in range(1, 7):
            y_stage = _combine(y, h, _A[stage], ks)
            ks.append(f(t + _C[stage] * h, y_stage))
        nfe += 6
        y_new = y_stage  # the 7th stage is evaluated at the 5th-order solution (FSAL)
        err = _combine(tuple(torch.zeros_like(c) for c in y), h, _E, ks)
        norm = float(_error_norm(y, y_new, err, rtol, atol))
        if not math.isfinite(norm):
            raise RuntimeError(f"the ODE solution is not finite at t = {t:.4g}")
        if norm <= 1.0:
            t = t1 if t1 - (t + h) <= 1e-12 * max(1.0, abs(t1)) else t + h
            y, k1 = y_new, ks[6]
            h *= min(10.0, 0.9 * norm ** -0.2) if norm > 0 else 10.0
        else:
            h *= max(0.2, 0.9 * norm ** -0.2)
            if h <= 1e-14 * max(1.0, abs(t)):
                raise RuntimeError(f"the ODE solver's step size vanished at t = {t:.6g} (a singularity or a "
                                   f"diverging right-hand side)")
    raise RuntimeError(f"the ODE solver did not reach t = {t1:.4g} within {max_steps} steps (at t = {t:.4g})")
