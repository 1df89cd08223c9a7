"""Generated tuning snippets in the partial-code style SelfPiCo meets: loops over records, dict and
JSON-shaped data, objects read by attribute, method bodies on `self`, augmented assignments, text
files read line by line or whole.

Each template is a small program shape; names, keys, attributes and constants are drawn (seeded)
from vocabularies, so the model sees the same kinds of use with many different spellings. None of
them is a benchmark snippet: the `tune_selfpico` flow drops any generated snippet equal to one, and
a test checks the generated set shares no snippet (and no three consecutive lines) with the held-out set.
"""

from __future__ import annotations

import random

from components.selfpico.executor import Snippet

_COLLECTIONS = ["entries", "rows", "items", "records", "tickets", "jobs", "parcels", "readings", "visits", "bookings"]
_NUMERIC_KEYS = ["amount", "weight", "duration", "price", "score", "size", "count", "distance", "hours", "rating"]
_TEXT_KEYS = ["title", "owner", "region", "label", "status", "kind", "city", "team", "channel", "code"]
_OBJECTS = ["order", "ticket", "device", "player", "account", "article", "sample", "vehicle", "member", "task"]
_SERVICES = ["api", "client", "service", "backend", "gateway", "store", "repo", "session"]
_THRESHOLD = ["limit", "cutoff", "threshold", "minimum", "max_allowed", "target"]
_TEXTS = ["raw_text", "document", "message", "log_text", "body", "content"]

_TEMPLATES = [
    # sum and filter over a list of dicts
    """
{acc} = 0
kept = []
for {one} in {many}:
    if {one}["{num}"] > {thr}:
        {acc} += {one}["{num}"]
        kept.append({one}["{txt}"])
print(len(kept), "{many} over", {thr}, "total", {acc})
""",
    # group by a text key with dict.get
    """
groups = {{}}
for {one} in {many}:
    key = {one}.get("{txt}", "other")
    groups[key] = groups.get(key, 0) + {one}["{num}"]
best = max(groups, key=groups.get)
print(best, groups[best])
""",
    # JSON payload
    """
import json
data = json.loads({text})
names = []
for {one} in data["{many}"]:
    if {one}["{num}"] >= {thr}:
        names.append({one}["{txt}"].upper())
print(", ".join(names))
""",
    # objects read by attribute
    """
{acc} = 0.0
for {one} in {many}:
    {acc} += {one}.{num} * {one}.{num2}
    if {one}.{txt} == "{word}":
        print("found", {one}.{txt})
average = {acc} / len({many})
print(round(average, 2))
""",
    # method body updating self
    """
if {num} < 0:
    raise ValueError("negative {num}")
self.{acc} += {num}
self.history.append(({word!r}, {num}))
if self.{acc} > self.{thr}:
    self.alerts += 1
return self.{acc}
""",
    # service call returning a response object
    """
response = {svc}.get({url}, timeout=5)
if response.status_code != 200:
    print("failed", response.status_code)
payload = response.json()
for {one} in payload["{many}"]:
    print({one}["{txt}"], {one}["{num}"])
""",
    # config dict with nested keys
    """
host = {cfg}["{section}"]["host"]
port = int({cfg}["{section}"]["port"])
address = host + ":" + str(port)
retries = {cfg}.get("retries", 3)
for attempt in range(retries):
    print("connecting to", address, "attempt", attempt)
""",
    # string parsing into a dict
    """
result = {{}}
for line in {text}.splitlines():
    if not line.strip() or line.startswith("#"):
        continue
    name, _, rest = line.partition("=")
    result[name.strip()] = rest.strip()
print(sorted(result))
""",
    # counting words
    """
counts = {{}}
for word in {text}.lower().split():
    word = word.strip(".,!?")
    counts[word] = counts.get(word, 0) + 1
common = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:{small}]
for word, n in common:
    print(word, n)
""",
    # numeric statistics over a list
    """
values = [v for v in {many} if v is not None]
mean = sum(values) / len(values)
spread = max(values) - min(values)
above = [v for v in values if v > mean + {thr}]
print("mean", mean, "spread", spread, "above", len(above))
""",
    # method body over a dict held by self
    """
now = self.clock()
removed = 0
for key, stamp in list(self.{store}.items()):
    if now - stamp > self.{thr}:
        del self.{store}[key]
        removed += 1
self.{acc} += removed
return removed
""",
    # pairs and unpacking
    """
{acc} = 0
for name, qty in {pairs}:
    {acc} += qty
    print(name.title(), qty)
share = {{name: qty / {acc} for name, qty in {pairs}}}
print(share)
""",
    # sorting objects by an attribute
    """
ranked = sorted({many}, key=lambda {one}: {one}.{num}, reverse=True)
top = ranked[:{small}]
for position, {one} in enumerate(top, start=1):
    print(position, {one}.{txt}, {one}.{num})
print("kept " + str(len(top)) + " of " + str(len({many})))
""",
    # dates
    """
from datetime import datetime
start = datetime.strptime({date}, "%Y-%m-%d")
days = 0
for {one} in {many}:
    when = datetime.strptime({one}["date"], "%Y-%m-%d")
    if when >= start:
        days += 1
print(days, "{many} since", start.date())
""",
    # matrix / nested lists
    """
totals = []
for row in {grid}:
    row_total = 0
    for cell in row:
        row_total += cell
    totals.append(row_total)
print(max(totals), len(totals), {grid}[0][-1])
""",
    # ranges of a number: if / elif / else
    """
labels = []
for {one} in {many}:
    if {one}["{num}"] < {thr}:
        labels.append("low")
    elif {one}["{num}"] < {thr} * 2:
        labels.append("mid")
    else:
        labels.append("high")
print(labels.count("high"), "of", len(labels))
""",
    # text records split on a separator, bad ones skipped
    """
parsed = []
for line in {text}.split("\\n"):
    parts = line.split("{sep}")
    if len(parts) != 2:
        continue
    name, raw = parts
    try:
        parsed.append((name.strip(), float(raw)))
    except ValueError:
        print("skipping", name)
print(sum(v for _, v in parsed))
""",
    # lists grouped in a dict with setdefault
    """
by_{txt} = {{}}
for {one} in {many}:
    by_{txt}.setdefault({one}.{txt}, []).append({one})
for key, members in sorted(by_{txt}.items()):
    total = sum(m.{num} for m in members)
    print(key, len(members), total)
""",
    # a while loop consuming a budget
    """
spent = 0
index = 0
while index < len({many}) and spent + {many}[index] <= {thr}:
    spent += {many}[index]
    index += 1
left = {thr} - spent
print(index, "taken,", left, "left")
""",
    # two lists walked together
    """
changes = []
for old, new in zip({many}, {many2}):
    delta = new - old
    if delta:
        changes.append(delta)
ratio = len(changes) / max(len({many}), 1)
print(changes, ratio)
""",
    # de-duplication with a set of keys
    """
seen = set()
unique = []
for {one} in {many}:
    marker = ({one}["{txt}"], {one}["{num}"])
    if marker in seen:
        continue
    seen.add(marker)
    unique.append({one})
print(len({many}) - len(unique), "duplicates")
""",
    # a method body validating its argument and updating self
    """
if not isinstance({num}, (int, float)):
    raise TypeError("{num} must be a number")
if {num} > self.{thr}:
    self.rejected += 1
    return False
self.{store}[{ident}] = {num}
self.{acc} = sum(self.{store}.values())
return True
""",
    # fields of a text file's lines
    """
{acc} = 0
with open({file}) as {fh}:
    for raw in {fh}:
        fields = raw.strip().split("{sep}")
        if len(fields) < 2:
            continue
        {acc} += len(fields[1])
print("{file}:", {acc})
""",
    # a whole text file read, then its words
    """
with open({file}, encoding="utf-8") as {fh}:
    body = {fh}.read()
tokens = body.split()
longest = max(tokens, key=len) if tokens else ""
print(len(tokens), "tokens; longest:", longest)
""",
    # a stack or queue held by self
    """
if not self.{store}:
    return None
{one} = self.{store}.pop(0)
self.done.append({one})
self.{acc} += {one}.{num}
print("processed", {one}.{txt})
return {one}
""",
]


def _fill(template: str, rng: random.Random) -> str:
    many = rng.choice(_COLLECTIONS)
    one = rng.choice(_OBJECTS)
    num, num2 = rng.sample(_NUMERIC_KEYS, 2)
    many2 = rng.choice([c for c in _COLLECTIONS if c != many])
    return template.format(
        acc=rng.choice(["total", "running", "acc", "sum_value", "balance", "points"]),
        many=many,
        many2=many2,
        one=one,
        num=num,
        num2=num2,
        txt=rng.choice(_TEXT_KEYS),
        thr=rng.choice(_THRESHOLD),
        word=rng.choice(["urgent", "north", "gold", "done", "blue", "open"]),
        text=rng.choice(_TEXTS),
        svc=rng.choice(_SERVICES),
        url=rng.choice(["url", "endpoint", "base_url", "resource"]),
        cfg=rng.choice(["config", "settings", "conf", "options"]),
        section=rng.choice(["database", "server", "cache", "broker"]),
        small=rng.choice([3, 5, 10]),
        store=rng.choice(["pending", "queue", "entries", "waiting", "cache"]),
        pairs=rng.choice(["pairs", "totals", "stock_levels", "quantities"]),
        date=rng.choice(["since", "start_date", "from_date", "day"]),
        grid=rng.choice(["grid", "matrix", "table", "board"]),
        sep=rng.choice([":", "=", ";", "|", "->"]),
        ident=rng.choice(["user_id", "key", "name", "ident", "slug"]),
        file=rng.choice(["filename", "log_file", "input_path", "source_file", "csv_name", "report_path"]),
        fh=rng.choice(["fh", "stream", "infile", "src"]),
    )


def synthetic_snippets(count: int, seed: int = 0) -> list[Snippet]:
    """`count` generated snippets (every template in turn, vocabulary drawn with `seed`), distinct."""
    rng = random.Random(seed)
    out: dict[str, Snippet] = {}
    attempts = 0
    while len(out) < count and attempts < count * 20:
        template = _TEMPLATES[attempts % len(_TEMPLATES)]
        attempts += 1
        code = _fill(template, rng).strip() + "\n"
        if code not in out:
            out[code] = Snippet(f"synthetic:{len(out)}", code, "synthetic")
    return list(out.values())
