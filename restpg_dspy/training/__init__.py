"""Training: LoRA fine-tunes of local models behind DSPy's ``lm.finetune(...)``.

Modules: ``config`` (:class:`LoRATrainingConfig`, the knobs), ``provider`` (:class:`PEFTProvider` and
:func:`train_lora`: a job from rows to a published adapter), ``trainer`` (one training process: the weighted loss on
assistant tokens, :func:`fit`), ``launch`` (several processes), ``folders`` (staging, checkpoints and the record of
finished jobs), ``data`` (chat rows to tokens and labels) and ``memory_plan`` (fitting a CPU's memory).

Example:
    >>> from restpg_dspy.training import LoRATrainingConfig
    >>> LoRATrainingConfig().memory_budget_gib
    8.0
"""

from restpg_dspy.lazy import lazy_attributes

# Where each public name lives; they load on first use (TRL and PEFT are slow to import).
_HOMES = {
    "LoRATrainingConfig": "config",
    "LocalTrainingJob": "provider",
    "PEFTProvider": "provider",
    "train_lora": "provider",
    "NonFiniteLossError": "trainer",
    "TrainingJobSpec": "trainer",
    "assistant_token_losses": "trainer",
    "fit": "trainer",
    "TRAINING_LOG": "folders",
}
__all__ = sorted(_HOMES)

__getattr__ = lazy_attributes(__name__, _HOMES)
