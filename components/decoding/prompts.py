"""Prompts for the decoding benchmark, written for this project: code completion, chat, and code edits
(chat requests that quote code and ask for a small change: replies copy much of their prompt, the
case prompt-lookup drafting is made for)."""

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


_WORD_COUNT = """def word_count(text):
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts
"""
_STACK = """class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()
"""
_MEAN = """def mean(values):
    total = 0
    for value in values:
        total = total + value
    return total / len(values)
"""

EDIT_PROMPTS = [
    f"Rename the function word_count to count_words. Reply with the whole code.\n\n```python\n{_WORD_COUNT}```",
    f"Add a method `peek` that returns the top item without removing it. Reply with the whole class.\n\n"
    f"```python\n{_STACK}```",
    f"Add a docstring to this function. Reply with the whole function.\n\n```python\n{_MEAN}```",
]


def benchmark_prompts(codec, n_code: int, n_chat: int, n_edit: int = 0) -> list[tuple[str, list[int]]]:
    """(kind, token ids): code prompts as raw completions, chat and edit prompts through the chat template."""
    out = [("code", codec.encode(text)) for text in CODE_PROMPTS[:n_code]]
    out += [("chat", codec.chat_prompt([{"role": "user", "content": text}])) for text in CHAT_PROMPTS[:n_chat]]
    out += [("edit", codec.chat_prompt([{"role": "user", "content": text}])) for text in EDIT_PROMPTS[:n_edit]]
    return out
