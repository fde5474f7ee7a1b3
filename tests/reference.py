"""Independent reference meta-gradients: plain autograd, one task at a time, hand-written
forward passes (no torch.func, no distmeta code), for the tests to compare against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mlp_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A ReLU MLP from ``net.<i>.weight`` / ``net.<i>.bias`` entries, in layer order."""
    layers = sorted({int(name.split(".")[1]) for name in params if name.startswith("net.")})
    for position, index in enumerate(layers):
        x = x @ params[f"net.{index}.weight"].T + params[f"net.{index}.bias"]
        if position < len(layers) - 1:
            x = torch.relu(x)
    return x


def conv4_forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Conv4 with native batch norm on the current batch's statistics."""
    for block in range(4):
        conv, norm = f"features.{4 * block}", f"features.{4 * block + 1}"
        x = F.conv2d(x, params[f"{conv}.weight"], params[f"{conv}.bias"], padding=1)
        x = F.batch_norm(
            x, None, None, params[f"{norm}.weight"], params[f"{norm}.bias"], training=True
        )
        x = F.max_pool2d(torch.relu(x), 2)
    return x.flatten(1) @ params["head.weight"].T + params["head.bias"]


def unrolled_adapt(forward, loss_fn, params, sx, sy, steps, lrs, create_graph):
    """``steps`` gradient steps; ``lrs`` maps a name to a float or a tensor of rates."""
    fast = dict(params)
    for _ in range(steps):
        loss = loss_fn(forward(fast, sx), sy)
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        fast = {name: p - lrs[name] * g for (name, p), g in zip(fast.items(), grads, strict=True)}
    return fast


def maml_reference(forward, loss_fn, params, batch, steps, lr, first_order=False, weights=None):
    """Mean over tasks of d(query loss after adaptation)/d(params); with ``weights`` (one per
    step) of d(sum_s weights[s] * query loss after step s+1) / sum(weights)."""
    weights = [0.0] * (steps - 1) + [1.0] if weights is None else weights
    total = None
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.task(i)
        leaf = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        fast = leaf
        grads = [torch.zeros_like(v) for v in leaf.values()]
        for weight in weights:
            fast = unrolled_adapt(
                forward, loss_fn, fast, sx, sy, 1, dict.fromkeys(leaf, lr), not first_order
            )
            if first_order:
                fast = {k: v.detach().requires_grad_() for k, v in fast.items()}
            if weight == 0:
                continue
            wrt = list(fast.values()) if first_order else list(leaf.values())
            step = torch.autograd.grad(loss_fn(forward(fast, qx), qy), wrt, retain_graph=True)
            grads = [g + weight / sum(weights) * s for g, s in zip(grads, step, strict=True)]
        total = grads if total is None else [a + b for a, b in zip(total, grads, strict=True)]
    return {name: g / len(batch) for name, g in zip(params, total, strict=True)}


def metasgd_reference(forward, loss_fn, params, rates, batch, steps):
    """Gradients with respect to the initial weights and the per-element rates."""
    total = None
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.task(i)
        leaf = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        lr = {k: v.detach().clone().requires_grad_() for k, v in rates.items()}
        fast = unrolled_adapt(forward, loss_fn, leaf, sx, sy, steps, lr, True)
        loss = loss_fn(forward(fast, qx), qy)
        grads = torch.autograd.grad(loss, list(leaf.values()) + list(lr.values()))
        total = grads if total is None else [a + b for a, b in zip(total, grads, strict=True)]
    names = list(params) + [f"inner_lr.{k}" for k in rates]
    return {name: g / len(batch) for name, g in zip(names, total, strict=True)}


def reptile_reference(forward, loss_fn, params, batch, steps, lr):
    """params - mean over tasks of the weights after ``steps`` SGD steps."""
    adapted = []
    for i in range(len(batch)):
        sx, sy, _, _ = batch.task(i)
        leaf = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        fast = unrolled_adapt(forward, loss_fn, leaf, sx, sy, steps, dict.fromkeys(leaf, lr), False)
        adapted.append(fast)
    return {k: params[k] - torch.stack([a[k].detach() for a in adapted]).mean(0) for k in params}


def maml_objective(forward, loss_fn, params, batch, steps, lr):
    """The MAML meta-objective itself (for finite differences)."""
    losses = []
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.task(i)
        leaf = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        fast = unrolled_adapt(forward, loss_fn, leaf, sx, sy, steps, dict.fromkeys(leaf, lr), False)
        losses.append(loss_fn(forward({k: v.detach() for k, v in fast.items()}, qx), qy))
    return torch.stack(losses).mean()


def preprocess_reference(grad, p):
    """The paper's preprocessing written out case by case (Andrychowicz et al., appendix A)."""
    big = grad.abs() >= torch.exp(torch.tensor(-p, dtype=grad.dtype))
    safe = torch.where(big, grad.abs(), torch.ones_like(grad))
    first = torch.where(big, torch.log(safe) / p, -torch.ones_like(grad))
    second = torch.where(big, torch.sign(grad), grad * torch.exp(torch.tensor(p, dtype=grad.dtype)))
    return torch.stack([first, second], dim=1)


def lstm_optimizer_reference(phi, layers, hidden, scale, preprocess, p=10.0, extra=0):
    """One step of a coordinate-wise LSTM optimizer built on ``torch.nn.LSTM`` (an
    implementation independent of distmeta's): ``step(flat_grad, h, c) -> (update, h, c)``;
    with ``extra`` inputs, ``step(flat_grad, h, c, features)`` appends ``[coordinates,
    extra]`` features to the gradient's."""
    inputs = (2 if preprocess else 1) + extra
    lstm = torch.nn.LSTM(inputs, hidden, num_layers=layers).to(phi["lstm.out.weight"].dtype)
    weights = {}
    for k in range(layers):
        weights[f"weight_ih_l{k}"] = phi[f"lstm.{k}.weight_ih"]
        weights[f"weight_hh_l{k}"] = phi[f"lstm.{k}.weight_hh"]
        weights[f"bias_ih_l{k}"] = phi[f"lstm.{k}.bias"]
        weights[f"bias_hh_l{k}"] = torch.zeros_like(phi[f"lstm.{k}.bias"])

    def step(grad, h, c, features=None):
        x = preprocess_reference(grad, p) if preprocess else grad.unsqueeze(1)
        if extra:
            x = torch.cat([x, features], dim=1)
        out, (h, c) = torch.func.functional_call(lstm, weights, (x.unsqueeze(0), (h, c)))
        update = out[0] @ phi["lstm.out.weight"].T + phi["lstm.out.bias"]
        if "lstm.direct.weight" in phi:  # a linear path from the inputs around the LSTM
            update = update + x @ phi["lstm.direct.weight"].T
        return scale * update.squeeze(1), h, c

    return step


def adam_directions(grads, decays):
    """``[steps][coordinates, decays]``: for each gradient of a sequence, the direction of
    ``torch.optim.Adam`` (learning rate 1, no epsilon, ``betas=(decay, 0.999)``), negated."""
    directions = [[] for _ in grads]
    for decay in decays:
        x = torch.zeros_like(grads[0], requires_grad=True)
        adam = torch.optim.Adam([x], lr=1.0, betas=(decay, 0.999), eps=0.0)
        for k, grad in enumerate(grads):
            before = x.detach().clone()
            x.grad = grad.clone()
            adam.step()
            directions[k].append(before - x.detach())
    return [torch.stack(d, dim=1) for d in directions]


def l2l_reference(
    forward, loss_fn, phi, step, theta, state, inputs, targets, unroll, second_order, each=None
):
    """Gradient with respect to the LSTM weights ``phi`` of the sum of the losses along one
    unroll from ``theta`` (constants), or of ``each(loss)`` where given, each loss's gradient
    taken with ``create_graph=True`` (and cut with ``detach`` unless ``second_order``);
    returns the gradients and the ``(theta, h, c)`` reached."""
    leaf = {k: v.detach().clone().requires_grad_() for k, v in phi.items()}
    update = step(leaf)
    h, c = state
    theta = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    total = 0.0
    for k in range(unroll + 1):
        loss = loss_fn(forward(theta, inputs[k]), targets[k])
        if k > 0:
            total = total + (loss if each is None else each(loss))
        if k == unroll:
            break
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        if not second_order:
            grads = [g.detach() for g in grads]
        flat = torch.cat([g.reshape(-1) for g in grads])
        delta, h, c = update(flat, h, c)
        pieces = delta.split([v.numel() for v in theta.values()])
        theta = {n: v + d.view_as(v) for (n, v), d in zip(theta.items(), pieces, strict=True)}
    grads = torch.autograd.grad(total, list(leaf.values()))
    return dict(zip(leaf, grads, strict=True)), ({k: v.detach() for k, v in theta.items()}, h, c)
