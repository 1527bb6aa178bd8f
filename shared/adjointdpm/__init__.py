"""adjointdpm: gradients through diffusion-model sampling with the adjoint sensitivity method.

    x0 = sample(eps_model, x_T, schedule, cond=c, steps=20, solver="rk4", space="reparam",
                gradient=Adjoint())
    loss(x0).backward()   # x_T.grad, c.grad and the model's parameters' .grad
"""
from .grad import Adjoint, AdjointDEIS, Backprop, Checkpoint, Gradient, ReversibleAdjoint
from .gradients import GRADIENTS, make_gradient
from .mixture import GaussianMixture
from .cfg import CFG
from .ode import SolveInfo
from .reference import TorchdiffeqAdjoint, TorchsdeAdjoint
from .sampling import sample
from .schedule import VPSchedule
from .solvers import SOLVERS, steps_for_nfe

__all__ = ["sample", "VPSchedule", "CFG", "Backprop", "Checkpoint", "Adjoint", "AdjointDEIS", "ReversibleAdjoint",
           "TorchdiffeqAdjoint", "TorchsdeAdjoint",
           "Gradient", "GRADIENTS", "make_gradient", "SolveInfo", "SOLVERS", "steps_for_nfe", "GaussianMixture"]
