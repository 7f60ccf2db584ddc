"""An optimizer that exists only in the tests, to show users' own optimizers run unchanged."""

import torch


class SignSGD(torch.optim.Optimizer):
    """θ ← θ − lr · sign(g): a user's optimizer whose step takes no closure."""

    def __init__(self, params, lr: float = 1e-3):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad.sign())
