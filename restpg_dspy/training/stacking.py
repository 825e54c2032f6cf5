"""One LoRA adapter from two stacked ones: a personal adapter trained over a shared adapter, served as one.

A personal adapter is trained on the base weights with a shared adapter merged in (``stack_on``), so it is valid
only on top of that adapter. Every engine serves one adapter per request, so the two are combined into an adapter of
rank ``r_shared + r_personal`` whose update is exactly the sum of theirs: for each module
``B_s A_s * scale_s + B_p A_p * scale_p = [B_s * scale_s, B_p * scale_p] [A_s; A_p]`` with scale 1.

Example:
    >>> from restpg_dspy.training.stacking import stack_adapters
    >>> stack_adapters("adapters/shared", "adapters/alice-delta", "adapters/alice")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from restpg_dspy.errors import UsageError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
# Settings the combination cannot carry over: each would need more than one low-rank product per module.
_UNSTACKABLE = {"use_dora": False, "bias": "none", "modules_to_save": None, "lora_bias": False}


def _config(path: Path) -> dict[str, Any]:
    file = path / CONFIG
    if not file.is_file() or not (path / WEIGHTS).is_file():
        raise UsageError(f"{path} is not a saved LoRA adapter (it needs {CONFIG} and {WEIGHTS})")
    config = json.loads(file.read_text())
    for key, plain in _UNSTACKABLE.items():
        if config.get(key, plain) not in (plain, None, [], False):
            raise UsageError(f"the adapter {path} sets {key}={config[key]!r}; only plain LoRA adapters stack")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UsageError(f"the adapter {path} has per-module ranks or alphas; only uniform LoRA adapters stack")
    return config


def lora_scale(config: dict[str, Any]) -> float:
    """The factor PEFT multiplies an adapter's ``B @ A`` by: ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA)."""
    rank = config["r"]
    return config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)


def stack_adapters(shared: str | Path, personal: str | Path, out: str | Path) -> Path:
    """Write to ``out`` one adapter equal to ``shared`` plus ``personal`` (trained over ``shared``).

    Raises:
        UsageError: a folder that is not a plain LoRA adapter (DoRA, biases, per-module ranks), or adapters on
            different modules (naming the modules only one of them has).
    """
    import torch
    from safetensors.torch import load_file, save_file

    shared, personal, out = Path(shared), Path(personal), Path(out)
    configs = [_config(shared), _config(personal)]
    weights = [load_file(shared / WEIGHTS), load_file(personal / WEIGHTS)]
    if set(weights[0]) != set(weights[1]):
        only = sorted(set(weights[0]) ^ set(weights[1]))[:3]
        raise UsageError(f"{shared} and {personal} adapt different modules (only one has {only}): they cannot stack")
    scales = [lora_scale(c) for c in configs]
    stacked = {}
    for name in weights[0]:
        if ".lora_A." in name:  # (r, in): the ranks stack
            stacked[name] = torch.cat([w[name] for w in weights], dim=0).contiguous()
        elif ".lora_B." in name:  # (out, r): each adapter's scale moves into its columns
            stacked[name] = torch.cat([w[name] * s for w, s in zip(weights, scales, strict=True)], dim=1).contiguous()
        else:
            raise UsageError(f"{personal}: unexpected tensor {name} in a LoRA adapter")
    rank = configs[0]["r"] + configs[1]["r"]
    out.mkdir(parents=True, exist_ok=True)
    save_file(stacked, out / WEIGHTS, metadata={"format": "pt"})
    config = {**configs[1], "r": rank, "lora_alpha": rank, "use_rslora": False}
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return out
