"""Per-task batch norm: the fused one-task path (batch norm + max-pooling) against autograd's
own derivatives of max_pool2d(batch_norm(x)) in float64, the first block's fusion with its
convolution against the convolution then the fused path, and the choice of path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

import distmeta as dm
from distmeta.models import TaskBatchNorm2d, task_batch_norm
from distmeta.models.task_batch_norm import (
    conv_pooled_task_batch_norm,
    one_task_eager,
    pooled_task_batch_norm,
)


def _reference(x, weight, bias):
    return F.max_pool2d(F.batch_norm(x, None, None, weight, bias, training=True), 2)


def _fused(x, weight, bias):
    return pooled_task_batch_norm(x, weight, bias, 1e-5, 2)


def _inputs(channels_last=False, size=6, ties=False, weight=(1.5, -0.7, 0.0, 0.3)):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, size, size, dtype=torch.float64, generator=generator) * 2 + 1
    if ties:  # constant 2x2 windows, like the blank background of an Omniglot character
        half = x[:, :, : size // 2, : size // 2]
        x = half.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.tensor(weight, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64, generator=generator)
    return [t.requires_grad_() for t in (x, weight, bias)]


def _assert_equal_or_both_zero(ours_list, expected_list):
    """Pairwise equal in float64; a gradient that one side leaves out (``None``, unused) must
    be zero on the other."""
    for ours, expected in zip(ours_list, expected_list, strict=True):
        if ours is None or expected is None:
            present = ours if expected is None else expected
            assert present is None or present.abs().max() < 1e-12
            continue
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [6, 7])
def test_fused_path_passes_gradcheck_and_gradgradcheck(channels_last, size):
    inputs = _inputs(channels_last, size, weight=(1.5, -0.7, 0.4, 0.3))
    assert torch.autograd.gradcheck(_fused, inputs)
    assert torch.autograd.gradgradcheck(_fused, inputs)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("used", ["all", "x", "weight", "bias"])
def test_values_and_second_derivatives_equal_batch_norm_then_pooling(channels_last, ties, used):
    """As in MAML's outer step: differentiate a function of the first derivatives, also when
    only some of them are used. The weights include a negative and a zero scale."""
    x, weight, bias = _inputs(channels_last, ties=ties)
    upstream = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    results = []
    for norm in (_fused, _reference):
        out = norm(x, weight, bias)
        loss = (out * upstream).sin().sum()
        gx, gw, gb = torch.autograd.grad(loss, (x, weight, bias), create_graph=True)
        chosen = {"all": [gx, gw, gb], "x": [gx], "weight": [gw], "bias": [gb]}[used]
        objective = sum((g * torch.linspace(-1, 2, g.numel()).view_as(g)).sum() for g in chosen)
        second = torch.autograd.grad(objective, (x, weight, bias), allow_unused=True)
        results.append([out, gx, gw, gb, *second])
    _assert_equal_or_both_zero(*results)


def test_third_derivative_equals_plain_batch_norm_then_pooling():
    """Against the plain formulation: native batch norm's own third derivative with respect
    to its input is not exact in torch 2.13 (off by ~5% here)."""
    x, weight, bias = _inputs(weight=(1.5, -0.7, 0.4, 0.3))
    plain = TaskBatchNorm2d(4).double()

    def reference(x, weight, bias):
        params = {"weight": weight, "bias": bias}
        return F.max_pool2d(torch.func.functional_call(plain, params, (x,)), 2)

    results = []
    for norm in (_fused, reference):
        (gx,) = torch.autograd.grad(norm(x, weight, bias).pow(3).sum(), (x,), create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), (x,), create_graph=True)
        results.append(torch.autograd.grad(ggx.sin().sum(), (x, weight, bias)))
    for ours, expected in zip(*results, strict=True):  # values up to ~1e3: rounding ~1e-9
        torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-8)


def _conv_inputs(channels_last=False, size=6, weight=(1.5, -0.7, 0.0, 0.3)):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(3, 2, size, size, dtype=torch.float64, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    conv_weight = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=generator)
    conv_bias = torch.randn(4, dtype=torch.float64, generator=generator)
    weight = torch.tensor(weight, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64, generator=generator)
    return images, [t.requires_grad_() for t in (conv_weight, conv_bias, weight, bias)]


@pytest.fixture(params=[None, 1, 2], ids=["whole", "chunks of 1", "chunks of 2"])
def images_per_chunk(request, monkeypatch):
    """The conv-fused function over all (3) images at once, or a chunk of 1 or 2 images at a
    time (chunks of 2: one of 2 and one of 1); a chunk's size is its convolution output's."""
    if request.param is not None:
        largest_image_output = 4 * 7 * 7 * 8  # 4 channels of 7x7 in float64
        monkeypatch.setattr(task_batch_norm, "_CHUNK_BYTES", request.param * largest_image_output)
    return request.param


def test_images_are_convolved_in_chunks_of_the_set_size(images_per_chunk):
    images, _ = _conv_inputs(size=7)
    chunks = task_batch_norm._image_chunks(images, 4)
    expected = {None: [slice(0, 3)], 1: [slice(i, i + 1) for i in range(3)]}
    expected[2] = [slice(0, 2), slice(2, 3)]
    assert chunks == expected[images_per_chunk]


def _conv_fused(images):
    return lambda cw, cb, w, b: conv_pooled_task_batch_norm(images, cw, cb, w, b, 1e-5, 2, 1)


def _conv_then_fused(images):
    return lambda cw, cb, w, b: _fused(F.conv2d(images, cw, cb, padding=1), w, b)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [6, 7])
def test_conv_fused_path_passes_gradcheck_and_gradgradcheck(channels_last, size, images_per_chunk):
    images, params = _conv_inputs(channels_last, size, weight=(1.5, -0.7, 0.4, 0.3))
    assert torch.autograd.gradcheck(_conv_fused(images), params)
    assert torch.autograd.gradgradcheck(_conv_fused(images), params)


def test_conv_fused_path_without_a_conv_bias_passes_gradgradcheck(images_per_chunk):
    images, (conv_weight, _, weight, bias) = _conv_inputs(weight=(1.5, -0.7, 0.4, 0.3))

    def norm(cw, w, b):
        return conv_pooled_task_batch_norm(images, cw, None, w, b, 1e-5, 2, 1)

    assert torch.autograd.gradcheck(norm, (conv_weight, weight, bias))
    assert torch.autograd.gradgradcheck(norm, (conv_weight, weight, bias))


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_fused_path_equals_the_convolution_then_the_fused_path(
    channels_last, images_per_chunk
):
    """Values, first derivatives (computed in place, twice from one retained graph) and
    second derivatives, with a negative and a zero scale among the channels."""
    images, params = _conv_inputs(channels_last)
    upstream = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    results = []
    for norm in (_conv_fused(images), _conv_then_fused(images)):
        out = norm(*params)
        loss = (out * upstream).sin().sum()
        first = torch.autograd.grad(loss, params, retain_graph=True)
        again = torch.autograd.grad(loss, params)
        grads = torch.autograd.grad(
            (norm(*params) * upstream).sin().sum(), params, create_graph=True
        )
        objective = sum((g * torch.linspace(-1, 2, g.numel()).view_as(g)).sum() for g in grads)
        second = torch.autograd.grad(objective, params)
        results.append([out, *first, *again, *second])
    for ours, expected in zip(*results, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("used", range(4))
def test_conv_fused_second_derivatives_when_one_first_derivative_is_used(used, images_per_chunk):
    """The inner loop's gradient as one function of the four parameters: its derivative when
    the outer objective uses only the filters', the conv bias', the scale's or the shift's."""
    images, params = _conv_inputs(weight=(1.5, -0.7, 0.4, 0.3))
    results = []
    for norm in (_conv_fused(images), _conv_then_fused(images)):
        grads = torch.autograd.grad(norm(*params).sin().sum(), params, create_graph=True)
        objective = grads[used] * torch.linspace(-1, 2, grads[used].numel()).view_as(grads[used])
        results.append(torch.autograd.grad(objective.sum(), params, allow_unused=True))
    _assert_equal_or_both_zero(*results)


def test_conv_fused_third_derivative_equals_the_convolution_then_the_fused_path(images_per_chunk):
    images, params = _conv_inputs(weight=(1.5, -0.7, 0.4, 0.3))
    results = []
    for norm in (_conv_fused(images), _conv_then_fused(images)):
        first = torch.autograd.grad(norm(*params).pow(3).sum(), params, create_graph=True)
        objective = sum(g.square().sum() for g in first)
        second = torch.autograd.grad(objective, params, create_graph=True)
        results.append(torch.autograd.grad(sum(g.sin().sum() for g in second), params))
    for ours, expected in zip(*results, strict=True):
        torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-8)


def test_float32_omniglot_query_set_in_chunks_is_as_exact_as_float32_allows():
    """A 5-way 15-query set of 28x28 binary images (blank windows: ties everywhere) through a
    64-filter first block, convolved in five chunks in float32: values and gradients within
    1e-4 of float64's (relative to the largest output, or the largest gradient; the conv
    bias's exact gradient is zero, batch norm removes it)."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(75, 1, 28, 28, generator=generator) > 0.8).float()
    images = images.clone(memory_format=torch.channels_last)
    torch.manual_seed(0)  # the filters: the same in any test order
    conv, norm = torch.nn.Conv2d(1, 64, 3, padding=1), TaskBatchNorm2d(64)
    upstream = torch.randn(75, 64, 14, 14, generator=generator)
    assert len(task_batch_norm._image_chunks(images, 64)) == 5
    results = []
    for dtype, norm_fn in ((torch.float32, _conv_fused), (torch.float64, _conv_then_fused)):
        params = [p.detach().to(dtype).requires_grad_() for p in (conv.weight, conv.bias)]
        params += [p.detach().to(dtype).requires_grad_() for p in (norm.weight, norm.bias)]
        out = norm_fn(images.to(dtype))(*params)
        grads = torch.autograd.grad((out * upstream.to(dtype)).sum(), params)
        results.append([out, *grads])
    (out, *grads), (expected_out, *expected_grads) = results
    torch.testing.assert_close(
        out.double(), expected_out, rtol=0, atol=1e-4 * float(out.detach().abs().max())
    )
    largest = max(float(g.abs().max()) for g in expected_grads)
    for ours, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(ours.double(), expected, rtol=0, atol=1e-4 * largest)


def test_conv4_differentiates_its_input_images_too():
    torch.manual_seed(0)
    model = dm.models.Conv4(1, 3, hidden=4, image_size=16).double()
    inputs = torch.randn(5, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    (eager,) = torch.autograd.grad(model(inputs).sin().sum(), inputs)
    (plain,) = torch.autograd.grad(vmap(model)(inputs[None]).sin().sum(), inputs)
    torch.testing.assert_close(eager, plain)


def test_float32_channels_last_matches_the_modules():
    x = torch.randn(6, 8, 14, 14).contiguous(memory_format=torch.channels_last)
    norm = TaskBatchNorm2d(8)
    out = pooled_task_batch_norm(x, norm.weight, norm.bias, norm.eps, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, F.max_pool2d(norm(x), 2))


def test_under_vmap_each_task_uses_its_own_statistics():
    norm = TaskBatchNorm2d(3).double()
    x = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64)
    x[1] = 50 * x[1] - 3
    batched = vmap(norm)(x)
    torch.testing.assert_close(batched, torch.stack([norm(x[0]), norm(x[1])]))


def test_conv4_takes_the_fused_path_only_under_plain_autograd():
    seen = []
    vmap(lambda x: (seen.append(one_task_eager()), x)[1])(torch.zeros(2))
    torch.func.grad(lambda x: (seen.append(one_task_eager()), x.sum())[1])(torch.zeros(2))
    assert one_task_eager() and seen == [False, False]
    torch.manual_seed(0)
    model = dm.models.Conv4(1, 3, hidden=4, image_size=16).double()
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    eager = model(x)
    torch.testing.assert_close(vmap(model)(x[None])[0], eager)
    params = dict(model.named_parameters())
    expected = torch.autograd.grad(eager.sin().sum(), list(params.values()))

    def loss(params):
        return torch.func.functional_call(model, params, (x,)).sin().sum()

    transformed = torch.func.grad(loss)(params)
    for name, gradient in zip(params, expected, strict=True):
        torch.testing.assert_close(transformed[name], gradient)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), eager)
