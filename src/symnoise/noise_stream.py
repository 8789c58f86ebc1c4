"""The seeded noise stream of one attachment: reproducible per (seed, rank), resumable on any device.

The stream's whole state is ``(seed, draws)``: draw ``k`` comes from a generator on the embeddings' device seeded
with ``derive_seed(seed, k)``, so a saved state continues exactly on another device or in a new process, and a
model that moves between devices (FSDP/DeepSpeed attach on the CPU, train on the GPU) continues the stream
instead of restarting it. Each rank's stream seed is ``derive_seed(config seed, rank)``.
"""

from __future__ import annotations

from typing import Any

import torch

from . import noise as N


def derive_seed(parent: int, index: int) -> int:
    """A 63-bit seed for child ``index`` of ``parent``: distinct per index, reproducible per (parent, index).

    The one seed derivation of the stream: a rank's stream seed is ``derive_seed(config seed, rank)``, the seed
    of draw ``k`` is ``derive_seed(stream seed, k)``.
    """
    import numpy as np

    return int(np.random.SeedSequence([parent % 2**63, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class NoiseStream:
    """Unit noise draws of one distribution, numbered from 0; ``seed`` and ``draws`` fix the next one."""

    def __init__(self, seed: int | None, rank: int, distribution: str):
        # No seed: derived from torch's initial seed, so torch.manual_seed / transformers.set_seed fix it.
        self.seed = derive_seed(torch.initial_seed() if seed is None else seed, rank)
        self.draws = 0
        self.distribution = distribution
        self._generators: dict[torch.device, torch.Generator] = {}
        self._last_device: torch.device | None = None

    @torch.compiler.disable  # creating and seeding a generator cannot be traced: the draw is the one graph break
    def sample_unit_noise(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The next draw: unit noise from ``device``'s generator seeded for draw ``self.draws``; advances the
        stream."""
        eps = N.sample_unit_noise(
            shape, self.distribution, generator=self.generator_for(device), dtype=dtype, device=device
        )
        self.draws += 1
        return eps

    def generator_for(self, device: torch.device) -> torch.Generator:
        """A generator on ``device`` seeded for the next draw; one per device, created once (no host sync)."""
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        self._last_device = device
        return generator.manual_seed(derive_seed(self.seed, self.draws))

    def next_generator(self, first_device: torch.device) -> torch.Generator:
        """The generator the next draw uses, on the device of the last draw (``first_device`` before the first)."""
        return self.generator_for(first_device if self._last_device is None else self._last_device)

    def state_dict(self) -> dict[str, Any]:
        """``generator``, the int64 pair (seed, draws so far), and the two as ints: device-independent."""
        return {
            "generator": torch.tensor([self.seed, self.draws], dtype=torch.int64),
            "seed": self.seed,
            "draws": self.draws,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved `state_dict`; a state of an earlier symnoise (a device generator) is refused."""
        if "draws" not in state:
            raise ValueError(
                "symnoise: this noise state holds a device-specific generator state (written by an "
                "earlier symnoise), which cannot continue the noise sequence exactly on another device; "
                "start the run afresh, or resume from a checkpoint written by this version"
            )
        self.seed, self.draws = int(state["seed"]), int(state["draws"])
