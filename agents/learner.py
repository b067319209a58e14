"""RLlib's DQN learner with the optimizer the spec names, and a cheaper gradient check; the
double-Q training forward our DQN modules share (`LeanDoubleQ`).

- Adam (RLlib's default, with its eps exposed; torch's fused kernel) or RMSProp as the Nature
  DQN paper trained (centered, decay 0.95, eps 0.01; multi-tensor kernels, torch has no fused
  RMSProp).
- RLlib checks every parameter's gradient for nan/inf twice per update (`torch.isfinite` per
  tensor): on the Nature CNN that was 17% of a CPU update (profiled on Pong). The config turns
  that off (`torch_skip_nan_gradients`) and this learner checks the gradients' norms once; a
  non-finite update is dropped with a warning, as RLlib does.
- RLlib syncs the target network of every module it holds, trained or not: a frozen self-play
  snapshot's target net would drift. Only the modules being trained are synced here.
- `value_bound`: the bootstrapped Q-values are clipped to [-bound, bound] before RLlib builds
  its targets. In a +1/-1 game the true values lie in [-1, 1], yet on Connect Four the max
  over seven noisy estimates fed on itself until non-terminal targets sat at 1.0-1.5 (measured
  inside `compute_loss_for_module`); clipping keeps the bootstrap honest. Masked (-inf) moves
  stay -inf.
- `board_symmetries` (self-play): each replayed transition is seen through a random symmetry
  of the board (`trainyard.agents.symmetry.symmetric_batch`).
- Recurrent Q-networks: the loss of replayed sequences is `trainyard.agents.recurrent`'s
  (n-step targets along the sequence, per-sequence priorities).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
from ray.rllib.algorithms.dqn.dqn_learner import (
    QF_LOSS_KEY,
    QF_MEAN_KEY,
    QF_NEXT_PREDS,
    QF_PREDS,
    QF_TARGET_NEXT_PREDS,
    TD_ERROR_MEAN_KEY,
)
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME, TD_ERROR_KEY
from ray.rllib.utils.torch_utils import clip_gradients

from trainyard.agents.recurrent import sequence_loss

logger = logging.getLogger(__name__)

# A seeded RLlib process on a CPU-only torch build turns torch's deterministic algorithms on
# (`ray.rllib.utils.torch_utils.set_torch_seed`), and with them torch fills every new tensor
# with NaN before use (`fill_uninitialized_memory`): a debugging aid that changes no result of
# an op that writes its output, and ~2% of a Nature-CNN update here (its activations and
# gradients are fresh tensors each update). Deterministic algorithms stay on; the fill is off
# in every process that imports trainyard's modules or learner (driver, runners, learners).
torch.utils.deterministic.fill_uninitialized_memory = False


class LeanDoubleQ:
    """Mixin for RLlib's DQN modules: double Q without a backward pass through next states.

    RLlib runs the online network once on [obs; next_obs] with autograd on, so the backward
    pass covers twice the batch although the loss takes only the argmax of the second half.
    Here the online network sees the next observations under `no_grad`: the same values and
    gradients (tests/agents/test_atari.py), ~20-25% less work per update on the Nature CNN
    (batch 32, CPU). Distributional and stateful modules keep RLlib's pass."""

    #: set by the learner (`DQNLearner.build`) when `agent.precision` resolves to bf16
    trainyard_bf16 = False

    def _forward_train(self, batch):
        if not self.trainyard_bf16:
            return self._lean_forward_train(batch)
        with bf16_autocast(self):
            output = self._lean_forward_train(batch)
        # the loss and TD targets are computed in fp32 from here
        return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                for k, v in output.items()}

    def _lean_forward_train(self, batch):
        if not self.uses_double_q or self.num_atoms > 1 or Columns.STATE_IN in batch:
            return super()._forward_train(batch)
        output = {QF_PREDS: self.compute_q_values({Columns.OBS: batch[Columns.OBS]})[QF_PREDS]}
        with torch.no_grad():
            output[QF_NEXT_PREDS] = self.compute_q_values(
                {Columns.OBS: batch[Columns.NEXT_OBS]})[QF_PREDS]
        output[QF_TARGET_NEXT_PREDS] = self.forward_target(
            {Columns.OBS: batch[Columns.NEXT_OBS]})[QF_PREDS]
        return output


def bf16_autocast(module: torch.nn.Module):
    """bf16 autocast for a Q-module's forward passes where the learner resolved
    `agent.precision` to bf16 for it (`trainyard_bf16`, set in `DQNLearner.build`); a no-op
    otherwise. Callers compute TD targets and the loss in fp32 from its outputs."""
    if not getattr(module, "trainyard_bf16", False):
        return contextlib.nullcontext()
    return torch.autocast(next(module.parameters()).device.type, dtype=torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether the hardware computes bf16 natively: Ampere or newer GPUs; CPUs with
    AVX512-BF16 or AMX (elsewhere bf16 is emulated, and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, device: torch.device, conv: bool) -> str:
    """`agent.precision` -> "bf16" or "fp32" (auto: bf16 for conv networks on native bf16)."""
    if requested == "auto":
        return "bf16" if conv and native_bf16(device) else "fp32"
    return requested


class DQNLearner(DQNTorchLearner):
    def build(self) -> None:
        """RLlib's build, then the kernel settings of `agent.precision`, `channels_last` and
        `compile` on each conv Q-network this learner trains (see README "DQN speed")."""
        super().build()
        settings = self.config.learner_config_dict
        self.precision = "fp32"
        for module_id in self.module.keys():
            module = self.module[module_id].unwrapped()
            if not isinstance(module, torch.nn.Module):  # a scripted self-play opponent
                continue
            conv = any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
            device = next(module.parameters()).device
            precision = resolve_precision(settings.get("precision", "fp32"), device, conv)
            if isinstance(module, LeanDoubleQ) and precision == "bf16":
                module.trainyard_bf16 = True
                self.precision = "bf16"
            if conv and settings.get("channels_last"):
                module.to(memory_format=torch.channels_last)  # same Parameter objects
            if settings.get("compile"):
                compile_networks(module)

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        settings = config.learner_config_dict
        params = self.get_parameters(self._module[module_id])
        if settings.get("optimizer", "adam") == "rmsprop":
            optimizer = torch.optim.RMSprop(params, alpha=settings["rmsprop_decay"],
                                            eps=settings["optimizer_eps"], centered=True,
                                            foreach=True)
        else:
            # The fused kernel updates each tensor in one pass: on the Nature CNN (1.7M
            # parameters, one CPU thread) 2.9 ms a step against 9.3 ms for the multi-tensor
            # kernels, which was 23% of a CPU update (profiled on Pong). CPU and CUDA have it.
            kernel = {"fused": True} if {p.device.type for p in params} <= {"cpu", "cuda"} \
                else {"foreach": True}
            optimizer = torch.optim.Adam(params, eps=settings.get("optimizer_eps", 1e-8),
                                         **kernel)
        # the learning rate (and any schedule) is RLlib's, from config.lr
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params,
                                lr_or_lr_schedule=config.lr)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        settings = config.learner_config_dict
        bound = settings.get("value_bound")
        if settings.get("recurrent") and batch[Columns.ACTIONS].dim() == 2:  # [B, T] sequences
            loss, priorities, stats = sequence_loss(
                self, module_id, config, batch, fwd_out, n_step=settings["seq_n_step"],
                eta=settings["priority_eta"], value_bound=bound)
            self.metrics.log_value((module_id, TD_ERROR_KEY), priorities, reduce="item_series")
            self.metrics.log_dict({QF_LOSS_KEY: loss, QF_MEAN_KEY: stats["qf_mean"],
                                   TD_ERROR_MEAN_KEY: stats["td_error_mean"],
                                   "seq_trained_steps_mean": stats["seq_trained_steps_mean"],
                                   "seq_priority_mean": stats["seq_priority_mean"]},
                                  key=module_id, window=1)
            return loss
        if bound:
            q = fwd_out[QF_TARGET_NEXT_PREDS]
            fwd_out[QF_TARGET_NEXT_PREDS] = torch.where(torch.isfinite(q),
                                                        q.clamp(-bound, bound), q)
        return super().compute_loss_for_module(module_id=module_id, config=config,
                                               batch=batch, fwd_out=fwd_out)

    def _update(self, batch):
        symmetries = self.config.learner_config_dict.get("board_symmetries")
        if symmetries:
            from trainyard.agents.symmetry import symmetric_batch

            tables = self._symmetry_tables(symmetries)
            batch = {mid: symmetric_batch(b, tables) if Columns.OBS in b else b
                     for mid, b in batch.items()}
        return super()._update(batch)

    def _symmetry_tables(self, symmetries: dict):
        if getattr(self, "_symmetries", None) is None:
            from trainyard.agents.games import game_info
            from trainyard.agents.symmetry import board_symmetries

            self._symmetries = board_symmetries(game_info(symmetries["game"]),
                                                symmetries["mirror"], symmetries["rotations"])
        return self._symmetries

    def _get_clip_function(self):
        return self._clip_by_global_norm

    def _clip_by_global_norm(self, gradients_dict, *, grad_clip, grad_clip_by):
        """RLlib's clip by global norm, in one pass over the gradients: their norms (kept, so
        that `apply_gradients` checks them for nan/inf without a second pass), then a scale
        only when the norm is over `grad_clip` (RLlib's multiplies by 1 otherwise, a second
        pass of every update: ~1.7 ms of a 50 ms Nature-CNN update on this CPU)."""
        if grad_clip_by != "global_norm":
            return clip_gradients(gradients_dict, grad_clip=grad_clip, grad_clip_by=grad_clip_by)
        grads = [g for g in gradients_dict.values() if g is not None]
        if not grads:
            return torch.zeros(())
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self._checked = getattr(self, "_checked", set()) | {id(g) for g in grads}
        self._finite = getattr(self, "_finite", True) and bool(torch.isfinite(total))
        if self._finite and float(total) + 1e-6 > grad_clip:  # RLlib's coefficient, unclamped
            torch._foreach_mul_(grads, grad_clip / (float(total) + 1e-6))
        return total.nan_to_num(posinf=1e9)  # (RLlib logs it)

    def apply_gradients(self, gradients_dict) -> None:
        grads = [g for g in gradients_dict.values() if g is not None]
        checked, finite = getattr(self, "_checked", set()), getattr(self, "_finite", True)
        self._checked, self._finite = set(), True
        if grads and all(id(g) in checked for g in grads):  # normed while clipping
            bad = not finite
        else:
            bad = bool(grads) and not torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())
        if bad:
            logger.warning("gradients contain nan/inf values: this update is skipped")
            for grad in grads:
                grad.zero_()
            return
        super().apply_gradients(gradients_dict)

    def after_gradient_based_update(self, *, timesteps) -> None:
        now = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
        for module_id in self.module.keys():
            if not self.should_module_be_updated(module_id):  # frozen: "just synced"
                self.last_update_ts_by_mid[module_id] = now
        super().after_gradient_based_update(timesteps=timesteps)


def compile_networks(module: torch.nn.Module) -> None:
    """`torch.compile` each network of a Q-module in place (`nn.Module.compile`: the state
    dict keeps its plain names, no `_orig_mod.`), so checkpoints, eval and play are unchanged.
    A compiler that cannot run here falls back to eager at the first call, with a warning."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # fall back to eager, do not fail the run
    for child in module.children():
        if any(True for _ in child.parameters()):
            child.compile(dynamic=False)


def scheduled_epsilon(schedule, t: int) -> float:
    """RLlib's epsilon at step t as a float, by its own rule (`PiecewiseSchedule`: linear
    between the points, the last value outside them), so a seeded run's coin tosses do not
    move. A DQN module's `Scheduler` computes the same and builds a tensor each step to hold
    it (~2% of a CartPole step)."""
    if not isinstance(schedule, (list, tuple)):
        return float(schedule)
    for (l_t, left), (r_t, right) in zip(schedule[:-1], schedule[1:], strict=True):
        if l_t <= t < r_t:
            return left + float(t - l_t) / (r_t - l_t) * (right - left)
    return float(schedule[-1][-1])


class LeanActing:
    """Mixin for RLlib's DQN modules: epsilon-greedy acting without RLlib's per-step costs."""

    def forward_exploration(self, batch, **kwargs):
        # RLlib switches the module to eval mode and back around every acting step (a walk
        # over each submodule, twice: ~5% of Atari sampling, py-spy). Without dropout or
        # batch norm the mode changes nothing, so acting skips the switch.
        if self._mode_free() and Columns.STATE_IN not in batch:
            return self._forward_exploration(batch, **kwargs)
        return super().forward_exploration(batch, **kwargs)

    def _forward_exploration(self, batch, t):
        """Epsilon-greedy over the Q-values: RLlib's rule (uniform random action with
        probability epsilon, else the argmax) without building a distribution object. The
        coin is tossed first and the network sees only the observations that act greedily:
        early in training, when epsilon is near 1, most acting steps need no forward pass at
        all (a single-file loop skips it the same way)."""
        obs = batch[Columns.OBS]
        epsilon = self._epsilon(t)
        rows = obs.shape[0]
        # (drawn even when unused: the random stream, and so a seeded run, stays as it was)
        actions = torch.randint(self.action_space.n, (rows,), device=obs.device)
        greedy = torch.rand(rows, device=obs.device) >= epsilon
        acting = int(greedy.sum())
        if acting == rows:  # all greedy (late in training, evaluation): no masking copies
            with torch.inference_mode():  # acting never needs autograd's bookkeeping
                values = self.compute_q_values(batch)[QF_PREDS]
            return {Columns.ACTIONS: values.argmax(-1)}
        if acting:
            with torch.inference_mode():
                values = self.compute_q_values({**batch, Columns.OBS: obs[greedy]})[QF_PREDS]
            actions[greedy] = values.argmax(-1)
        return {Columns.ACTIONS: actions}

    def _epsilon(self, t: int) -> float:
        return scheduled_epsilon(self.model_config["epsilon"], t)

    def _mode_free(self) -> bool:
        if getattr(self, "_no_mode_layers", None) is None:
            modal = (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm)
            self._no_mode_layers = not any(isinstance(m, modal) for m in self.modules())
        return self._no_mode_layers


class QModule(LeanActing, LeanDoubleQ, DefaultDQNTorchRLModule):
    """RLlib's default DQN module (an MLP, or MinAtar's conv Q-network) with the lean acting
    step, the lean double-Q forward and the learner's precision setting."""


class LatestObservation(ConnectorV2):
    """Env-to-module, the whole pipeline for feed-forward acting on vector or board
    observations: each env's newest observation, stacked into one tensor on the module's
    device (in place of RLlib's default pieces: observations from episodes, batching, numpy
    to tensor, and their per-piece timers)."""

    def __init__(self, input_observation_space=None, input_action_space=None, *, device=None,
                 **kwargs):
        self.device = device
        super().__init__(input_observation_space, input_action_space, **kwargs)

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None,
                 **kwargs):
        newest = np.stack([episode.get_observations(-1) for episode in episodes])
        batch[Columns.OBS] = torch.from_numpy(newest).to(self.device or "cpu")
        return batch
