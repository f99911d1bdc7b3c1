"""Writes the checkpoints beside this file (needs torch; run once, by hand: the tests do not run it).

python tests/data/checkpoints/make_checkpoints.py
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.manual_seed(0)
    sd: OrderedDict[str, object] = OrderedDict((f"layer{i}.weight", torch.randn(16, 16)) for i in range(4))
    sd["layer0.bias"] = torch.zeros(16, dtype=torch.float16)
    sd["emb"] = torch.nn.Parameter(torch.randn(8, 4))
    sd["ids"] = torch.arange(10)
    files: dict[str, bytes] = {}

    def saved(obj: object, **kwargs: object) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf, **kwargs)
        return buf.getvalue()

    files["state_dict_zip.pt"] = saved(sd)
    files["state_dict_legacy.bin"] = saved(sd, _use_new_zipfile_serialization=False)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    files["torchscript.pt"] = buf.getvalue()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    files["training_ckpt.pt"] = saved({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3})
    files["bf16_qint8.pt"] = saved(
        {
            "t": torch.zeros(3, dtype=torch.bfloat16),
            "q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8),
        }
    )
    files["numpy_arrays_p5.pkl"] = pickle.dumps({"w": np.random.rand(8, 8), "i": np.arange(5)}, protocol=5)
    for name, data in files.items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
