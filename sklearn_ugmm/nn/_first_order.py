"""The kernels' backward passes give first derivatives only: a graph of them is refused.

``torch.autograd.function.once_differentiable`` raises only when an incoming
gradient itself requires grad. A Hessian with respect to the parameters, or
a gradient penalty, asks for the graph of a backward pass whose incoming
gradients are plain tensors: the kernels' contributions to the second
derivative would then be dropped without an error. :func:`first_order_only`
refuses every backward pass that builds a graph (``create_graph=True``: grad
mode is on while it runs) and runs the others without one.
"""

import functools

import torch

__all__ = ["first_order_only"]

SECOND_ORDER_MESSAGE = (
    "The uGMM kernels compute first derivatives only (create_graph=True asked for a graph of them). "
    "For second derivatives (Hessians, gradient penalties) use "
    "sklearn_ugmm.nn.ugmm_log_density_reference, the plain formula, which autograd differentiates twice."
)


def first_order_only(backward):
    """Decorate an autograd ``Function.backward`` that gives first derivatives only.

    Parameters
    ----------
    backward : callable
        ``backward(ctx, *grad_outputs)``, run without a graph.

    Returns
    -------
    wrapped : callable
        The same backward, raising a RuntimeError when called to build a
        graph (``create_graph=True``).
    """

    @functools.wraps(backward)
    def wrapped(ctx, *grad_outputs):
        if torch.is_grad_enabled():
            raise RuntimeError(SECOND_ORDER_MESSAGE)
        with torch.no_grad():
            return backward(ctx, *grad_outputs)

    return wrapped
