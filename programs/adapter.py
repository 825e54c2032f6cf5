"""An adapter for small models: the completion *is* the single output field.

DSPy's ChatAdapter asks the model to echo ``[[ ## field ## ]]`` markers, which a 135M model cannot do zero-shot.
:class:`CompletionAdapter` instead renders the instructions and the input fields as plain text and takes the whole
completion as the one output field, so nothing can fail to parse. The same adapter formats fine-tuning rows, so
training and serving see the same prompt.

Example:
    >>> import dspy
    >>> from restpg_dspy.programs.adapter import CompletionAdapter
    >>> signature = dspy.Signature("request -> response", "Answer the request.")
    >>> CompletionAdapter().format(signature, [], {"request": "Say hi."})[-1]
    {'role': 'user', 'content': 'Request:\\nSay hi.\\n\\nWrite the response.'}
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import dspy

from restpg_dspy.errors import UsageError

try:  # the marker DSPy 3.4's own adapters use for their message-list call; absent in later releases
    from dspy.clients._deprecation import adapter_message_call
except ImportError:  # pragma: no cover

    def adapter_message_call(lm, messages):
        return nullcontext()


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


class CompletionAdapter(dspy.Adapter):
    """Plain-text prompts for signatures with exactly one output field; the completion becomes that field."""

    @staticmethod
    def output_name(signature: type[dspy.Signature]) -> str:
        names = list(signature.output_fields)
        if len(names) != 1:
            raise UsageError(
                f"CompletionAdapter needs exactly one output field, {signature.__name__} has {names}; "
                "split the predictor or use dspy.ChatAdapter"
            )
        return names[0]

    def format_system_message(self, signature: type[dspy.Signature]) -> str:
        return signature.instructions.strip()

    def format_user_message_content(
        self,
        signature: type[dspy.Signature],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        sections = [f"{_title(name)}:\n{str(inputs.get(name, '')).strip()}" for name in signature.input_fields]
        output = self.output_name(signature)
        description = signature.output_fields[output].json_schema_extra.get("desc", "")
        detail = "" if not description or description.startswith("${") else f" ({description.rstrip('.')})"
        sections.append(f"Write the {_title(output).lower()}{detail}.")
        return "\n\n".join(sections)

    def format_assistant_message_content(
        self, signature: type[dspy.Signature], outputs: dict[str, Any], missing_field_message: str | None = None
    ) -> str:
        return str(outputs.get(self.output_name(signature), missing_field_message or "")).strip()

    def format(self, signature: type[dspy.Signature], demos: list[dict[str, Any]], inputs: dict[str, Any]):
        messages = [{"role": "system", "content": self.format_system_message(signature)}]
        output = self.output_name(signature)
        for demo in demos:
            if output in demo and all(name in demo for name in signature.input_fields):
                messages.append({"role": "user", "content": self.format_user_message_content(signature, demo)})
                messages.append(
                    {"role": "assistant", "content": self.format_assistant_message_content(signature, demo)}
                )
        messages.append({"role": "user", "content": self.format_user_message_content(signature, inputs)})
        return messages

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        return {self.output_name(signature): completion.strip()}

    def format_finetune_data(
        self,
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
        outputs: dict[str, Any],
    ) -> dict[str, list[Any]]:
        """A chat row whose assistant turn is the output field, prompted exactly as at inference."""
        messages = self.format(signature, demos, inputs)
        messages.append({"role": "assistant", "content": self.format_assistant_message_content(signature, outputs)})
        return {"messages": messages}

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):
        messages = self.format(signature, demos, inputs)
        with adapter_message_call(lm, messages):
            outputs = lm(messages=messages, **lm_kwargs)
        return [self._value(signature, output) for output in outputs]

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):
        messages = self.format(signature, demos, inputs)
        with adapter_message_call(lm, messages):
            outputs = await lm.acall(messages=messages, **lm_kwargs)
        return [self._value(signature, output) for output in outputs]

    def _value(self, signature: type[dspy.Signature], output: Any) -> dict[str, Any]:
        # An empty completion is a legitimate (if poor) answer for a single free-text field, not a parse failure.
        text = output.get("text") if isinstance(output, dict) else output
        value = self.parse(signature, text or "")
        if isinstance(output, dict) and output.get("logprobs"):
            value["logprobs"] = output["logprobs"]
        return value
