"""Bring your own client speeds: `fed_speed=given` with a list or a file of seconds per local step;
bad files are refused at composition with the file, the line and the value."""

from __future__ import annotations

import pytest

from components.federated import aggregators as agg
from components.federated import task as fl_task
from components.federated.federation import build_speeds
from components.federated.schedulers import SCHEDULERS
from components.federated.simulator import LocalTrainer, Simulator, VirtualClock
from components.federated.speeds import StepTimesError, read_step_times
from mlsys.flow import compose


def test_step_times_file_one_per_line_or_json(tmp_path, flow_overrides):
    lines = tmp_path / "speeds.txt"
    lines.write_text("# seconds per step\n0.5\n\n1   # the middle one\n4e0\n")
    cfg = compose("federated", flow_overrides + ["clients=3", "fed_speed=given", f"fed_speed.step_times_file={lines}"])
    assert cfg.fed_speed.step_times == [0.5, 1.0, 4.0]
    listed = tmp_path / "speeds.json"
    listed.write_text("[2, 0.25]")
    assert read_step_times(str(listed), 2) == [2.0, 0.25]
    cfg = compose("federated", flow_overrides + ["clients=2", "fed_speed=given", "fed_speed.step_times=[3,1.5]"])
    assert list(build_speeds(cfg.fed_speed, 2, 0).step_times) == [3.0, 1.5]


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.5\nfast\n1\n", r"speeds.txt, line 2: 'fast' is not a number"),
        ("0.5\n-1\n1\n", r"speeds.txt, line 2: '-1' is not a number of seconds > 0"),
        ("0.5\nnan\n1\n", r"speeds.txt, line 2: 'nan' is not a number of seconds > 0"),
        ("0.5\n1\n", r"speeds.txt: 2 step times for 3 clients"),
        ("[0.5, 1,", r"speeds.txt, line 1: not valid JSON"),
        ('[0.5, "1", 2]', r"speeds.txt: client 1: '1' is not a number"),
        ("[0.5, true, 2]", r"speeds.txt: client 1: True is not a number"),
    ],
)
def test_hostile_step_time_files_name_file_line_and_value(tmp_path, flow_overrides, text, message):
    path = tmp_path / "speeds.txt"
    path.write_text(text)
    with pytest.raises(StepTimesError, match=message):
        read_step_times(str(path), 3)
    with pytest.raises(Exception, match=message):
        compose("federated", flow_overrides + ["clients=3", "fed_speed=given", f"fed_speed.step_times_file={path}"])


def test_step_time_settings_that_cannot_work(tmp_path, flow_overrides):
    with pytest.raises(Exception, match="cannot be read"):
        compose("federated", flow_overrides + ["fed_speed=given", f"fed_speed.step_times_file={tmp_path / 'no'}"])
    with pytest.raises(Exception, match="exactly one of step_times"):
        compose("federated", flow_overrides + ["fed_speed=given"])
    with pytest.raises(Exception, match="need fed_speed.kind=given"):
        compose("federated", flow_overrides + ["fed_speed=normal", "fed_speed.step_times=[1,2,3,4,5]"])
    with pytest.raises(Exception, match=r"fed_speed.step_times: 2 step times for 5 clients"):
        compose("federated", flow_overrides + ["fed_speed=given", "fed_speed.step_times=[1,2]"])
    with pytest.raises(Exception, match=r"fed_speed.step_times: client 0: 0.0 is not a number of seconds > 0"):
        compose("federated", flow_overrides + ["clients=1", "fed_speed=given", "fed_speed.step_times=[0]"])


def test_given_speeds_drive_the_simulator(flow_overrides):
    cfg = compose("federated", flow_overrides + ["clients=3", "fed_speed=given", "fed_speed.step_times=[0.5,1,4]"])
    ds = fl_task.load_dataset("digits", seed=0)
    spec = fl_task.ModelSpec("mlp", ds.input_shape, ds.n_classes, width=4)
    data = [(ds.x_train[i::3][:60], ds.y_train[i::3][:60]) for i in range(3)]
    clock = VirtualClock()
    scheduler = SCHEDULERS["fedasync"](
        3,
        agg.StalenessWeightedAggregator(agg.client_weights([1, 1, 1]), 0.9),
        fl_task.initial_weights(spec, 0),
        clock,
        local_steps=10,
    )
    result = Simulator(
        scheduler,
        clock,
        build_speeds(cfg.fed_speed, 3, 0),
        LocalTrainer(fl_task.local_train, data, spec=spec),
        lambda w: {"accuracy": 0.0, "loss": 0.0},
        max_updates=4,
    ).run()
    # 10 steps each: client 0 arrives every 5 s, client 1 every 10 s (first at 10, dispatched before client 0's
    # second round, so it goes first in the tie), client 2 at 40 s
    assert [(r.time, r.clients) for r in result.records] == [(5.0, [0]), (10.0, [1]), (10.0, [0]), (15.0, [0])]
