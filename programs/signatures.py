"""The signatures of personalized generation: one output field each, so small models need no format obedience.

Inputs are ordered profile first and request last: small models attend most to the end of their prompt.
"""

import dspy


class PersonalReasoning(dspy.Signature):
    """Study the user's earlier writing below and explain, as short bullet points, what this user cares about,
    what in their life or background matters for this request, and how they write (greeting, tone, length,
    favourite phrases, sign-off). Do not write the answer itself."""

    profile: str = dspy.InputField(desc="the user's earlier writing, most relevant first")
    request: str = dspy.InputField(desc="what the user wants written")
    reasoning: str = dspy.OutputField(desc="bullet points about this user's preferences, background and style")


class PersonalizedResponse(dspy.Signature):
    """Write what the user asked for, exactly as this user would write it, following the notes about them."""

    profile: str = dspy.InputField(desc="the user's earlier writing, most relevant first")
    reasoning: str = dspy.InputField(desc="notes about this user's preferences, background and style")
    request: str = dspy.InputField(desc="what the user wants written")
    response: str = dspy.OutputField(desc="the text, written in this user's voice")


class ProfileResponse(dspy.Signature):
    """Write what the user asked for, exactly as this user would write it, drawing on their earlier writing."""

    profile: str = dspy.InputField(desc="the user's earlier writing, most relevant first")
    request: str = dspy.InputField(desc="what the user wants written")
    response: str = dspy.OutputField(desc="the text, written in this user's voice")


class PlainResponse(dspy.Signature):
    """Write what the user asked for."""

    request: str = dspy.InputField(desc="what the user wants written")
    response: str = dspy.OutputField(desc="the text")


class HindsightReasoning(dspy.Signature):
    """You are shown a user's request, their earlier writing, and the text the user actually wrote. Explain, as
    short bullet points, what about this user (preferences, background, life facts, writing style) found in their
    earlier writing explains the text they wrote. Do not copy or mention the written text itself: write notes that
    someone who had not seen it could use to write it."""

    profile: str = dspy.InputField(desc="the user's earlier writing, most relevant first")
    request: str = dspy.InputField(desc="what the user wanted written")
    expected_output: str = dspy.InputField(desc="what the user actually wrote (never quote it)")
    reasoning: str = dspy.OutputField(desc="bullet points about this user's preferences, background and style")
