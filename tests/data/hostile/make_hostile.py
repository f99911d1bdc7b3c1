"""Make the hostile files of this folder that only torch can write (run with torch installed; see README.md)."""

from __future__ import annotations

from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
#: The file the payload writes (relative: in the loader's working directory; a literal in the code below,
#: since TorchScript compiles no globals).
MARKER = "torchscript-payload-ran"


class SetState(torch.nn.Module):
    """A module whose ``__setstate__``, run by ``torch.jit.load``, writes a file of its choosing."""

    def __init__(self) -> None:
        super().__init__()
        self.x = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[int, bool]:
        return (self.x, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[int, bool]) -> None:
        self.x = state[0]
        self.training = state[1]
        # Used, so that TorchScript keeps it: from_file(shared=True) creates and maps the file, fill_ writes it.
        written = torch.from_file("torchscript-payload-ran", True, 1)
        written.fill_(1)
        self.x = int(written[0])


if __name__ == "__main__":
    torch.jit.save(torch.jit.script(SetState()), str(HERE / "torchscript_setstate.pt"))
