"""RLlib's env runners with their per-step timers sampled instead of taken every step.

RLlib's single-agent runner times every piece of every env step into its metrics: the
env-to-module pipeline and each of its connectors, the module's forward, the module-to-env
pipeline and each of its connectors, the env step: ~8 timers a step, each an EMA push with
its NaN checks and key lookups, and two EMAs of the episodes' summed lengths around the
env-to-module pipeline. On CartPole that was ~20% of a training step, more than the env
itself (cProfile, 4-step chunks, one env). These are means, so taking one call in
`TIME_EVERY` keeps them unbiased.

The runners also count every chunk (single-agent: 8 sums a chunk) or every env step
(multi-agent: 6 sums and more per agent a step) into the logger, and bump a Prometheus
counter as often: ~6% of a CartPole training step. Sums lose nothing when added up first, so
the lean runners hold them and log each once when their metrics are read (`get_metrics`,
which is all that reads them), and their connector pipelines time themselves one call in
`TIME_EVERY` too. Everything else (episodes, returns, lifetimes) is logged as before.
"""

from __future__ import annotations

import contextlib

from ray.rllib.connectors.env_to_module.env_to_module_pipeline import EnvToModulePipeline
from ray.rllib.connectors.module_to_env.module_to_env_pipeline import ModuleToEnvPipeline
from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import (
    ENV_TO_MODULE_SUM_EPISODES_LENGTH_IN,
    ENV_TO_MODULE_SUM_EPISODES_LENGTH_OUT,
)
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

from trainyard.agents import rllib_private

TIME_EVERY = 16  # calls per key between two timed ones
# per-step EMA values (not timers) sampled the same way
PER_STEP_MEANS = frozenset({ENV_TO_MODULE_SUM_EPISODES_LENGTH_IN,
                            ENV_TO_MODULE_SUM_EPISODES_LENGTH_OUT})


class _Untimed:
    """What a skipped timer hands back: a context (and the pipelines' explicit
    __enter__/__exit__ calls) that does nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


UNTIMED = _Untimed()


class SampledTimers(MetricsLogger):
    """A MetricsLogger whose `log_time` times the first call per key and then one in
    `TIME_EVERY`, and logs the `PER_STEP_MEANS` values as often."""

    def _due(self, key) -> bool:
        if self.__dict__.get("_every_call"):
            return True
        calls = self.__dict__.setdefault("_sampled_calls", {})
        key = key if isinstance(key, (str, tuple)) else tuple(key)  # (a list: unhashable)
        seen = calls.get(key, 0)
        calls[key] = seen + 1
        return seen % TIME_EVERY == 0

    def log_time(self, key, **kwargs):
        return super().log_time(key, **kwargs) if self._due(key) else UNTIMED

    def log_value(self, key, value, **kwargs) -> None:
        if not (isinstance(key, str) and key in PER_STEP_MEANS) or self._due(key):
            super().log_value(key, value, **kwargs)

    @contextlib.contextmanager
    def every_call(self):
        """Within: every timer and per-step mean is taken (for a call already sampled)."""
        self.__dict__["_every_call"] = True
        try:
            yield
        finally:
            self.__dict__["_every_call"] = False


def _sampled_pipeline(pipeline_class: type) -> type:
    """RLlib's connector pipeline class, for a lean runner. Its call times itself and each
    piece under a name it derives per call (two regex substitutions a piece), ~3% of a
    CartPole step with the timers already sampled. Here one call in `TIME_EVERY` goes
    through it with every timer taken; the others run the same pieces without a logger. (No
    piece trainyard puts in these pipelines logs metrics.) One base and no new storage, so a
    built pipeline can take the class."""

    class Sampled(pipeline_class):
        def __call__(self, *, metrics=None, **kwargs):
            if not isinstance(metrics, SampledTimers):
                return super().__call__(metrics=metrics, **kwargs)
            calls = self.__dict__.get("_calls", 0)
            self.__dict__["_calls"] = calls + 1
            if calls % TIME_EVERY:
                return super().__call__(metrics=None, **kwargs)
            with metrics.every_call():
                return super().__call__(metrics=metrics, **kwargs)

    Sampled.__name__ = Sampled.__qualname__ = f"Lean{pipeline_class.__name__}"
    return Sampled


_LEAN_PIPELINES = {base: _sampled_pipeline(base)
                   for base in (EnvToModulePipeline, ModuleToEnvPipeline)}


class _SumsLater:
    """Stands in for a runner's logger inside RLlib's step counting: the sums it logs are
    added up here and logged once by `flush`; any other kind of value goes straight on."""

    def __init__(self, metrics: MetricsLogger):
        self.metrics = metrics
        self.pending: dict[tuple, float] = {}

    def log_value(self, key, value, reduce="mean", with_throughput=False, **kwargs) -> None:
        if reduce not in ("sum", "lifetime_sum") or kwargs:
            self.metrics.log_value(key, value, reduce=reduce, with_throughput=with_throughput,
                                   **kwargs)
            return
        slot = (key if isinstance(key, str) else tuple(key), reduce, with_throughput)
        self.pending[slot] = self.pending.get(slot, 0) + value

    def flush(self) -> None:
        for (key, reduce, with_throughput), value in self.pending.items():
            self.metrics.log_value(key, value, reduce=reduce, with_throughput=with_throughput)
        self.pending.clear()


class _LeanCounting:
    """Mixin for RLlib's env runners: sampled timers, and step counts logged when read."""

    def _make_lean(self) -> None:
        sample_timers(self.metrics)
        for pipeline in rllib_private.connector_pipelines(self):
            if type(pipeline) in _LEAN_PIPELINES:  # RLlib's own class (not a user's)
                pipeline.__class__ = _LEAN_PIPELINES[type(pipeline)]
        self._sums = _SumsLater(self.metrics)
        self._prometheus: dict[int, tuple[object, int]] = {}  # id(counter): (counter, steps)

    def _increase_sampled_metrics(self, *args, **kwargs):
        real, self.metrics = self.metrics, self._sums
        try:
            return super()._increase_sampled_metrics(*args, **kwargs)
        finally:
            self.metrics = real

    def _log_env_steps(self, metric, num_steps: int) -> None:
        counter, steps = self._prometheus.get(id(metric), (metric, 0))
        self._prometheus[id(metric)] = (counter, steps + num_steps)

    def get_metrics(self):
        self._sums.flush()
        prometheus, self._prometheus = self._prometheus, {}
        for counter, steps in prometheus.values():
            if steps > 0:  # (RLlib warns about a count of 0)
                super()._log_env_steps(counter, steps)
        return super().get_metrics()


def sample_timers(metrics: MetricsLogger) -> None:
    """Turn a runner's logger (RLlib builds it in `EnvRunner.__init__`) into SampledTimers in
    place: it keeps what was already logged; the class adds methods and a call count
    made on first use."""
    metrics.__class__ = SampledTimers


class LeanEnvRunner(_LeanCounting, SingleAgentEnvRunner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._make_lean()


class LeanMultiAgentEnvRunner(_LeanCounting, MultiAgentEnvRunner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._make_lean()
