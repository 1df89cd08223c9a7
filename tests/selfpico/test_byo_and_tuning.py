"""Bring your own snippets (files, folders, globs, bad files) and the value-search tuning data."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from components.checks import ConfigError
from components.sandbox import Sandbox, SandboxLimits
from components.selfpico.executor import Snippet
from components.selfpico.predictors import PredictionRequest, RuleBasedPredictor
from components.selfpico.snippets import heldout_snippets, statement_lines, user_snippets
from components.selfpico.tuning import candidates, search_values, value_chats
from mlsys.flow import compose, run


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxLimits(wall_seconds=15, cpu_seconds=5))


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
    if found.failures:  # the rule-based 'text' fails in int(): a feedback chat leads from it to the target
        assert "ValueError" in chats[1][-2]["content"] and chats[1][-1]["content"] == found.target
