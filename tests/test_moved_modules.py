"""The serving and training modules moved into subpackages; every old import path, and every program saved before
the move (whose engine is recorded as ``restpg_dspy.engine:LocalEngine``), still works."""

import importlib
import json
from pathlib import Path

import pytest

from restpg_dspy import MOVED_MODULES

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("old, new", sorted(MOVED_MODULES.items()))
def test_an_old_module_path_is_its_new_module(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_the_old_paths_of_public_names_still_import():
    from restpg_dspy.engine import LocalEngine
    from restpg_dspy.finetune import LoRATrainingConfig, PEFTProvider, fit
    from restpg_dspy.memory_plan import plan_memory
    from restpg_dspy.serving import serving_engine, split_decoding
    from restpg_dspy.serving.engine import LocalEngine as moved
    from restpg_dspy.training.trainer import fit as moved_fit

    assert LocalEngine is moved and fit is moved_fit and LoRATrainingConfig().memory_budget_gib == 8.0
    assert callable(plan_memory) and callable(serving_engine) and PEFTProvider.__module__.endswith("provider")
    assert split_decoding("local/x?repetition_penalty=1.2") == ("local/x", {"repetition_penalty": 1.2})


def test_a_program_saved_before_the_move_loads_and_generates(embedded_path):
    from restpg_dspy.data import synthetic
    from restpg_dspy.programs import PersonalizedWriter
    from restpg_dspy.retrieval import BM25
    from restpg_dspy.serving.engine import LocalEngine

    saved = FIXTURES / "program_saved_before_the_move.json"
    assert "restpg_dspy.engine:LocalEngine" in saved.read_text()
    program = PersonalizedWriter(retriever=BM25(k=2))
    program.load(str(saved), allow_unsafe_lm_state=True)
    assert isinstance(program.write.lm.engine, LocalEngine)
    assert program.write.lm.model == json.loads(saved.read_text())["write"]["lm"]["model"]
    example = synthetic("train", seed=0, users=1, requests_per_user=1)[0]
    assert program(**example.inputs().toDict()).response.strip()
