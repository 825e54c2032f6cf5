"""Serving a compiled program on another engine that holds the same base weights (a program compiled on the local
engine, served by vLLM with its adapter unmerged, say): :func:`serve_on`.

Example:
    >>> import restpg_dspy
    >>> compiled = ...  # an optimizer's compile(...) on restpg_dspy.lm("local")  # doctest: +SKIP
    >>> fast = restpg_dspy.serve_on(compiled, restpg_dspy.lm("vllm:local", max_tokens=256))  # doctest: +SKIP
    >>> fast(**example.inputs())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from restpg_dspy.errors import UsageError
from restpg_dspy.serving.model_ids import split_decoding, with_decoding
from restpg_dspy.serving.protocol import serving_engine


def served_by(lm: Any, server: Any) -> Any:
    """``lm``'s weights (its base, and its adapter if it has one) served by ``server``'s engine.

    Returns:
        A copy of ``server`` (its settings and decoding controls) on the adapter of ``lm``, registered with the
        server's engine unmerged.

    Raises:
        UsageError: either LM serves no adapters (an API model), or their engines hold different base weights.
    """
    source, target = serving_engine(lm), serving_engine(server)
    if target is None:
        raise UsageError(
            f"{server.model!r} cannot serve the adapters restpg-dspy trains; serve on a local or vLLM engine "
            "(restpg_dspy.lm('local:...') or restpg_dspy.lm('vllm:...')) on the same base weights"
        )
    if source is None or source.weights_id != target.weights_id:
        raise UsageError(
            f"{server.model!r} serves the base weights {target.weights_id!r}, but {lm.model!r} runs on "
            f"{source.weights_id if source else 'an API model'!r}: they must share the same base weights"
        )
    adapter = source.adapter_path(lm.model)
    served = target.register_adapter(adapter) if adapter else target.base_id
    return server.copy(model=with_decoding(served, **split_decoding(server.model)[1]))


def serve_on(program: Any, server: Any) -> Any:
    """A copy of ``program`` whose every predictor runs on ``server``'s engine, with the weights it ran on before.

    Each predictor's adapter (a compiled program's fine-tuned weights) is registered with the server's engine as it
    is, unmerged, and the predictor is given a copy of ``server`` on it: sampling settings and decoding controls
    are ``server``'s. Model ids name the server's engine, so caches never hand one engine's samples to the other.

    Args:
        program: A ``dspy.Module`` whose predictors run on local or vLLM LMs (its own, or the configured one).
        server: The LM to serve on: ``restpg_dspy.lm("vllm:<the same base>")``, another local engine, ...

    Raises:
        UsageError: a predictor without an LM, an LM or server that serves no adapters, or other base weights.
    """
    from restpg_dspy.optimizers.traces import predictor_lms, with_lms, without_lms

    moved = {name: served_by(lm, server) for name, lm in predictor_lms(program).items()}
    return with_lms(without_lms(program), moved.__getitem__)
