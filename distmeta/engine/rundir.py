"""A run's folder on any filesystem pyarrow reaches: a local path, ``s3://`` or ``gs://``.

It holds the resolved config, ``metrics.jsonl``, checkpoints and the final meta-parameters.
Files are written under a temporary name and then renamed, so a reader never sees half a
checkpoint, and an interrupted write leaves the previous one intact.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import torch
import yaml

from distmeta.errors import CheckpointError, RunError

__all__ = ["CONFIG_FILE", "FINAL_FILE", "METRICS_FILE", "MetricsLog", "RunDir"]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.pt"
CHECKPOINTS = "checkpoints"
_CHECKPOINT = re.compile(r"step-(\d{8,})\.pt$")


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowException, OSError, ValueError) as error:
            raise RunError(f"cannot open run directory {uri}: {error}") from None
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


class RunDir:
    """The files of one training run.

    Args:
        uri: A local path or a URI pyarrow understands (``s3://bucket/run``, ``gs://...``).
    """

    def __init__(self, uri: str | Path):
        self.uri = str(uri)
        self.fs, self.path = _filesystem(self.uri)

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    def _join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def describe(self, name: str) -> str:
        """A readable location of ``name`` inside the run, for messages."""
        return f"{self.uri.rstrip('/')}/{name}"

    def exists(self, name: str = "") -> bool:
        info = self.fs.get_file_info(self._join(name) if name else self.path)
        return info.type != pafs.FileType.NotFound

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` atomically (temporary file, then rename)."""
        target = self._join(name)
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        temporary = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self.fs.move(temporary, target)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self._join(name)) as stream:
            return stream.read()

    # --- config ---------------------------------------------------------------------------

    def write_config(self, config: dict[str, Any]) -> None:
        self.write_bytes(CONFIG_FILE, yaml.safe_dump(config, sort_keys=False).encode())

    def read_config(self) -> dict[str, Any]:
        if not self.exists(CONFIG_FILE):
            raise RunError(f"{self.describe(CONFIG_FILE)} not found: not a distmeta run directory")
        return yaml.safe_load(self.read_bytes(CONFIG_FILE).decode()) or {}

    # --- tensors ----------------------------------------------------------------------------

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.write_bytes(name, buffer.getvalue())

    def load_state(self, name: str) -> dict[str, Any]:
        if not self.exists(name):
            raise CheckpointError(f"{self.describe(name)} not found")
        try:
            state = torch.load(
                io.BytesIO(self.read_bytes(name)), map_location="cpu", weights_only=True
            )
        except Exception as error:
            reason = next(
                (line for line in str(error).splitlines() if line.strip()), type(error).__name__
            )
            if "Weights only load failed" in reason:
                reason = "not a torch checkpoint of plain tensors"
            raise CheckpointError(
                f"{self.describe(name)} is unreadable or corrupt: {reason[:200]}"
            ) from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.describe(name)} does not hold a distmeta state")
        return state

    def checkpoint_name(self, step: int) -> str:
        return f"{CHECKPOINTS}/step-{step:08d}.pt"

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints present, ascending."""
        selector = pafs.FileSelector(self._join(CHECKPOINTS), allow_not_found=True)
        steps = []
        for info in self.fs.get_file_info(selector):
            match = _CHECKPOINT.search(info.base_name)
            if match and info.type == pafs.FileType.File:
                steps.append(int(match.group(1)))
        return sorted(steps)

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> str:
        name = self.checkpoint_name(step)
        self.save_state(name, {**state, "step": step})
        return self.describe(name)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint's state, or ``None`` when there is none."""
        steps = self.checkpoint_steps()
        if not steps:
            return None
        state = self.load_state(self.checkpoint_name(steps[-1]))
        if state.get("step") != steps[-1]:
            raise CheckpointError(
                f"{self.describe(self.checkpoint_name(steps[-1]))} names another step"
            )
        return state

    def save_final(self, params: dict[str, torch.Tensor], step: int) -> None:
        cpu = {name: p.detach().cpu().clone() for name, p in params.items()}
        self.save_state(FINAL_FILE, {"params": cpu, "step": step})

    def load_final(self) -> dict[str, Any]:
        if not self.exists(FINAL_FILE):
            raise RunError(f"{self.describe(FINAL_FILE)} not found: the run has not finished")
        return self.load_state(FINAL_FILE)


class MetricsLog:
    """``metrics.jsonl``: one JSON record per logged step, rewritten on resume.

    Opening keeps only the records up to ``keep_until`` (the step a resumed run continues
    from), so a resumed or rewound run never shows the abandoned steps twice.
    """

    def __init__(self, run_dir: RunDir, keep_until: int = 0):
        self.run_dir = run_dir
        kept = (
            [r for r in self.read(run_dir) if r.get("step", 0) <= keep_until] if keep_until else []
        )
        self._stream = run_dir.fs.open_output_stream(run_dir._join(METRICS_FILE))
        for record in kept:
            self._write(record)

    @staticmethod
    def read(run_dir: RunDir) -> list[dict[str, Any]]:
        if not run_dir.exists(METRICS_FILE):
            return []
        lines = run_dir.read_bytes(METRICS_FILE).decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def _write(self, record: dict[str, Any]) -> None:
        self._stream.write((json.dumps(record) + "\n").encode())

    def append(self, record: dict[str, Any]) -> None:
        self._write(record)
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()
