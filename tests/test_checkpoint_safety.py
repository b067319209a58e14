"""Loading a checkpoint or a sweep's state cannot run code (README, "Threat model").

Each crafted file carries a payload that creates a marker file when unpickled; the first test
shows the payload is live (RLlib's own reader runs it), the others that every trainyard
command refuses the file with exit 2 and one line naming it, and that the marker never
appears.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import msgpack
import numpy as np
import pytest

from conftest import CARTPOLE, DIGITS, REPO
from trainyard import checkpoints, seal, tracking
from trainyard.checkpoints import MARKER, UnsafeCheckpointError
from trainyard.cli import main
from trainyard.loader import dump_spec, load_spec

SELFPLAY = REPO / "agents" / "configs" / "selfplay_tictactoe.yaml"
MODULE = Path("learner_group", "learner", "rl_module")


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def object_array(marker: Path) -> dict:
    """An array of dtype object as msgpack_numpy encodes one: its decoder unpickles `data`."""
    return {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1],
            b"data": pickle.dumps(Payload(marker))}


def write_state(path: Path, extra: dict | None = None) -> Path:
    """A component's state.msgpack: plain arrays as msgpack_numpy writes them, plus `extra`."""
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    state = {"weights": {b"nd": True, b"type": weights.dtype.str, b"kind": b"",
                         b"shape": list(weights.shape), b"data": weights.tobytes()},
             "step": 7, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgpack.packb(state, use_bin_type=True))
    return path


def rl_checkpoint(root: Path, component: Path, extra: dict | None = None) -> Path:
    """A committed RL checkpoint folder (marker written) whose `component` state has `extra`."""
    folder = root / "checkpoint_000002"
    write_state(folder / "state.msgpack")
    write_state(folder / MODULE / "default_policy" / "state.msgpack")
    write_state(folder / component / "state.msgpack", extra)
    (folder / "class_and_ctor_args.pkl").write_bytes(b"never read by restore_from_path")
    (folder / MARKER).write_text(json.dumps({"iteration": 2, "env_steps": 2000}))
    return folder


def run_with_storage(store_uri: str, job: Path, workdir: Path, kind: str) -> tuple[str, Path]:
    """An MLflow run of `job` (killed: still RUNNING) whose checkpoints live in workdir."""
    spec = load_spec(job).spec
    storage = workdir / "trainyard-runs" / "checkpoints"
    ref = tracking.open_run(store_uri, "safety", "crafted", {
        "trainyard.kind": kind, "trainyard.seed": "0",
        "trainyard.storage_path": str(storage), "trainyard.storage_name": "crafted"}, {},
        dump_spec(spec))
    return ref.run_id, storage / "crafted"


def refused(capsys, path: Path) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(path) in lines[0] and "Traceback" not in err
    return lines[0]


def test_the_payload_is_live_when_rllibs_reader_decodes_it(tmp_path):
    """The refusals below are not vacuous: RLlib's reader (msgpack with msgpack_numpy patched
    in) runs the crafted array's payload."""
    from ray.rllib.utils.checkpoints import try_import_msgpack

    marker = tmp_path / "pwned"
    path = write_state(tmp_path / "state.msgpack", {"evil": object_array(marker)})
    patched = try_import_msgpack(error=True)
    with open(path, "rb") as handle:
        patched.load(handle, strict_map_key=False)
    assert marker.exists()


def test_plain_rllib_state_passes_and_crafted_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    good = rl_checkpoint(tmp_path / "good", MODULE / "default_policy")
    checkpoints.vet_rllib_checkpoint(good)  # plain arrays, numbers, an unread ctor pickle

    cases = {
        "an array of Python objects": {"evil": object_array(marker)},
        "dtype holds Python objects": {"evil": {**object_array(marker), b"kind": b"V",
                                                b"type": [["a", "|O"]]}},
        "nested deep": {"optimizer": {"state": [{"exp_avg": object_array(marker)}]}},
    }
    for name, extra in cases.items():
        folder = rl_checkpoint(tmp_path / name.replace(" ", "_"), MODULE / "default_policy",
                               extra)
        with pytest.raises(UnsafeCheckpointError, match="would build by unpickling") as err:
            checkpoints.vet_rllib_checkpoint(folder)
        assert str(folder / MODULE / "default_policy" / "state.msgpack") in str(err.value)

    pickled = rl_checkpoint(tmp_path / "pickled", Path("learner_group"))
    (pickled / "learner_group" / "state.msgpack").unlink()
    (pickled / "learner_group" / "state.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"learner_group/state\.pkl is a pickle"):
        checkpoints.vet_rllib_checkpoint(pickled)

    garbage = rl_checkpoint(tmp_path / "garbage", Path("learner_group"))
    (garbage / "learner_group" / "state.msgpack").write_bytes(b"\xc1\xc1 not msgpack")
    with pytest.raises(UnsafeCheckpointError, match="is not valid msgpack"):
        checkpoints.vet_rllib_checkpoint(garbage)
    assert not marker.exists()


def test_eval_and_resume_of_an_rl_run_refuse_a_crafted_checkpoint(workdir, store_uri, capsys):
    marker = workdir / "pwned"
    run_id, root = run_with_storage(store_uri, CARTPOLE, workdir, "rl")
    folder = rl_checkpoint(root, MODULE / "default_policy", {"evil": object_array(marker)})
    crafted = folder / MODULE / "default_policy" / "state.msgpack"

    assert main(["eval", run_id, "--tracking-uri", store_uri]) == 2
    assert "msgpack_numpy would build by unpickling" in refused(capsys, crafted)
    assert main(["resume", run_id, "--tracking-uri", store_uri]) == 2
    refused(capsys, crafted)

    write_state(crafted)  # now only a pickle beside it
    (folder / "learner_group" / "state.pkl").write_bytes(pickle.dumps(Payload(marker)))
    assert main(["eval", run_id, "--tracking-uri", store_uri]) == 2
    assert "is a pickle" in refused(capsys, folder / "learner_group" / "state.pkl")
    assert not marker.exists()


def test_play_and_selfplay_eval_refuse_a_crafted_main_module(workdir, store_uri, capsys):
    marker = workdir / "pwned"
    run_id, root = run_with_storage(store_uri, SELFPLAY, workdir, "rl")
    folder = rl_checkpoint(root, MODULE / "main", {"evil": object_array(marker)})
    crafted = folder / MODULE / "main" / "state.msgpack"

    assert main(["play", run_id, "--tracking-uri", store_uri]) == 2
    refused(capsys, crafted)
    assert main(["eval", run_id, "--opponent", "random", "--tracking-uri", store_uri]) == 2
    refused(capsys, crafted)
    assert not marker.exists()


def test_sweep_trial_restore_and_pbt_handover_refuse_a_crafted_checkpoint(tmp_path):
    """A trial restored by Tune, or handed a better trial's checkpoint by PBT, gets the folder
    as `ctx.restore_from`: refused before the algorithm reads any of it."""
    from trainyard.agents.runner import _restore
    from trainyard.runs import RunContext

    marker = tmp_path / "pwned"
    folder = rl_checkpoint(tmp_path / "trial", Path("learner_group"),
                           {"evil": object_array(marker)})
    ctx = RunContext(None, 0, str(tmp_path), "trial", restore_from=str(folder))
    with pytest.raises(UnsafeCheckpointError, match="learner_group/state.msgpack"):
        _restore(None, ctx, tmp_path / "trial")  # the algorithm is never touched
    assert not marker.exists()


def test_supervised_resume_refuses_a_pt_with_a_reduce_payload(workdir, store_uri, capsys):
    import torch

    marker = workdir / "pwned"
    run_id, root = run_with_storage(store_uri, DIGITS, workdir, "supervised")
    folder = root / "checkpoint_2026-12-03_00-00-00.000000"
    folder.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(2)}, "evil": Payload(marker)},
               folder / checkpoints.STATE_FILE)

    assert main(["resume", run_id, "--tracking-uri", store_uri]) == 2
    line = refused(capsys, folder / checkpoints.STATE_FILE)
    assert "cannot be read safely" in line
    with pytest.raises(UnsafeCheckpointError):  # where the workers (and init_from) read it
        checkpoints.load_state(folder)
    assert not marker.exists()


def test_sweep_state_is_sealed_and_resume_refuses_what_the_seal_does_not_cover(
        tmp_path, monkeypatch):
    monkeypatch.setenv(seal.KEY_ENV, str(tmp_path / "keys" / "state.key"))
    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    (sweep / "tuner.pkl").write_bytes(pickle.dumps({"ok": 1}))
    (sweep / "experiment_state-1.json").write_text("{}")
    (sweep / "best.yaml").write_text("not state")

    with pytest.raises(seal.SealError, match="has no trainyard-seal.json"):
        seal.verify(sweep)
    seal.seal(sweep)
    seal.verify(sweep)
    assert oct((tmp_path / "keys" / "state.key").stat().st_mode & 0o777) == "0o600"

    (sweep / "best.yaml").write_text("edited: not state, not sealed")
    seal.verify(sweep)
    (sweep / "tuner.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    with pytest.raises(seal.SealError, match=r"tuner\.pkl changed after"):
        seal.verify(sweep)
    seal.seal(sweep)
    (sweep / "trials" / "searcher-state.pkl").write_bytes(b"new")
    with pytest.raises(seal.SealError, match="appeared after"):
        seal.verify(sweep)
    seal.seal(sweep)
    monkeypatch.setenv(seal.KEY_ENV, str(tmp_path / "other.key"))  # another user's key
    (tmp_path / "other.key").write_bytes(b"x" * 32)
    with pytest.raises(seal.SealError, match="not written with this user's key"):
        seal.verify(sweep)
    with pytest.raises(seal.SealError, match="remote storage"):
        seal.verify("s3://bucket/sweep")


def test_resume_of_an_unsealed_sweep_exits_2_before_tune_unpickles(workdir, store_uri, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv(seal.KEY_ENV, str(workdir / "state.key"))
    marker = workdir / "pwned"
    spec = load_spec(CARTPOLE).spec
    storage = workdir / "trainyard-runs" / "checkpoints"
    parent = tracking.open_run(store_uri, "safety", "sweep", {
        "trainyard.kind": "rl", "trainyard.sweep": "parent",
        "trainyard.storage_path": str(storage)}, {}, dump_spec(spec))
    folder = storage / parent.run_id
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))

    assert main(["resume", parent.run_id, "--tracking-uri", store_uri]) == 2
    line = refused(capsys, folder)
    assert "--trust-sweep-state" in line
    seal.seal(folder)
    (folder / "tuner.pkl").write_bytes(pickle.dumps([Payload(marker)]))
    assert main(["resume", parent.run_id, "--tracking-uri", store_uri]) == 2
    assert "changed after" in refused(capsys, folder / "tuner.pkl")
    assert not marker.exists()
