"""Snippets to execute: written for this project in Stack Overflow style, and function bodies
extracted at run time from the source of packages installed on this machine (nothing vendored).
"""

from __future__ import annotations

import ast
import glob
import importlib
import inspect
import random
import re
import textwrap
from pathlib import Path

from components.selfpico.analysis import parse_any
from components.selfpico.executor import Snippet
from components.selfpico.instrument import InstrumentationError, instrument

# Question-style fragments: names come from the asker's program and are never defined here.
# `expected_error` marks the ones whose question is about a genuine runtime type error.
_WRITTEN: list[tuple[str, str, str | None]] = [
    (
        "so_word_count",
        """
words = text.lower().split()
counts = {}
for w in words:
    counts[w] = counts.get(w, 0) + 1
top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
print(top)
""",
        None,
    ),
    (
        "so_csv_total",
        """
total = 0
for row in rows:
    total += float(row["amount"]) * rate
print("total:", round(total, 2))
""",
        None,
    ),
    (
        "so_concat_age",
        """
age = len(users)
print("There are " + age + " users")
""",
        "TypeError",
    ),
    (
        "so_path_join",
        """
import os
full = os.path.join(base_dir, filename)
if os.path.exists(full):
    print("found", full)
else:
    print("missing", full)
""",
        None,
    ),
    (
        "so_dict_merge",
        """
merged = {**defaults, **overrides}
for key in required_keys:
    if key not in merged:
        merged[key] = None
print(sorted(merged))
""",
        None,
    ),
    (
        "so_requests_json",
        """
import requests_not_installed_here as requests
resp = requests.get(url, timeout=5)
if resp.status_code == 200:
    data = resp.json()
    print(len(data))
""",
        None,
    ),
    (
        "so_class_counter",
        """
class Counter:
    def __init__(self, start):
        self.value = start
    def bump(self, step):
        self.value += step
        return self.value
c = Counter(initial)
for _ in range(repeats):
    c.bump(step_size)
print(c.value)
""",
        None,
    ),
    (
        "so_list_index_str",
        """
names = [u["name"] for u in users]
print(names["0"])
""",
        "TypeError",
    ),
    (
        "so_average",
        """
avg = sum(scores) / len(scores)
passed = [s for s in scores if s >= threshold]
print(f"{avg:.1f}", len(passed))
""",
        None,
    ),
    (
        "so_date_parse",
        """
from datetime import datetime
d = datetime.strptime(date_str, fmt)
print(d.year, d.month)
""",
        None,
    ),
    (
        "so_json_dump",
        """
import json
payload = {"id": user_id, "tags": tags, "score": score}
encoded = json.dumps(payload)
print(len(encoded))
""",
        None,
    ),
    (
        "so_matrix_sum",
        """
result = [[0] * cols for _ in range(rows_count)]
for i in range(rows_count):
    for j in range(cols):
        result[i][j] = matrix[i][j] + offset
print(result)
""",
        None,
    ),
    (
        "so_none_len",
        """
items = config.get("items")
print(len(items))
""",
        None,
    ),
    (
        "so_regex_extract",
        """
import re
matches = re.findall(pattern, text)
emails = [m.lower() for m in matches]
print(emails)
""",
        None,
    ),
    (
        "so_sort_objects",
        """
people.sort(key=lambda p: p.age)
oldest = people[-1]
print(oldest.name, oldest.age)
""",
        None,
    ),
    (
        "so_string_format_int",
        """
message = "Value: %d" % value_text
print(message)
""",
        None,
    ),
    (
        "so_file_lines",
        """
lines = content.splitlines()
non_empty = [ln.strip() for ln in lines if ln.strip()]
print(len(non_empty), non_empty[:3])
""",
        None,
    ),
    (
        "so_numpy_mean",
        """
import numpy as np
arr = np.array(values)
normalized = (arr - arr.mean()) / (arr.std() + eps)
print(normalized.round(2).tolist())
""",
        None,
    ),
    (
        "so_add_str_int",
        """
count = counter + 1
label = prefix + count
print(label)
""",
        "TypeError",
    ),
    (
        "so_retry_loop",
        """
attempt = 0
while attempt < max_attempts:
    ok = handler(attempt)
    if ok:
        break
    attempt += 1
print("attempts:", attempt)
""",
        None,
    ),
    (
        "so_nested_get",
        """
city = response["user"]["address"]["city"]
print(city.title())
""",
        None,
    ),
    (
        "so_set_ops",
        """
common = set(a_list) & set(b_list)
only_a = set(a_list) - set(b_list)
print(sorted(common), sorted(only_a))
""",
        None,
    ),
    (
        "so_dataclass_use",
        """
from dataclasses import dataclass
@dataclass
class Point:
    x: float
    y: float
p = Point(x0, y0)
dist = (p.x ** 2 + p.y ** 2) ** 0.5
print(round(dist, 3))
""",
        None,
    ),
    (
        "so_enumerate_pairs",
        """
for idx, item in enumerate(items):
    if idx % 2 == 0:
        print(idx, item)
print("done", len(items))
""",
        None,
    ),
]


def written_snippets() -> list[Snippet]:
    return [Snippet(id, textwrap.dedent(code).strip() + "\n", "written", err) for id, code, err in _WRITTEN]


def _usable(func: ast.FunctionDef, min_lines: int, max_lines: int) -> bool:
    n_lines = func.end_lineno - func.lineno
    if not (min_lines <= n_lines <= max_lines):
        return False
    for node in ast.walk(func):
        if isinstance(node, (ast.Await, ast.AsyncFor, ast.AsyncWith, ast.Nonlocal, ast.Global)):
            return False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super" and not node.args:
            return False  # zero-argument super() needs the enclosing class
    return True


def package_function_snippets(
    modules: list[str], count: int, seed: int = 0, min_lines: int = 4, max_lines: int = 30
) -> list[Snippet]:
    """Bodies of functions and methods from installed modules' source, sampled with a seed.

    The body is what is executed: its parameters (and `self`) become undefined names, exactly the
    situation of a function lifted out of its program.
    """
    candidates: list[Snippet] = []
    for module_name in modules:
        try:
            source = inspect.getsource(importlib.import_module(module_name))
        except (ImportError, OSError, TypeError) as err:
            raise ValueError(f"cannot read the source of module {module_name!r}: {err}") from err
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and _usable(node, min_lines, max_lines):
                body = node.body
                if (
                    isinstance(body[0], ast.Expr)
                    and isinstance(getattr(body[0], "value", None), ast.Constant)
                    and isinstance(body[0].value.value, str)
                    and len(body) > 1
                ):
                    body = body[1:]  # the docstring is not code to execute
                code = "\n".join(ast.unparse(stmt) for stmt in body) + "\n"
                candidates.append(Snippet(f"{module_name}:{node.name}:{node.lineno}", code, f"package:{module_name}"))
    random.Random(seed).shuffle(candidates)
    return candidates[:count]


HELDOUT_FILE = Path(__file__).parent / "heldout_snippets.txt"
_LATENT = re.compile(r"^\|\s*latent\s+(\w+)\s+line\s+(\d+):")


def heldout_snippets(path: Path = HELDOUT_FILE) -> list[Snippet]:
    """The held-out set: snippets written for the benchmark alone (no prompt, rule or tuning run used
    them), with the latent runtime errors they contain (type, line)."""
    text = path.read_text()
    snippets = []
    for block in re.split(r"^### ", text, flags=re.M)[1:]:
        head, _, code = block.partition("\n")
        ident, _, rest = head.partition(" ")
        latent = _LATENT.match(rest.strip())
        snippets.append(
            Snippet(
                ident,
                code.rstrip("\n") + "\n",
                "heldout",
                latent.group(1) if latent else None,
                int(latent.group(2)) if latent else None,
            )
        )
    return snippets


def statement_lines(code: str) -> int:
    """Distinct lines on which an `ast.stmt` starts (a function body's wrapper not counted)."""
    return len({node.lineno for node in ast.walk(parse_any(code)) if isinstance(node, ast.stmt)})


def user_snippets(pattern: str, max_bytes: int = 200_000) -> list[Snippet]:
    """Snippets a user brings: a folder (every *.py in it, recursively), a file, or a glob. Each file
    must be UTF-8 text that parses as Python (module code or a function body); a bad one raises
    ValueError naming the file (and the line of a syntax error)."""
    root = Path(pattern).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.py") if p.is_file())
    elif root.is_file():
        files = [root]
    else:
        files = sorted(Path(p) for p in glob.glob(str(root), recursive=True) if Path(p).is_file())
    if not files:
        raise ValueError(f"selfpico: no snippet files match {pattern!r} (a folder of .py files, a file or a glob)")
    snippets = []
    for file in files:
        if file.stat().st_size > max_bytes:
            raise ValueError(f"selfpico: snippet file {file} is {file.stat().st_size} bytes (limit {max_bytes})")
        try:
            code = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"selfpico: snippet file {file} is not UTF-8 text (byte {err.start})") from err
        if not code.strip():
            raise ValueError(f"selfpico: snippet file {file} is empty")
        try:
            instrument(code)
        except InstrumentationError as err:
            raise ValueError(f"selfpico: snippet file {file}: {err}") from err
        except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
            raise ValueError(f"selfpico: snippet file {file} cannot be read as Python: {err}") from err
        snippets.append(Snippet(str(file), code, f"user:{file.name}"))
    return snippets
