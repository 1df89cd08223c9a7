"""What a federated run takes, each default written once with its meaning.

The `federated` flow's config is `FederatedRunSettings` (plus the flow's own knobs); its groups are
`FedStrategyConfig` (conf/fed_strategy: the scheduler class), `FedSpeedConfig` (conf/fed_speed: how
client speeds are drawn), `FedDataConfig` (conf/fed_data: the dataset loader and its split),
`FedModelConfig` and `FlowerDriverConfig`. A `_target_` names the class or function the option
selects; it is resolved (and checked) when the config is built, so a wrong one fails at composition.
The schedulers take their hyperparameter defaults from `FedStrategyConfig`, so they are written once.
"""

from __future__ import annotations

import pydoc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from components.checks import ConfigError, at_least, in_range, one_of
from components.federated import speeds
from components.federated.aggregators import STALENESS_FUNCTIONS
from components.federated.partitions import PARTITIONS


def _is_scheduler(found: Any) -> bool:
    return isinstance(found, type) and callable(getattr(found, "on_arrival", None))


class _Choice:
    """A group option whose `_target_` names the class or function it selects (resolved when built)."""

    _target_: str
    _group: ClassVar[str]  # the config group, for error messages
    _what: ClassVar[str]  # what `_target_` must name
    _accept: ClassVar[Callable[[Any], bool]] = callable
    _affixes: ClassVar[tuple[str, str]] = ("", "")  # stripped from the target's name for `short_name`

    @property
    def target(self) -> Any:
        """The object `_target_` names; a ConfigError naming the key when it is not what the group takes."""
        found = pydoc.locate(self._target_)
        if found is None or not type(self)._accept(found):
            raise ConfigError(
                f"{self._group}._target_", self._target_, f"unknown {self._what}: not an importable {self._what}"
            )
        return found

    @property
    def short_name(self) -> str:
        prefix, suffix = self._affixes
        return self._target_.rsplit(".", 1)[-1].removeprefix(prefix).removesuffix(suffix)


@dataclass
class FedStrategyConfig(_Choice):
    """conf/fed_strategy/<name>.yaml: the server's scheduler and its hyperparameters (each takes its own)."""

    _target_: str = "components.federated.schedulers.CompassScheduler"  # the scheduler class
    alpha: float = 0.9  # server mixing rate of the staleness-weighted step (paper/APPFL: 0.9)
    staleness: str = "polynomial"  # s(u): constant | polynomial (u+1)^-a | hinge
    staleness_a: float = 0.5  # polynomial exponent / hinge slope (FedAsync's a = 0.5)
    staleness_b: int = 4  # hinge: staleness tolerated at full weight
    q_max: int = 50  # FedCompass: most local steps in a round (paper 100 on MNIST; digits needs fewer)
    q_min: int = 10  # FedCompass: fewest local steps (paper keeps Q_min = Q_max / 5)
    speed_momentum: float = 0.9  # beta: weight of the newest speed observation (paper 0.9)
    latest_time_factor: float = 1.5  # lambda: a group waits until lambda x its expected span (paper 1.5)
    local_steps: int = 50  # FedAvg/FedAsync/FedBuff: steps per round, = FedCompass's Q_max for fairness
    buffer_size: int = 3  # FedBuff: arrivals per global update (K)
    # FedAvg faults (Flower's semantics): a round ends at this many virtual seconds after it started with
    # the updates that arrived (None: 10 x local_steps x fed_speed.mean, set by the run settings); a round
    # with fewer than min_clients updates (capped at clients) fails the run, naming the lost clients
    # (Flower's min_fit_clients).
    round_timeout: Optional[float] = None
    min_clients: int = 2

    _group, _what, _accept = "fed_strategy", "strategy", _is_scheduler

    def __post_init__(self) -> None:
        self.target  # noqa: B018 - resolves and checks _target_ now
        in_range("fed_strategy.alpha", self.alpha, 1e-9, 1.0)
        one_of("fed_strategy.staleness", self.staleness, STALENESS_FUNCTIONS)
        at_least("fed_strategy.staleness_a", self.staleness_a, 0.0)
        at_least("fed_strategy.staleness_b", self.staleness_b, 0)
        at_least("fed_strategy.q_min", self.q_min, 1)
        at_least("fed_strategy.q_max", self.q_max, self.q_min)
        in_range("fed_strategy.speed_momentum", self.speed_momentum, 0.0, 1.0)
        at_least("fed_strategy.latest_time_factor", self.latest_time_factor, 1.0)
        at_least("fed_strategy.local_steps", self.local_steps, 1)
        at_least("fed_strategy.buffer_size", self.buffer_size, 1)
        if self.round_timeout is not None and not self.round_timeout > 0:
            raise ConfigError("fed_strategy.round_timeout", self.round_timeout, "must be > 0 virtual seconds or null")
        at_least("fed_strategy.min_clients", self.min_clients, 1)

    @property
    def scheduler_class(self) -> type:
        """The scheduler class `_target_` names (a class with the Scheduler event interface)."""
        return self.target

    @property
    def name(self) -> str:
        """The strategy's short name (fedcompass | fedavg | fedasync | fedbuff), for logs and file names."""
        return self.target.name


@dataclass
class FedSpeedConfig(_Choice):
    """conf/fed_speed/<kind>.yaml: virtual seconds per local step of each client."""

    _target_: str = "components.federated.speeds.exponential_step_times"  # how each client's step time is drawn
    mean: float = 1.0  # mean seconds per step: the unit of virtual time
    sigma_ratio: float = 0.3  # normal: sigma = 0.3 mu, as in the paper
    jitter: float = 0.0  # relative per-round noise on a round's duration
    drift_time: Optional[float] = None  # virtual time at which some clients change speed (None: never)
    drift_fraction: float = 0.0  # the fastest this fraction of clients drift
    drift_factor: float = 1.0  # ...their step time is multiplied by this
    # given_step_times: the user's own seconds per local step, one per client, as a list or a file (a JSON
    # list, or one number per line); the file is read when the run settings are built
    step_times: list[float] = field(default_factory=list)
    step_times_file: Optional[str] = None
    _group, _what, _affixes = "fed_speed", "speed model", ("", "_step_times")

    def __post_init__(self) -> None:
        given = self.sampler is speeds.given_step_times
        if not given and (self.step_times or self.step_times_file):
            raise ConfigError(
                "fed_speed.kind",
                self.kind,
                "step_times / step_times_file need fed_speed.kind=given (the option fed_speed=given)",
            )
        if given and bool(self.step_times) == bool(self.step_times_file):
            raise ConfigError(
                "fed_speed.step_times",
                self.step_times,
                "fed_speed=given takes exactly one of step_times (a list) or step_times_file",
            )
        if not self.mean > 0:
            raise ConfigError("fed_speed.mean", self.mean, "must be > 0 seconds per step")
        at_least("fed_speed.sigma_ratio", self.sigma_ratio, 0.0)
        at_least("fed_speed.jitter", self.jitter, 0.0)
        in_range("fed_speed.drift_fraction", self.drift_fraction, 0.0, 1.0)
        if not self.drift_factor > 0:
            raise ConfigError("fed_speed.drift_factor", self.drift_factor, "must be > 0")

    @property
    def sampler(self) -> speeds.StepTimeSampler:
        """The step-time sampler `_target_` names (a function of `components.federated.speeds`' shape)."""
        return self.target

    @property
    def kind(self) -> str:
        """homogeneous | normal | exponential | given: the sampler's short name."""
        return self.short_name


@dataclass
class FedDataConfig(_Choice):
    """conf/fed_data/<name>.yaml: the dataset and how it is split over clients."""

    _target_: str = "components.federated.task.load_digits"  # the dataset loader: load_digits | load_mnist1d
    partition: str = "dirichlet"  # iid | class | dirichlet | dual_dirichlet
    test_fraction: float = 0.2  # digits: held-out share of the 1797 images (mnist1d has its own test split)
    classes_per_client: int = 3  # class partition: classes each client holds
    alpha: float = 0.5  # dirichlet: per-class concentration (smaller = more skewed)
    alpha_clients: float = 2.0  # dual_dirichlet: spread of client sizes
    alpha_classes: float = 2.0  # dual_dirichlet: spread of each client's class mix
    _group, _what, _affixes = "fed_data", "dataset", ("load_", "")

    def __post_init__(self) -> None:
        self.target  # noqa: B018 - resolves and checks _target_ now
        one_of("fed_data.partition", self.partition, PARTITIONS)
        if not 0 < self.test_fraction < 1:
            raise ConfigError("fed_data.test_fraction", self.test_fraction, "must be between 0 and 1 (exclusive)")
        at_least("fed_data.classes_per_client", self.classes_per_client, 1)
        for key in ("alpha", "alpha_clients", "alpha_classes"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"fed_data.{key}", getattr(self, key), "must be > 0")

    @property
    def loader(self) -> Callable[..., Any]:
        """The dataset loader `_target_` names: `(seed, test_fraction) -> Dataset`."""
        return self.target

    @property
    def name(self) -> str:
        """digits | mnist1d: the loader's short name, for logs and the registered model's name."""
        return self.short_name


@dataclass
class FedModelConfig:
    kind: str = "cnn"  # cnn (with BatchNorm: buffer averaging is exercised) | mlp
    width: int = 16  # channels of the first conv layer (hidden = 4x width for the MLP)

    def __post_init__(self) -> None:
        one_of("model.kind", self.kind, ("cnn", "mlp"))
        at_least("model.width", self.width, 1)


@dataclass
class FlowerDriverConfig:
    """driver=flower: the same scheduler over real Flower ClientApps."""

    backend: str = "simulation"  # simulation (Flower's Ray engine) | deployment (SuperLink+SuperNodes, loopback)
    seconds_per_virtual_second: float = 0.002  # emulated speed: a client sleeps steps*step_time*this
    timeout: float = 600.0  # wall-clock seconds before the server loop gives up
    # A FedAvg round never times out sooner than this many wall seconds: real training, messaging and
    # process start-up add to the emulated speed, so a virtual round_timeout alone would cut honest clients.
    round_timeout_floor: float = 60.0

    def __post_init__(self) -> None:
        one_of("flower.backend", self.backend, ("simulation", "deployment"))
        at_least("flower.round_timeout_floor", self.round_timeout_floor, 0.0)
        if not self.seconds_per_virtual_second > 0:
            raise ConfigError("flower.seconds_per_virtual_second", self.seconds_per_virtual_second, "must be > 0")
        if not self.timeout > 0:
            raise ConfigError("flower.timeout", self.timeout, "must be > 0 seconds")


@dataclass
class FederatedRunSettings:
    """One federated run: the clients, the stopping rule, local training, faults and the groups above."""

    rounds: int = 30  # stop after this many global model updates (aggregations)
    clients: int = 5  # m: number of clients (the paper runs 5 to 20)
    time_budget: Optional[float] = None  # stop at this virtual time as well (None: rounds decide)
    target_accuracy: float = 0.9  # for time_to_target (digits: ~97% is reachable)
    driver: str = "simulator"  # simulator (virtual time, deterministic) | flower
    lr: float = 0.05  # local SGD learning rate
    batch_size: int = 32  # local mini-batch
    client_weighting: str = "equal"  # p_i in the server step: equal (1/N, as the paper) | samples
    torch_threads: int = 1  # per client task: clients run in parallel, not inside one task
    crash_clients: list[int] = field(default_factory=list)  # clients that die and never answer again...
    crash_at: float = 0.0  # ...after this virtual time (the group timer must keep the run going)
    fed_strategy: FedStrategyConfig = field(default_factory=FedStrategyConfig)
    fed_speed: FedSpeedConfig = field(default_factory=FedSpeedConfig)
    fed_data: FedDataConfig = field(default_factory=FedDataConfig)
    model: FedModelConfig = field(default_factory=FedModelConfig)
    flower: FlowerDriverConfig = field(default_factory=FlowerDriverConfig)

    def __post_init__(self) -> None:
        self._check()
        speed = self.fed_speed
        if speed.sampler is speeds.given_step_times:  # one step time per client, checked now (file, line, value)
            speed.step_times = (
                speeds.read_step_times(speed.step_times_file, self.clients)
                if speed.step_times_file
                else speeds.check_step_times(list(speed.step_times), self.clients, "fed_speed.step_times")
            )
        if self.fed_strategy.round_timeout is None:  # generous: an honest round takes local_steps x its speed
            self.fed_strategy.round_timeout = 10.0 * self.fed_strategy.local_steps * self.fed_speed.mean

    def _check(self) -> None:
        at_least("clients", self.clients, 1)
        at_least("rounds", self.rounds, 1)
        one_of("driver", self.driver, ("simulator", "flower"))
        bad = [c for c in self.crash_clients if not 0 <= c < self.clients]
        if bad:
            raise ConfigError("crash_clients", self.crash_clients, f"{bad} are not client ids 0..{self.clients - 1}")
        at_least("crash_at", self.crash_at, 0.0)
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError("time_budget", self.time_budget, "must be > 0 virtual seconds or null")
        in_range("target_accuracy", self.target_accuracy, 0.0, 1.0)
        if not self.lr > 0:
            raise ConfigError("lr", self.lr, "must be > 0")
        at_least("batch_size", self.batch_size, 1)
        one_of("client_weighting", self.client_weighting, ("equal", "samples"))
        at_least("torch_threads", self.torch_threads, 1)
