"""Optimizers written from their update equations, to be read as a lesson.

Each class is a plain torch.optim.Optimizer whose `step` is its equations, line by line.
Notation, per parameter tensor θ at step t = 1, 2, ...:

    g      the gradient of the loss at θ (plus λθ when weight_decay λ > 0: L2 regularisation)
    η      the learning rate (lr)
    ⊙, /   element-wise product and division; √ element-wise square root

Every optimizer here is checked in tests/test_textbook.py against its torch.optim
counterpart for 100 steps on a real model. They follow torch.optim's formulation where
textbooks write the same method differently (noted in each docstring), and they avoid the
two bugs of the fourth tutorial's code: Adam's bias correction divides by (1 − β^t), not by
(1 − β), and RMSProp with momentum stores its running average of squared gradients.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class _Textbook(Optimizer):
    """Shared plumbing: loop over parameters with gradients, keep per-parameter state."""

    def _gradient(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        g = p.grad
        if group.get("weight_decay", 0.0) != 0.0:
            g = g + group["weight_decay"] * p  # L2 regularisation: d/dθ (λ/2)‖θ‖²
        return g

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                self.update(p, self._gradient(p, group), state, group)
        return loss

    def update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(_Textbook):
    """Stochastic gradient descent.

    θ ← θ − η g
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def update(self, p, g, state, group):
        p.sub_(group["lr"] * g)


class Momentum(_Textbook):
    """SGD with heavy-ball momentum (velocity b, momentum μ).

        b ← μ b + g          (b starts as the first gradient)
        θ ← θ − η b

    Goodfellow et al. write v ← μ v − η g, θ ← θ + v: the same steps for a constant η,
    with v = −η b.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def update(self, p, g, state, group):
        p.sub_(group["lr"] * self.velocity(g, state, group))

    @staticmethod
    def velocity(g, state, group) -> torch.Tensor:
        """b ← μ b + g, with b = g at the first step."""
        if "velocity" not in state:
            state["velocity"] = g.clone()
        else:
            state["velocity"].mul_(group["momentum"]).add_(g)
        return state["velocity"]


class Nesterov(Momentum):
    """SGD with Nesterov momentum.

        b ← μ b + g          (b starts as the first gradient)
        θ ← θ − η (g + μ b)

    Goodfellow et al. evaluate the gradient at the look-ahead point θ + μ v; rewritten in
    terms of that look-ahead point, the update becomes the two lines above (Sutskever et
    al., 2013), which need only the gradient at the current parameters.
    """

    def update(self, p, g, state, group):
        b = self.velocity(g, state, group)
        p.sub_(group["lr"] * (g + group["momentum"] * b))


class Adagrad(_Textbook):
    """AdaGrad: each weight's step shrinks with the sum of its squared gradients.

    r ← r + g ⊙ g                               (r starts at initial_accumulator_value)
    η_t = η / (1 + (t − 1) lr_decay)
    θ ← θ − η_t g / (√r + δ)                    (δ = eps, 1e-10; the tutorial: 1e-6 ~ 1e-5)
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ):
        super().__init__(
            params,
            {
                "lr": lr,
                "lr_decay": lr_decay,
                "weight_decay": weight_decay,
                "initial_accumulator_value": initial_accumulator_value,
                "eps": eps,
            },
        )

    def update(self, p, g, state, group):
        if "sum_sq" not in state:
            state["sum_sq"] = torch.full_like(p, group["initial_accumulator_value"])
        state["sum_sq"].add_(g * g)
        lr_t = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        p.sub_(lr_t * g / (state["sum_sq"].sqrt() + group["eps"]))


class Adadelta(_Textbook):
    """AdaDelta: steps scaled by the ratio of two running RMS values, so the units match.

    v ← ρ v + (1 − ρ) g ⊙ g                     (running mean of squared gradients)
    Δ = √(u + ε) / √(v + ε) ⊙ g
    u ← ρ u + (1 − ρ) Δ ⊙ Δ                     (running mean of squared updates)
    θ ← θ − η Δ
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps, "weight_decay": weight_decay})

    def update(self, p, g, state, group):
        rho, eps = group["rho"], group["eps"]
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(p)
            state["delta_avg"] = torch.zeros_like(p)
        v, u = state["square_avg"], state["delta_avg"]
        v.mul_(rho).add_((1 - rho) * g * g)
        delta = (u + eps).sqrt() / (v + eps).sqrt() * g
        u.mul_(rho).add_((1 - rho) * delta * delta)
        p.sub_(group["lr"] * delta)


class RMSprop(_Textbook):
    """RMSProp, optionally centred and with momentum.

        v ← α v + (1 − α) g ⊙ g                     (running mean of squared gradients)
        centred:  m ← α m + (1 − α) g;  s = √(v − m ⊙ m) + ε
        else:     s = √v + ε
        momentum μ > 0:  b ← μ b + g / s;  θ ← θ − η b
        else:            θ ← θ − η g / s

    v is stored every step, with or without momentum (the fourth tutorial's code never
    stored it in its momentum variant, so its "running" average was always one gradient).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ):
        super().__init__(
            params,
            {
                "lr": lr,
                "alpha": alpha,
                "eps": eps,
                "weight_decay": weight_decay,
                "momentum": momentum,
                "centered": centered,
            },
        )

    def update(self, p, g, state, group):
        alpha = group["alpha"]
        if "square_avg" not in state:
            state["square_avg"] = torch.zeros_like(p)
            state["grad_avg"] = torch.zeros_like(p)
            state["velocity"] = torch.zeros_like(p)
        v = state["square_avg"]
        v.mul_(alpha).add_((1 - alpha) * g * g)
        if group["centered"]:
            m = state["grad_avg"]
            m.mul_(alpha).add_((1 - alpha) * g)
            s = (v - m * m).sqrt() + group["eps"]
        else:
            s = v.sqrt() + group["eps"]
        if group["momentum"] > 0:
            b = state["velocity"]
            b.mul_(group["momentum"]).add_(g / s)
            p.sub_(group["lr"] * b)
        else:
            p.sub_(group["lr"] * g / s)


class Adam(_Textbook):
    """Adam, optionally AMSGrad.

        m ← β₁ m + (1 − β₁) g                       (first moment)
        v ← β₂ v + (1 − β₂) g ⊙ g                   (second moment)
        m̂ = m / (1 − β₁^t),   v̂ = v / (1 − β₂^t)    (bias correction: β to the power t)
        AMSGrad: v_max ← max(v_max, v) and v̂ = v_max / (1 − β₂^t)
        θ ← θ − η m̂ / (√v̂ + ε)

    The fourth tutorial divided by (1 − β) instead of (1 − β^t): a constant factor that
    never corrects the zero initialisation of m and v.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ):
        super().__init__(
            params,
            {
                "lr": lr,
                "betas": betas,
                "eps": eps,
                "weight_decay": weight_decay,
                "amsgrad": amsgrad,
            },
        )

    def update(self, p, g, state, group):
        self.adam_update(p, g, state, group)

    @staticmethod
    def adam_update(p, g, state, group):
        beta1, beta2 = group["betas"]
        t = state["step"]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            state["max_exp_avg_sq"] = torch.zeros_like(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_((1 - beta1) * g)
        v.mul_(beta2).add_((1 - beta2) * g * g)
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        m_hat_scale = 1 / (1 - beta1**t)  # 1 / (1 - β1^t)
        v_hat_sqrt_scale = (1 - beta2**t) ** 0.5  # √(1 - β2^t)
        denominator = v.sqrt() / v_hat_sqrt_scale + group["eps"]  # √v̂ + ε
        p.sub_(group["lr"] * m_hat_scale * m / denominator)


class AdamW(Adam):
    """AdamW: Adam with weight decay decoupled from the gradient (Loshchilov & Hutter).

    θ ← θ − η λ θ                               (decay first, on the weights themselves)
    then the Adam step of `Adam` with the raw gradient g (no λθ added to it)
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)

    def _gradient(self, p, group):
        return p.grad  # the decay is applied to θ in update, not added to g

    def update(self, p, g, state, group):
        p.mul_(1 - group["lr"] * group["weight_decay"])
        self.adam_update(p, g, state, group)


class Adamax(_Textbook):
    """Adamax: Adam with the infinity norm in place of the second moment.

    m ← β₁ m + (1 − β₁) g
    u ← max(β₂ u, |g| + ε)
    θ ← θ − η / (1 − β₁^t) ⊙ m / u
    """

    def __init__(
        self,
        params,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    def update(self, p, g, state, group):
        beta1, beta2 = group["betas"]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_inf"] = torch.zeros_like(p)
        m, u = state["exp_avg"], state["exp_inf"]
        m.mul_(beta1).add_((1 - beta1) * g)
        torch.maximum(u * beta2, g.abs() + group["eps"], out=u)
        p.sub_(group["lr"] / (1 - beta1 ** state["step"]) * m / u)
