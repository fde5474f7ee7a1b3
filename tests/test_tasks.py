"""Task sources: shapes, ranges, and determinism by (seed, step, index)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import distmeta as dm


def test_sinusoid_shapes_and_ranges():
    source = dm.tasks.Sinusoid(shots=10, query=15)
    batch = source.sample(0, 0, range(6))
    assert batch.support_x.shape == (6, 10, 1) and batch.query_y.shape == (6, 15, 1)
    assert batch.ids == tuple((0, 0, i) for i in range(6))
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5
    for i in range(6):
        amplitude, phase = source.parameters_of(0, 0, i)
        assert 0.1 <= amplitude <= 5 and 0 <= phase <= np.pi
        torch.testing.assert_close(y[i], amplitude * torch.sin(x[i] - phase))


def test_a_task_is_rebuilt_from_its_name_alone():
    source = dm.tasks.Sinusoid(shots=5, query=5)
    whole = source.sample(7, 3, range(10))
    part = source.sample(7, 3, [8, 2])
    assert torch.equal(part.support_x[0], whole.support_x[8])
    assert torch.equal(part.query_y[1], whole.query_y[2])
    assert not torch.equal(source.sample(7, 4, [2]).support_x[0], whole.support_x[2])
    assert not torch.equal(source.sample(8, 3, [2]).support_x[0], whole.support_x[2])


def test_same_task_in_another_process():
    code = (
        "import distmeta as dm, sys; b = dm.tasks.Sinusoid(4, 4).sample(5, 9, [3]);"
        "sys.stdout.write(repr(b.support_x.flatten().tolist()))"
    )
    other = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    here = dm.tasks.Sinusoid(4, 4).sample(5, 9, [3]).support_x.flatten().tolist()
    assert other.stdout == repr(here)


def test_task_batch_checks_its_shapes():
    x = torch.zeros(3, 5, 1)
    with pytest.raises(ValueError, match="number of tasks"):
        dm.tasks.TaskBatch(x, x, x[:2], x[:2])
    with pytest.raises(ValueError, match="support"):
        dm.tasks.TaskBatch(x, x[:, :4], x, x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        dm.tasks.TaskBatch(x.numpy(), x, x, x)


def test_task_batch_select_keeps_names():
    batch = dm.tasks.Sinusoid(3, 3).sample(1, 2, range(5))
    picked = batch.select([4, 0])
    assert picked.ids == ((1, 2, 4), (1, 2, 0))
    assert torch.equal(picked.query_x[0], batch.query_x[4])
