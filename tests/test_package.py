"""What ``import distmeta`` loads: the meta-gradient core at once, the rest on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import distmeta as dm

HEAVY = ("pyarrow", "pydantic", "rich", "PIL", "yaml", "ray", "mlflow")


def test_importing_distmeta_leaves_the_engine_and_data_tools_unloaded():
    code = (
        "import json, sys; import distmeta as dm; "
        "dm.models.Conv4; dm.algorithms.MAML; dm.tasks.TaskBatch; dm.tasks.Sinusoid; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]
    assert json.loads(loaded) == []


def test_public_names_resolve_to_their_modules_objects():
    from distmeta.config import ExperimentConfig
    from distmeta.runs import load_run
    from distmeta.tasks.fewshot import FewShotImages

    assert dm.ExperimentConfig is ExperimentConfig
    assert dm.load_run is load_run
    assert dm.tasks.FewShotImages is FewShotImages
    assert dm.runs.train is dm.train
    for name in (*dm.__all__, *(f"tasks.{n}" for n in dm.tasks.__all__)):
        module, _, attribute = name.rpartition(".")
        assert getattr(dm.tasks if module else dm, attribute) is not None, name


@pytest.mark.parametrize(("module", "name"), [(dm, "Trainer"), (dm.tasks, "Omniglot")])
def test_unknown_names_raise_attribute_error(module, name):
    with pytest.raises(AttributeError, match=name):
        getattr(module, name)
