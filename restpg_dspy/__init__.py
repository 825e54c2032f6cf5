"""Personalized text generation as DSPy programs, trained with REST-PG.

Example:
    >>> import restpg_dspy
    >>> student = restpg_dspy.lm("local")  # doctest: +SKIP
    >>> student("What is the capital of France? Answer with one word.")  # doctest: +SKIP
    ['The capital of France is Paris.']
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__all__ = ["lm", "serve_on", "with_repetition_controls"]
__version__ = "0.1.0"

# Modules that moved into the serving and training subpackages, by their old paths. Saved programs record their
# engine's class by module path (``restpg_dspy.engine:LocalEngine``), and users import from the old paths.
MOVED_MODULES = {
    "restpg_dspy.backends": "restpg_dspy.serving.backends",
    "restpg_dspy.engine": "restpg_dspy.serving.engine",
    "restpg_dspy.generation": "restpg_dspy.serving.generation",
    "restpg_dspy.models": "restpg_dspy.serving.models",
    "restpg_dspy.vllm_engine": "restpg_dspy.serving.vllm_engine",
    "restpg_dspy.vllm_server": "restpg_dspy.serving.vllm_server",
    "restpg_dspy.finetune": "restpg_dspy.training",
    "restpg_dspy.memory_plan": "restpg_dspy.training.memory_plan",
    "restpg_dspy.training_data": "restpg_dspy.training.data",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a moved module's old path as its new module (the same object, so classes compare equal)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module):
        pass  # the new module ran when it was imported


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str):
    # DSPy is imported on first use of ``lm``, so the model and generation modules load without it.
    if name in ("lm", "with_repetition_controls"):
        from restpg_dspy.serving import backends

        return getattr(backends, name)
    if name == "serve_on":
        from restpg_dspy.serving.transfer import serve_on

        return serve_on
    raise AttributeError(f"module 'restpg_dspy' has no attribute {name!r}")
