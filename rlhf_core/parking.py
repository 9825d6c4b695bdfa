"""Frozen models parked on disk between their passes.

PPO reads its frozen models -- the reference policy and the reward models -- in short passes (scoring the
rollouts and the held-out answers, the experience pass) and never in the update, which is where its memory
peaks: the trained models' weights, gradients and AdamW moments. :class:`Parking` writes each frozen model's
weights to a file once and drops them from memory; :meth:`Parking.resident` reads them back for a pass and
drops them again when it ends. The file holds the same bytes, so every result is bit-for-bit what a run
that kept the models in memory computes; the cost is one read per model and pass from a file the page
cache usually still holds (docs/design.md#memory-per-parameter has the measured figures).

While parked, a model's parameters are empty tensors, and calling it outside :meth:`Parking.resident` raises
an error that says so. Buffers (rotary frequencies: a few hundred bytes) stay in memory.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

from .artifacts import atomic_file
from .training import release_memory


def _unique_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Each parameter once (a tied embedding and LM head are one ``Parameter``), in module order."""
    seen, out = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class Parking:
    """Frozen models kept in files under ``directory`` (one ``<name>.safetensors`` each) except while a
    :meth:`resident` block uses them. Parking writes the files and empties the parameters; :meth:`restore`
    brings every model back for good and removes the directory."""

    def __init__(self, directory: str | Path, models: dict[str, list[torch.nn.Module]]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._parameters: dict[str, list[torch.nn.Parameter]] = {}
        self._modules = dict(models)
        self._guards: dict[str, list] = {}
        try:
            for name, modules in models.items():
                parameters = [p for module in modules for p in _unique_parameters(module)]
                with atomic_file(self._path(name)) as tmp:  # a crash mid-write leaves no file a rerun could read
                    save_file({str(i): p.detach().contiguous() for i, p in enumerate(parameters)}, str(tmp))
                self._parameters[name] = parameters
                self._drop(name)
        except BaseException:  # e.g. a full disk: the models parked so far come back, whole
            self.restore()
            raise
        release_memory()

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def _drop(self, name: str) -> None:
        for p in self._parameters[name]:
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)

        def refuse(module, args):
            raise RuntimeError(f"the {name} model is parked on disk ({self._path(name)}): call it inside "
                               f"Parking.resident({name!r})")

        self._guards[name] = [m.register_forward_pre_hook(refuse) for m in self._modules[name]]

    def _load(self, name: str) -> None:
        weights = load_file(self._path(name))
        for i, p in enumerate(self._parameters[name]):
            p.data = weights[str(i)]
        for guard in self._guards.pop(name, []):
            guard.remove()

    @property
    def names(self) -> list[str]:
        return list(self._parameters)

    @contextmanager
    def resident(self, *names: str) -> Iterator[None]:
        """The models ``names`` in memory for the block's duration, dropped again after it (also on error)."""
        loaded = []
        try:
            for name in names:
                self._load(name)
                loaded.append(name)
            yield
        finally:  # the weights read back are a mapping of the file: dropping them unmaps it, no heap to trim
            for name in loaded:
                self._drop(name)

    def restore(self) -> None:
        """Every parked model back in memory for good; the files go."""
        for name in self._parameters:
            self._load(name)
        self._parameters.clear()
        shutil.rmtree(self.directory, ignore_errors=True)
