"""Bring your own snippets (files, folders, globs, bad files) and the value-search tuning data."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from components.checks import ConfigError
from components.selfpico.analysis import describe, shape_for
from components.selfpico.executor import Snippet, execute_snippet
from components.selfpico.predictors import PredictionRequest, RuleBasedPredictor
from components.selfpico.snippets import heldout_snippets, statement_lines, user_snippets
from components.selfpico.synthetic import synthetic_snippets
from components.selfpico.tuning import (
    ValueDataConfig,
    candidates,
    file_value,
    search_values,
    tuning_snippets,
    value_chats,
    varied,
)
from mlsys.flow import compose, run


def test_a_folder_a_file_and_a_glob_of_user_snippets(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.py").write_text("total += price\nprint(total)\n")
    (tmp_path / "sub" / "b.py").write_text("return self.x + 1\n")  # a method body
    (tmp_path / "notes.txt").write_text("not a snippet")
    assert [s.origin for s in user_snippets(str(tmp_path))] == ["user:a.py", "user:b.py"]
    assert len(user_snippets(str(tmp_path / "a.py"))) == 1
    assert len(user_snippets(str(tmp_path / "**" / "*.py"))) == 2


@pytest.mark.parametrize(
    "content, expected",
    [
        ("x = 1\ndef f(:\n    pass\n", r"bad\.py.*line 2"),
        (b"print('\xff\xfe')\n", r"bad\.py is not UTF-8"),
        ("   \n", r"bad\.py is empty"),
        ("async def f():\n    await g()\n", r"bad\.py.*async"),
    ],
)
def test_a_bad_user_file_is_named_with_the_problem(tmp_path, content, expected):
    path = tmp_path / "bad.py"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=expected):
        user_snippets(str(tmp_path))


def test_no_matching_files_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no snippet files match"):
        user_snippets(str(tmp_path / "*.py"))


def test_a_bad_snippets_key_fails_at_composition(tmp_path, flow_overrides):
    (tmp_path / "broken.py").write_text("if True\n    x = 1\n")
    with pytest.raises(ConfigError, match="snippets.*broken.py"):
        compose("selfpico", flow_overrides + [f"snippets={tmp_path}"])


def test_the_flow_runs_a_users_snippets(tmp_path, prefect_harness, flow_overrides, mlflow_uri):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "orders.py").write_text(
        "for order in orders:\n    total += order['qty'] * order['price']\nprint(round(total, 2))\n"
    )
    (folder / "method.py").write_text("self.count += 1\nreturn self.count\n")
    result = run(compose("selfpico", flow_overrides + [f"snippets={folder}", "sp_predictor@predictor=rule_based"]))
    assert result["metrics"]["snippets"] == 2 and result["metrics"]["line_coverage"] == 1.0
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_run(result["run_id"]).data.params["snippets"] == str(folder)


def test_heldout_set_is_as_described():
    snippets = heldout_snippets()
    assert len(snippets) >= 40 and len({s.id for s in snippets}) == len(snippets)
    assert all(8 <= statement_lines(s.code) <= 19 for s in snippets)
    latent = [s for s in snippets if s.expected_error]
    assert len(latent) >= 5 and all(s.expected_error == "TypeError" and s.expected_error_line for s in latent)


def test_value_search_prefers_the_candidate_that_runs_more_lines(sandbox):
    snippet = Snippet("s", "n = int(code)\nprint(n + 1)\nprint('done')\n")
    request = PredictionRequest("name#code", snippet.code, "n = int(code)")
    assert candidates(request)[0] == RuleBasedPredictor().predict(request)
    [found] = search_values(snippet, sandbox)
    assert found.key == "name#code" and found.lines == 3 and int(eval(found.target)) >= 0
    chats = value_chats([found])
    assert chats[0][-1] == {"role": "assistant", "content": found.target}
    assert all(m["role"] != "user" or "Code:" in m["content"] or "failed" in m["content"] for m in chats[0])
    assert found.failures  # a list or an object fails in int(): a feedback chat leads from it to the target
    failed_value, failure = found.failures[0]
    assert chats[1][-3]["content"] == failed_value and "int()" in failure
    assert failure in chats[1][-2]["content"] and chats[1][-1]["content"] == found.target


def test_a_candidate_that_ran_less_far_teaches_the_value_that_takes_the_branch(sandbox):
    code = "n = 0\nfor row in rows:\n    if row['size'] > 10:\n        n += 1\nprint(n)\n"
    [found] = search_values(Snippet("b", code), sandbox, per_key=4)
    rule = RuleBasedPredictor().predict(PredictionRequest("name#rows", code, ""))
    assert found.lines == 5 and found.target != rule  # the rule-based rows never enter the `if`
    [(value, outcome)] = [f for f in found.failures if f[0] == rule]
    assert outcome == "it ran 4 of the 5 lines; line `n += 1` never ran"
    chat = next(c for c in value_chats([found]) if c[-3]["content"] == rule)
    assert "runs more of the code" in chat[-2]["content"] and chat[-1]["content"] == found.target


def test_varied_values_keep_keys_and_shape_and_literal_texts_hold_the_codes_separators():
    value = eval(varied("[{'price': 2, 'name': 'text', 'ok': True, 'day': '2024-01-31'}]"))
    assert value == [{"price": 17, "name": "text_b", "ok": False, "day": "2024-01-31"}]
    assert varied("types.SimpleNamespace(size=2)") == "types.SimpleNamespace(size=17)"
    code = (
        "for line in text.splitlines():\n    if line.startswith('#'):\n        continue\n    k, v = line.split('=')\n"
    )
    texts = [eval(c) for c in candidates(PredictionRequest("name#text", code, ""), limit=8) if c.startswith("'")]
    lines = [line for text in texts for line in text.splitlines()]
    assert any(line.startswith("#") for line in lines) and any(line.count("=") == 1 for line in lines)


def _three_line_runs(code: str) -> set[tuple[str, ...]]:
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    return {tuple(lines[i : i + 3]) for i in range(len(lines) - 2)}


@pytest.mark.parametrize("seed", [0, 7])
def test_the_tuning_data_shares_no_snippet_with_the_heldout_set(seed):
    spec = ValueDataConfig(count=40, synthetic=80, seed=seed)
    tuning = tuning_snippets(spec, exclude=set())
    heldout = heldout_snippets()
    assert {s.origin.split(":")[0] for s in tuning} == {"package", "synthetic"}
    assert not {s.code.strip() for s in tuning} & {s.code.strip() for s in heldout}
    heldout_runs = set().union(*[_three_line_runs(s.code) for s in heldout])
    shared = {s.id: run for s in tuning for run in _three_line_runs(s.code) if run in heldout_runs}
    assert not shared
    # and the exclusion the flow applies drops a snippet equal to a benchmark one
    first = tuning[0].code.strip()
    assert first not in {s.code.strip() for s in tuning_snippets(spec, exclude={first})}


def test_generated_snippets_are_distinct_instrumentable_and_ask_for_values(sandbox):
    snippets = synthetic_snippets(20, seed=3)
    assert len({s.code for s in snippets}) == 20
    report = execute_snippet(snippets[2], RuleBasedPredictor(), sandbox)
    assert report.predictions >= 1 and report.n_lines >= 5


def test_json_text_is_a_candidate_shaped_by_what_the_code_reads(sandbox):
    code = "import json\ndata = json.loads(raw)\nfor r in data['rows']:\n    print(r['id'] + 1)\n"
    request = PredictionRequest("name#raw", code, "data = json.loads(raw)")
    texts = [c for c in candidates(request, limit=8) if c.startswith("'{")]
    assert texts and "rows" in eval(texts[0]) and "id" in eval(texts[0])
    [found] = [f for f in search_values(Snippet("j", code), sandbox) if f.key == "name#raw"]
    assert found.lines == 4 and found.target == texts[0]


def test_the_usage_names_the_calls_a_value_is_passed_to():
    code = "import json\ndata = json.loads(raw)\nn = int(count)\n"
    assert "passed to json.loads()" in describe(shape_for(code, "name", "raw"))
    assert "passed to int()" in describe(shape_for(code, "name", "count"))


def test_a_file_the_value_writes_is_the_target_for_a_path_the_code_opens(sandbox):
    # every plain string fails at open(); the path of a file the value itself writes runs the loop
    code = 'n = 0\nwith open(where) as fh:\n    for row in fh:\n        n += len(row.split(";"))\nprint(n)\n'
    request = PredictionRequest("name#where", code, "with open(where) as fh:", [], "passed to open()")
    assert any(c.startswith(file_value()[:40]) for c in candidates(request, limit=8))
    [found] = [f for f in search_values(Snippet("f", code), sandbox) if f.key == "name#where"]
    assert "write_text" in found.target and found.lines == 5
    assert any("FileNotFoundError" in message for _, message in found.failures)
