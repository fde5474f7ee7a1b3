"""Batch normalisation with each task's own batch statistics, and its fusion with max-pooling.

MAML differentiates through the inner loop's gradient, so batch norm is differentiated twice.
Two formulations, both exact, are chosen by how the model is being run:

- Under ``torch.func`` transforms (``vmap``: all tasks at once) or ``torch.compile``:
  :class:`TaskBatchNorm2d` with plain mean/var operations, so that each task reduces over
  its own samples whatever the batching rules do (the native kernel under
  ``vmap(grad(grad))`` is reported to give a wrong second-order meta-gradient in torch
  2.13), and the compiler can fuse them.
- Eagerly, one task at a time: :func:`pooled_task_batch_norm`, batch norm and the 2x2
  max-pooling after it as one autograd function with a hand-written second derivative. On
  the Omniglot Conv4 the first block's activations (75 queries x 64 x 28 x 28, 15 MB) make
  the time: every pass over them, and every fresh buffer of their size (the page faults of its
  first touch), costs about as much as a convolution. The fused function reads the
  convolution's output for the statistics and for the pooling and writes only the pooled
  result; its gradient is one fresh buffer and two in-place passes, where batch norm then
  max-pooling write the normalised activations, the pooling gradient and the batch-norm
  gradient, and keep the normalised activations alive. On the support set (5 images) the
  second derivative makes the time: the hand-written one takes a quarter of the time of
  autograd's second derivative of batch norm then max-pooling (2.7 ms against 10.4 ms for the
  first block on one CPU thread).
- In the first block, on images: :func:`conv_pooled_task_batch_norm`, the convolution too,
  so that its output (the network's largest activation) is never kept nor held whole: it
  is computed a few images at a time, in the forward pass and again in the backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TaskBatchNorm2d",
    "conv_pooled_task_batch_norm",
    "one_task_eager",
    "pooled_task_batch_norm",
]


def one_task_eager() -> bool:
    """Whether the caller runs eagerly under plain autograd, outside any ``torch.func``
    transform (``vmap``, ``grad``, ...) and ``torch.compile``: one task at a time, where the
    fused autograd functions (exact, fastest, and written for plain autograd only) run.
    Under ``torch.compile`` (which distmeta applies to the vectorised batch) plain
    operations are what the compiler fuses."""
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


class TaskBatchNorm2d(nn.Module):
    """Batch normalisation with the statistics of the current batch only, always.

    MAML normalises with each task's own batch statistics, in training and at test, and keeps
    no running averages, so a task never sees another task's statistics. The normalisation is
    written with plain mean/var operations: under ``torch.func.vmap`` each task then reduces
    over its own samples, and the second-order gradient through it is exact. (Conv4 runs one
    task at a time through :func:`pooled_task_batch_norm` instead, with these parameters.)

    Args:
        channels: Number of feature channels.
        eps: Added to the variance for numerical stability.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        centered = x - mean
        var = centered.square().mean(dim=(0, 2, 3), keepdim=True)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return centered * scale + self.bias.view(1, -1, 1, 1)


def pooled_task_batch_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, kernel_size: int
) -> torch.Tensor:
    """``max_pool2d(batch_norm(x), kernel_size)`` with the batch's own statistics, fused.

    Batch norm is a per-channel affine map ``s (x - mean) + bias`` with ``s = weight /
    sqrt(var + eps)``: increasing where ``s > 0``, so its maximum over a window is taken at
    the window's maximum of ``x``, decreasing where ``s < 0`` (at the minimum of ``x``) and
    constant where ``s = 0`` (at the window's first element, as max-pooling breaks ties). So
    the pooling runs on ``x`` itself and the affine map on the pooled values. Ties break as in
    ``max_pool2d(batch_norm(x))``, except where rounding maps distinct inputs of a window to
    the same normalised value: the fused function then picks the larger input, which is what
    exact arithmetic would pick.

    The gradient with respect to ``x`` is the batch-norm gradient ``s (g - mean(g) - xh
    mean(g xh))`` of the pooling's sparse gradient ``g``: ``s g`` at the pooled positions plus
    an affine function of ``x`` everywhere. It is an autograd function too, with its own
    derivative (MAML's second order), and differentiable to any order.

    Args:
        x: ``[n, c, h, w]`` activations.
        weight: ``[c]`` scale of the normalisation.
        bias: ``[c]`` shift.
        eps: Added to the variance.
        kernel_size: Window and stride of the (non-overlapping) pooling.

    Returns:
        ``[n, c, h // kernel_size, w // kernel_size]``.
    """
    return _PooledTaskBatchNorm.apply(x, weight, bias, eps, kernel_size)


def conv_pooled_task_batch_norm(
    images: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    kernel_size: int,
    padding: int,
) -> torch.Tensor:
    """:func:`pooled_task_batch_norm` of a stride-1 convolution of inputs that are not
    differentiated (a network's first block, on the images), without ever holding the
    convolution's whole output.

    That output is the largest activation of the Omniglot Conv4 (four times the pooled size,
    64 times the images'), and its gradient is as large. Here it is computed a chunk of
    images at a time (at most ``_CHUNK_BYTES`` of output each): the forward pass keeps each
    chunk's batch statistics and pooled values, and the backward pass computes the chunk's
    convolution again (one input channel: cheap), writes its gradient over it and turns
    that into the filters' gradient before the next chunk. What is kept between the passes
    is the pooled values, a quarter of the output's bytes, where the convolution then the
    fused function keep the output, its int64 pooling positions and the pooled values (1.75
    times the output's bytes). The statistics of the chunks combine exactly (Chan et al.),
    and the convolution of a chunk is the same computation in both passes, so both pick the
    same pooling positions. The values and derivatives, to any order, are those of
    ``pooled_task_batch_norm(conv2d(images, ...))``, up to the rounding of the statistics.

    Args:
        images: ``[n, c_in, h, w]`` inputs; their gradient is not computed.
        conv_weight: ``[c, c_in, k, k]`` filters.
        conv_bias: ``[c]`` or ``None``.
        weight: ``[c]`` scale of the normalisation.
        bias: ``[c]`` shift.
        eps: Added to the variance.
        kernel_size: Window and stride of the pooling.
        padding: Zero padding of the convolution on each side.
    """
    return _ConvPooledTaskBatchNorm.apply(
        images, conv_weight, conv_bias, weight, bias, eps, kernel_size, padding
    )


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(1, -1, *([1] * (like.dim() - 2)))


def _statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and ``1/sqrt(var + eps)`` (biased variance), differentiably."""
    mean = x.mean(dim=(0, 2, 3))
    centered = x - _per_channel(mean, x)
    return mean, torch.rsqrt(centered.square().mean(dim=(0, 2, 3)) + eps)


def _channels_last(x: torch.Tensor) -> bool:
    return x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)


def _planes(t: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, int]:
    """``[n, c, h, w]`` as ``[n, h * w, c]`` (channels-last memory: the channels innermost,
    where gathers and scatters run fastest) or ``[n, c, h * w]``, a view where the memory
    allows; and the dimension of the positions within a plane."""
    n, c = t.shape[:2]
    if channels_last:
        return t.permute(0, 2, 3, 1).reshape(n, -1, c), 1
    return t.reshape(n, c, -1), 2


def _gather(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The elements of ``x`` at max-pooling ``indices`` (positions within each plane)."""
    last = _channels_last(x)
    planes, dim = _planes(x, last)
    picked = planes.gather(dim, _planes(indices, last)[0])
    n, c, h, w = indices.shape
    return picked.view(n, h, w, c).permute(0, 3, 1, 2) if last else picked.view(n, c, h, w)


def _pool_positions(
    x: torch.Tensor, weight: torch.Tensor, eps: float, kernel_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pooled, indices, mean, invstd)``: the batch statistics, and the values and positions
    of ``x`` that max-pooling picks after batch norm (see :func:`pooled_task_batch_norm`)."""
    mean, var = torch.ops.aten.batch_norm_update_stats(x, None, None, 0.0)
    invstd = torch.rsqrt(var + eps)
    scale = weight * invstd
    window = [kernel_size, kernel_size]
    if bool((scale > 0).all()):  # the usual case: no pass to flip or zero channels
        pooled, indices = torch.ops.aten.max_pool2d_with_indices(x, window, window)
    else:
        direction = _per_channel(scale.sign(), x)
        _, indices = torch.ops.aten.max_pool2d_with_indices(x * direction, window, window)
        pooled = _gather(x, indices)
    return pooled, indices, mean, invstd


def _normalised(
    pooled: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
) -> torch.Tensor:
    """Batch norm of the pooled values ``s (pooled - mean) + bias``, ``s = weight invstd``."""
    scale = weight * invstd
    shift = _per_channel(bias - mean * scale, pooled)
    return torch.addcmul(shift, pooled, _per_channel(scale, pooled))


def _affine_terms(
    count: int,
    weight: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    grad_weight: torch.Tensor,
    grad_bias: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s, a, b)`` of the input gradient ``scatter(s g) + a + b x``, each ``[c]``, for
    ``count`` elements per channel."""
    scale = weight * invstd
    b = -scale * invstd * grad_weight / count
    a = scale * (invstd * mean * grad_weight - grad_bias) / count
    return scale, a, b


def _first_derivative(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    indices: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    pooled: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused function's gradients ``(grad_x, grad_weight, grad_bias)`` (see
    :class:`_PooledTaskBatchNormBackward`)."""
    grad_bias = grad.sum(dim=(0, 2, 3))
    # One expression, so that its pooled-sized temporaries are freed before the unpooled
    # gradient (four times their size) is allocated.
    grad_weight = (grad * (pooled - _per_channel(mean, x))).sum(dim=(0, 2, 3)) * invstd
    count = x.numel() // x.shape[1]
    scale, a, b = _affine_terms(count, weight, mean, invstd, grad_weight, grad_bias)
    grad_x = torch.ops.aten.max_unpool2d(grad * _per_channel(scale, x), indices, list(x.shape[-2:]))
    grad_x.addcmul_(x, _per_channel(b, x)).add_(_per_channel(a, x))
    return grad_x, grad_weight, grad_bias


def _gradient_into(
    x: torch.Tensor,
    indices: torch.Tensor,
    pooled_grad: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
) -> torch.Tensor:
    """The input gradient ``scatter(pooled_grad) + a + b x`` written over ``x`` (which the
    caller gives up), with no temporary of its size."""
    grad_x = torch.addcmul(_per_channel(a, x), x, _per_channel(b, x), out=x)
    last = _channels_last(x)
    planes, dim = _planes(grad_x, last)
    if planes._base is not x:
        raise RuntimeError("the pooled gradient must be scattered into x itself, not a copy")
    planes.scatter_add_(dim, _planes(indices, last)[0], _planes(pooled_grad, last)[0])
    return grad_x


class _PooledTaskBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x, weight, bias, eps, kernel_size):
        pooled, indices, mean, invstd = _pool_positions(x, weight, eps, kernel_size)
        ctx.save_for_backward(x, weight, indices, mean, invstd, pooled)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return _normalised(pooled, weight, bias, mean, invstd)

    @staticmethod
    def backward(ctx: Any, grad):
        if grad is None:
            return None, None, None, None, None
        x, weight, indices, mean, invstd, pooled = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = _PooledTaskBatchNormBackward.apply(
            grad, x, weight, indices, mean, invstd, pooled, ctx.eps
        )
        return grad_x, grad_weight, grad_bias, None, None


class _PooledTaskBatchNormBackward(torch.autograd.Function):
    """The fused function's gradient, with its own (second) derivative.

    Per channel, over its ``M`` elements, with ``xh = (x - mean) r``, ``s = w r`` and ``G`` the
    pooling's gradient ``g`` scattered to its positions: ``grad_bias = sum(g)``, ``grad_weight
    = sum(g xh)`` and ``grad_x = s (G - mean(G) - xh mean(G xh)) = scatter(s g) + a + b x``.
    Given the gradients ``u``, ``p``, ``q`` of a loss with respect to those three, write ``h =
    c1 G + c2 u`` with ``c1 = p - s mean(u xh)`` and ``c2 = -s mean(G xh)``, and ``S = sum(u (G
    - mean(G) - xh mean(G xh)))``. Then the loss's gradients are::

        d/dg = (s (u - mean(u) - xh mean(u xh)) + p xh + q)  at the pooled positions
        d/dx = r (h - mean(h) - xh mean(h xh)) - (r^2 / M) w S xh
        d/dw = r S

    (``d/dx`` follows ``x`` through ``xh``, ``mean`` and ``r``.) Every mean of ``h`` combines
    sums of ``g``, ``g xh``, ``u``, ``u x`` and ``u g``, five reductions, and ``d/dx`` is the
    scatter of ``r c1 g`` plus a per-channel affine combination of ``x`` and ``u``. When a
    third derivative is recorded, the statistics are recomputed from ``x`` with differentiable
    operations, so that everything carries its dependence on ``x``.
    """

    @staticmethod
    def forward(ctx: Any, grad, x, weight, indices, mean, invstd, pooled, eps):
        ctx.save_for_backward(grad, x, weight, indices, mean, invstd, pooled)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return _first_derivative(grad, x, weight, indices, mean, invstd, pooled)

    @staticmethod
    def backward(ctx: Any, u, p, q):
        g, x, w, indices, mean, invstd, pooled = ctx.saved_tensors
        grad_g, grad_x, grad_w = _second_derivative(
            g, x, w, indices, mean, invstd, pooled, ctx.eps, u, p, q
        )
        return grad_g, grad_x, grad_w, None, None, None, None, None


def _second_derivative(
    g: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    indices: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    pooled: torch.Tensor | None,
    eps: float,
    u: torch.Tensor | None,
    p: torch.Tensor | None,
    q: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss's gradients ``(d/dg, d/dx, d/dw)`` given ``(u, p, q)``, the gradients of the
    first derivative's outputs (see :class:`_PooledTaskBatchNormBackward`); differentiable
    when grad mode is on. ``pooled`` (the values of ``x`` at ``indices``) is gathered when
    not given."""
    if torch.is_grad_enabled():
        # A third derivative is being recorded: the statistics and the pooled values
        # must carry their dependence on x, which the saved ones do not.
        mean, invstd = _statistics(x, eps)
        pooled = None
    if pooled is None:
        pooled = _gather(x, indices)
    count = x.numel() // x.shape[1]
    r, s = invstd, w * invstd
    normalised = (pooled - _per_channel(mean, x)) * _per_channel(r, x)
    g_mean = g.sum(dim=(0, 2, 3)) / count
    gxh_mean = (g * normalised).sum(dim=(0, 2, 3)) / count
    zeros = torch.zeros_like(w)
    p = zeros if p is None else p
    q = zeros if q is None else q
    if u is None:
        u_mean = uxh_mean = S = zeros
    else:
        u_pooled = _gather(u, indices)
        u_mean = u.sum(dim=(0, 2, 3)) / count
        uxh_mean = r * ((u * x).sum(dim=(0, 2, 3)) / count - mean * u_mean)
        S = (u_pooled * g).sum(dim=(0, 2, 3)) - count * (g_mean * u_mean + gxh_mean * uxh_mean)
    c1, c2 = p - s * uxh_mean, -s * gxh_mean
    h_mean, hxh_mean = c1 * g_mean + c2 * u_mean, c1 * gxh_mean + c2 * uxh_mean

    grad_g = torch.addcmul(_per_channel(q - s * u_mean, x), normalised, _per_channel(c1, x))
    # xh = r x - r mean: fold the xh term of d/dx into an affine function of x.
    xh_coef = -r * hxh_mean - r * r * w * S / count
    grad_x = torch.ops.aten.max_unpool2d(g * _per_channel(r * c1, x), indices, list(x.shape[-2:]))
    shift = -r * h_mean - mean * r * xh_coef
    # In place: neither max_unpool2d's nor addcmul's derivative needs the tensor updated.
    grad_x.addcmul_(x, _per_channel(r * xh_coef, x)).add_(_per_channel(shift, x))
    if u is not None:
        grad_g.addcmul_(u_pooled, _per_channel(s, x))
        grad_x.addcmul_(u, _per_channel(r * c2, x))
    return grad_g, grad_x, r * S


_CHUNK_BYTES = 3 * 2**20
"""The most the first block's convolution writes at once (see :func:`_image_chunks`).

Below the second block's activations on the Omniglot query set (3.6 MiB), so that glibc's
malloc, whose threshold for fresh memory mappings follows the largest block freed so far,
serves the chunks from memory it keeps. With 4 MiB chunks (20 images) each chunk was a new
mapping, whose first touch (page faults) made its convolution take 1.8 ms, against 0.43 ms
for a 3 MiB chunk of 15 images (``torch.profiler``, one thread)."""


def _image_chunks(images: torch.Tensor, channels: int) -> list[slice]:
    """Consecutive slices of ``images`` whose convolution outputs (``channels`` planes of
    about the images' size each) take at most ``_CHUNK_BYTES``, one image at least."""
    count, _, height, width = images.shape
    per_image = channels * height * width * images.element_size()
    step = max(1, _CHUNK_BYTES // per_image)
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


def _convolved(
    images: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None, padding: int
) -> torch.Tensor:
    """The whole convolution output, computed chunk by chunk as in the forward pass (so
    bit for bit the same values, and the same pooling positions)."""
    parts = [
        F.conv2d(images[part], conv_weight, conv_bias, padding=padding)
        for part in _image_chunks(images, conv_weight.shape[0])
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _direction(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """Per channel, the sign of the batch norm's scale (the weight's): ``None`` when all are
    positive, the usual case, where pooling after batch norm picks the maxima of ``x``."""
    return None if bool((weight > 0).all()) else _per_channel(weight.sign(), like)


def _window_positions(
    x: torch.Tensor, direction: torch.Tensor | None, kernel_size: int
) -> torch.Tensor:
    """The positions of ``x`` that max-pooling after batch norm picks (see
    :func:`pooled_task_batch_norm`)."""
    window = [kernel_size, kernel_size]
    signed = x if direction is None else x * direction
    return torch.ops.aten.max_pool2d_with_indices(signed, window, window)[1]


def _combined_moments(
    moments: list[tuple[int, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of the union of chunks given ``(count, mean, variance)``
    each (Chan et al.'s pairwise formula)."""
    if len(moments) == 1:
        return moments[0][1], moments[0][2]
    total = sum(count for count, _, _ in moments)
    mean = sum(count * chunk_mean for count, chunk_mean, _ in moments) / total
    var = sum(count * (v + (m - mean).square()) for count, m, v in moments) / total
    return mean, var


def _conv_first_derivative(
    grad: torch.Tensor,
    images: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    weight: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    pooled: torch.Tensor,
    kernel_size: int,
    padding: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`conv_pooled_task_batch_norm` with respect to the filters, the
    convolution's bias, the scale and the shift, given ``grad`` with respect to its output.

    The scale's and the shift's come from the kept pooled values; the convolution is
    computed again a chunk of images at a time, each chunk's output overwritten by its own
    gradient (:func:`_gradient_into`) and turned into the filters' gradient right away."""
    grad_bias = grad.sum(dim=(0, 2, 3))
    grad_weight = (grad * (pooled - _per_channel(mean, pooled))).sum(dim=(0, 2, 3)) * invstd
    height = images.shape[2] + 2 * padding - conv_weight.shape[2] + 1
    width = images.shape[3] + 2 * padding - conv_weight.shape[3] + 1
    count = images.shape[0] * height * width
    scale, a, b = _affine_terms(count, weight, mean, invstd, grad_weight, grad_bias)
    pooled_grad = grad * _per_channel(scale, grad)
    direction = _direction(weight, images)
    has_bias = conv_bias is not None
    grad_conv_weight = grad_conv_bias = None
    for part in _image_chunks(images, conv_weight.shape[0]):
        x = F.conv2d(images[part], conv_weight, conv_bias, padding=padding)
        indices = _window_positions(x, direction, kernel_size)
        grad_x = _gradient_into(x, indices, pooled_grad[part], a, b)
        del x, indices
        filters, shifts = _filter_gradients(grad_x, images[part], conv_weight, has_bias, padding)
        del grad_x
        if grad_conv_weight is None:
            grad_conv_weight, grad_conv_bias = filters, shifts
        else:
            grad_conv_weight.add_(filters)
            if has_bias:
                grad_conv_bias.add_(shifts)
    return grad_conv_weight, grad_conv_bias, grad_weight, grad_bias


class _ConvPooledTaskBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, images, conv_weight, conv_bias, weight, bias, eps, kernel_size, padding):
        direction = _direction(weight, images)
        window = [kernel_size, kernel_size]
        moments, pooled = [], []
        for part in _image_chunks(images, conv_weight.shape[0]):
            x = F.conv2d(images[part], conv_weight, conv_bias, padding=padding)
            mean, var = torch.ops.aten.batch_norm_update_stats(x, None, None, 0.0)
            moments.append((x.numel() // x.shape[1], mean, var))
            if direction is None:
                pooled.append(torch.ops.aten.max_pool2d(x, window, window))
            else:
                pooled.append(_gather(x, _window_positions(x, direction, kernel_size)))
            del x
        pooled = pooled[0] if len(pooled) == 1 else torch.cat(pooled)
        mean, var = _combined_moments(moments)
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(images, conv_weight, conv_bias, weight, mean, invstd, pooled)
        ctx.eps, ctx.kernel_size, ctx.padding = eps, kernel_size, padding
        ctx.set_materialize_grads(False)
        return _normalised(pooled, weight, bias, mean, invstd)

    @staticmethod
    def backward(ctx: Any, grad):
        if grad is None:
            return (None,) * 8
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # a higher derivative is recorded
            grads = _ConvPooledTaskBatchNormBackward.apply(
                grad, *saved, ctx.eps, ctx.kernel_size, ctx.padding
            )
        else:
            grads = _conv_first_derivative(grad, *saved, ctx.kernel_size, ctx.padding)
        return None, *grads, None, None, None


class _ConvPooledTaskBatchNormBackward(torch.autograd.Function):
    """The first block's gradients with respect to its four parameters, with its own (second)
    derivative, which recomputes the convolution.

    Recorded by the inner loop, whose gradient the outer pass differentiates: the
    convolution's output, its pooling positions and the gradient with respect to it (each
    the first block's full size or more) are not kept from the one pass to the other. The
    filters' gradient is linear in the gradient ``grad_x`` with respect to the
    convolution's output, so the gradient of a loss with respect to ``grad_x`` is the
    convolution of the images with the loss's gradient ``u`` with respect to the filters'
    gradient; that ``u`` goes through :func:`_second_derivative`, and the gradient with
    respect to ``x`` it returns back through the convolution to its filters.
    """

    @staticmethod
    def forward(
        ctx: Any,
        grad,
        images,
        conv_weight,
        conv_bias,
        weight,
        mean,
        invstd,
        pooled,
        eps,
        kernel_size,
        padding,
    ):
        tensors = (grad, images, conv_weight, conv_bias, weight, mean, invstd, pooled)
        ctx.save_for_backward(*tensors)
        ctx.eps, ctx.kernel_size, ctx.padding = eps, kernel_size, padding
        ctx.set_materialize_grads(False)
        return _conv_first_derivative(*tensors, kernel_size, padding)

    @staticmethod
    def backward(ctx: Any, grad_conv_weight_in, grad_conv_bias_in, p, q):
        g, images, conv_weight, conv_bias, w, mean, invstd, pooled = ctx.saved_tensors
        x = _convolved(images, conv_weight, conv_bias, ctx.padding)
        indices = _window_positions(x.detach(), _direction(w, x), ctx.kernel_size)
        u = None
        if grad_conv_weight_in is not None or grad_conv_bias_in is not None:
            if grad_conv_weight_in is None:
                grad_conv_weight_in = torch.zeros_like(conv_weight)
            u = F.conv2d(images, grad_conv_weight_in, grad_conv_bias_in, padding=ctx.padding)
        grad_g, grad_x, grad_w = _second_derivative(
            g, x, w, indices, mean, invstd, pooled, ctx.eps, u, p, q
        )
        del x, u, indices
        grad_conv_weight, grad_conv_bias = _filter_gradients(
            grad_x, images, conv_weight, conv_bias is not None, ctx.padding
        )
        return grad_g, None, grad_conv_weight, grad_conv_bias, grad_w, *(None,) * 6


def _filter_gradients(
    grad_x: torch.Tensor,
    images: torch.Tensor,
    conv_weight: torch.Tensor,
    has_bias: bool,
    padding: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients of a stride-1 convolution's filters and bias (``None`` without one),
    given ``grad_x`` with respect to its output; not the images'."""
    _, grad_conv_weight, grad_conv_bias = torch.ops.aten.convolution_backward(
        grad_x,
        images,
        conv_weight,
        [conv_weight.shape[0]] if has_bias else None,
        [1, 1],
        [padding, padding],
        [1, 1],
        False,
        [0, 0],
        1,
        [False, True, has_bias],
    )
    return grad_conv_weight, grad_conv_bias
