"""Prompts for the decoding benchmark, written for this project: code completion and chat."""

from __future__ import annotations

CODE_PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    'import json\n\n\ndef load_config(path):\n    """Read a JSON config file and return it as a dict."""\n',
    'class Stack:\n    """A last-in first-out stack backed by a list."""\n\n    def __init__(self):\n',
    'def is_prime(number):\n    """True when number is prime."""\n    if number < 2:\n',
    'def binary_search(items, target):\n    """Index of target in the sorted list items, or -1."""\n',
    'def word_count(text):\n    """Map each word of text to how often it occurs."""\n    counts = {}\n',
]

CHAT_PROMPTS = [
    "Explain what a hash table is in two sentences.",
    "Give three tips for writing readable Python code.",
    "What is the difference between a list and a tuple in Python?",
    "Write a short haiku about compilers.",
    "Why is the sky blue? Answer briefly.",
    "List the planets of the solar system in order.",
]


def benchmark_prompts(codec, n_code: int, n_chat: int) -> list[tuple[str, list[int]]]:
    """(kind, token ids): code prompts as raw completions, chat prompts through the chat template."""
    out = [("code", codec.encode(text)) for text in CODE_PROMPTS[:n_code]]
    out += [("chat", codec.chat_prompt([{"role": "user", "content": text}])) for text in CHAT_PROMPTS[:n_chat]]
    return out
