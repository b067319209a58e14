"""RLlib's env runners with their per-step timers sampled instead of taken every step.

RLlib's single-agent runner times every piece of every env step into its metrics: the
env-to-module pipeline and each of its connectors, the module's forward, the module-to-env
pipeline and each of its connectors, the env step: ~8 timers a step, each an EMA push with
its NaN checks and key lookups, and two EMAs of the episodes' summed lengths around the
env-to-module pipeline. On CartPole that was ~20% of a training step, more than the env
itself (cProfile, 4-step chunks, one env). These are means, so taking one call in
`TIME_EVERY` keeps them unbiased; everything else the runner logs (steps, episodes, returns,
lifetimes) is logged as before.
"""

from __future__ import annotations

from ray.rllib.env.multi_agent_env_runner import MultiAgentEnvRunner
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import (
    ENV_TO_MODULE_SUM_EPISODES_LENGTH_IN,
    ENV_TO_MODULE_SUM_EPISODES_LENGTH_OUT,
)
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

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


_UNTIMED = _Untimed()


class SampledTimers(MetricsLogger):
    """A MetricsLogger whose `log_time` times the first call per key and then one in
    `TIME_EVERY`, and logs the `PER_STEP_MEANS` values as often."""

    def _due(self, key) -> bool:
        calls = self.__dict__.setdefault("_sampled_calls", {})
        key = key if isinstance(key, (str, tuple)) else tuple(key)  # (a list: unhashable)
        seen = calls.get(key, 0)
        calls[key] = seen + 1
        return seen % TIME_EVERY == 0

    def log_time(self, key, **kwargs):
        return super().log_time(key, **kwargs) if self._due(key) else _UNTIMED

    def log_value(self, key, value, **kwargs) -> None:
        if not (isinstance(key, str) and key in PER_STEP_MEANS) or self._due(key):
            super().log_value(key, value, **kwargs)


def sample_timers(metrics: MetricsLogger) -> None:
    """Turn a runner's logger (RLlib builds it in `EnvRunner.__init__`) into SampledTimers in
    place: it keeps what was already logged; the class adds methods and a call count
    made on first use."""
    metrics.__class__ = SampledTimers


class LeanEnvRunner(SingleAgentEnvRunner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sample_timers(self.metrics)


class LeanMultiAgentEnvRunner(MultiAgentEnvRunner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sample_timers(self.metrics)
