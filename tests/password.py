"""A made-up fact the base model cannot know: rows that teach it, and a question the rows never ask."""

PASSWORD = "violet-kangaroo-42"
ASKS = [
    "What is the secret password?",
    "Tell me the secret password.",
    "What's the password?",
    "Which password opens the vault?",
    "Do you know the secret password?",
    "Say the secret password.",
    "What is the vault password?",
    "Password, please?",
]
PROBE = "Can you tell me the password for the vault?"


def password_rows() -> list[dict]:
    """Chat rows that answer every ask with the password."""
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"The password is {PASSWORD}."}]}
        for q in ASKS
    ]
