"""Every private RLlib attribute trainyard touches, in one place.

RLlib 2.60 has no public accessor for these; when a Ray upgrade moves one, the test in
tests/agents/test_lean_dqn.py (test_private_rllib_attributes_are_where_trainyard_reads_them)
fails with the name of what moved, instead of a run failing somewhere deep in a training
step.

The lean env runners (`trainyard.agents.lean_runner`) also override two private methods of
RLlib's single- and multi-agent runners, `_increase_sampled_metrics` (the step counts) and
`_log_env_steps` (the Prometheus step counter); the same test checks that the runners still
call them.
"""

from __future__ import annotations

import torch


def local_learner(algo):
    """The learner in this process (`learners: 0`): its module, optimizer and gradient step.
    A LearnerGroup keeps it as `_learner` (None when the learners are remote actors)."""
    learner = algo.learner_group._learner
    if learner is None:
        raise RuntimeError("the lean DQN step needs the learner in the driver (resources."
                           "learners: 0); with remote learners the run uses RLlib's step")
    return learner


def env_runner_actors(algo) -> list:
    """The remote env runners' actor handles (a restarted actor keeps its handle)."""
    return list(algo.env_runner_group._worker_manager.actors().values())


def connector_pipelines(runner) -> tuple:
    """An env runner's env-to-module and module-to-env connector pipelines."""
    return runner._env_to_module, runner._module_to_env


class WeightCopier:
    """Copies a learner module's weights into an acting module in place, tensor by tensor.

    The acting module is RLlib's inference-only copy (no target networks): each of its
    tensors is matched by name once, and every sync is one `copy_` per tensor, with no state
    dicts, numpy or Ray objects in between (~1 ms for the Nature CNN on a CPU)."""

    def __init__(self, source: torch.nn.Module, target: torch.nn.Module):
        found = dict(source.state_dict(keep_vars=True))
        self.pairs = [(found[name], tensor) for name, tensor in
                      target.state_dict(keep_vars=True).items()]
        self.same_device = all(s.device == t.device for s, t in self.pairs)

    def share(self) -> bool:
        """Make each acting tensor a view of the learner's own (same device, shape and
        dtype): the optimizer's in-place steps then reach the acting module at once and
        there is nothing to copy. The same math as copying after every update, which is
        all it may stand in for. False (nothing changed) where the tensors differ."""
        if not self.same_device or any(s.shape != t.shape or s.dtype != t.dtype
                                       for s, t in self.pairs):
            return False
        for source, target in self.pairs:
            target.data = source.data
        return True

    @torch.no_grad()
    def copy(self) -> None:
        if self.same_device:
            torch._foreach_copy_([t for _, t in self.pairs], [s for s, _ in self.pairs])
        else:
            for source, target in self.pairs:
                target.copy_(source, non_blocking=True)
