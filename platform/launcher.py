"""Starting Ray, and asking it for what a job needs before the job starts.

The only module that calls `ray.init`. Locally it starts an embedded Ray sized by the spec;
with an address it connects to a running cluster. Before training starts it checks that the
cluster can give the job's resources and fails with the resource's name instead of hanging.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Ray Train's controller polls its workers every 2 s, and a worker's `ray.train.report` waits
# for the poll that takes its previous report, so short epochs spent most of their time
# waiting. Each poll also wakes two processes that take a time slice from a training thread
# on a small machine. TRAIN_POLL_S balances the two (README, "Figures": the supervised
# throughput paragraph has the measurements). Set before ray.init so Ray's processes inherit
# it; `trainyard submit` gives cluster jobs the same value.
TRAIN_POLL_S = "0.5"
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)
# Ray starts its workers at nice 15, below its own daemons and everything else on the machine,
# so on a box with few cores the training workers lose time slices to every other process.
# The workers are the job; give them normal priority.
os.environ.setdefault("RAY_worker_niceness", "0")


# Ray Train services a local session turns off (each "0" unless the user set it).
LOCAL_OFF = ("RAY_TRAIN_METRICS_ENABLED", "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING",
             "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING",
             "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


# `trainyard --verbose`: the workers' output (Ray Train's, RLlib's, the user's prints) goes to
# the terminal live. Without it the terminal keeps trainyard's own lines and a run keeps its
# workers' output as the artifact logs/ray/ (runs.keep_ray_logs).
VERBOSE = False
LAUNCHED_AT: float | None = None  # when the command started (perf/startup_s counts from it)
JOINED = False  # this process joined a cluster (--address): its workers' logs are elsewhere
EMBEDDED = False  # this process started the Ray it uses, here; that Ray ends with the process


def session_logs() -> Path | None:
    """The log folder of the Ray session this process started or joined on this machine."""
    try:
        import ray

        node = ray._private.worker.global_worker.node  # no public API names the folder
        folder = Path(node.get_logs_dir_path())
    except Exception:  # noqa: BLE001 - a Ray without it: the run just keeps no Ray logs
        return None
    return folder if folder.is_dir() else None


PRELOAD_WAIT_S = 120.0  # (a fresh store's migration under another process's lock included)


def _preload(items: tuple):
    """Import `items` (module names) or call them (functions) in a background thread, in order;
    returns the thread. Starting Ray is mostly waiting (for the GCS, the raylet, the dashboard
    to come up) and the imports a run needs next (torch, MLflow's store, the engine) are mostly
    CPU, so they go side by side. The caller joins the thread before it imports anything of its
    own: two threads importing module chains that meet (scikit-learn's and Ray Tune's, through
    pandas and scipy) can be handed each other's half-initialised modules."""
    import importlib
    import threading

    def load() -> None:
        for item in items:
            try:
                item() if callable(item) else importlib.import_module(item)
            except Exception:  # noqa: BLE001 - the main thread's own import or call reports it
                return

    thread = threading.Thread(target=load, name="trainyard-preload", daemon=True)
    thread.start()
    return thread


class ResourceError(RuntimeError):
    """The cluster cannot give the job what its spec asks for."""


@contextmanager
def ray_session(address: str | None = None, cpus: int | None = None,
                dashboard_port: int | None = None,
                preload: tuple = ()) -> Iterator[dict[str, float]]:
    """Start (or join) Ray for the length of the block; yields the cluster's resources.
    `preload`: modules the block will import and functions it will call, readied while Ray
    starts (see _preload)."""
    import ray

    if ray.is_initialized():  # an embedding program (a test, a notebook) already started it
        yield dict(ray.cluster_resources())
        return
    loading = _preload(preload)
    global JOINED, EMBEDDED
    JOINED = bool(address)
    # On a cluster the workers' logs stay on their nodes, so they stream here as before.
    kwargs: dict = {"log_to_driver": VERBOSE or bool(address), "configure_logging": True,
                    "logging_level": "WARNING"}
    users_port = os.environ.get("RAY_GCS_SERVER_PORT")
    if address:
        kwargs["address"] = address
    else:
        # GPUs are detected, never declared: declaring one that is not there would let Ray
        # schedule GPU work on a machine without one. The dashboard serves Ray's state API,
        # which Ray Train uses to watch its controller; it listens on loopback only.
        # address="local": always a new Ray of our own. Without it ray.init joins whatever Ray
        # was last started on this machine (`ray start`, another tool's cluster) and refuses
        # our num_cpus ("When connecting to an existing cluster, num_cpus ... must not be
        # provided"): a user's own `ray start` head broke every `trainyard run`.
        kwargs.update(address="local", num_cpus=cpus or os.cpu_count(), include_dashboard=True,
                      dashboard_host="127.0.0.1")
        if dashboard_port:
            kwargs["dashboard_port"] = dashboard_port
        # Code inside the cluster that looks Ray up by itself (Ray Train's placement-group
        # cleaner asks the state API whether its controller lives) finds every Ray instance
        # on the machine and, with two trainyard jobs running at once, gives up: the
        # cleaner died, a PBT trial's workers stayed reserved, and the sweep waited forever.
        # So the GCS gets a port we choose, and the job's processes are told its address.
        port = users_port or str(_free_port())
        os.environ["RAY_GCS_SERVER_PORT"] = port
        address_here = f"{ray.util.get_node_ip_address()}:{port}"
        env_vars = {"RAY_ADDRESS": address_here}
        # Ray Train's preemption watcher waits for a cloud node's shutdown notice, which an
        # embedded Ray on this machine never gets; it only added an actor and an ERROR line to
        # every supervised run ("PreemptionWatcher ... has constructor arguments in the object
        # store"). Off for local sessions unless the user set it; a cluster keeps its own.
        # Ray Train's Prometheus metrics, its JSON log files and the state actor's periodic
        # check on dead controllers serve a cluster's dashboards; on this machine they only
        # take time from the training threads. Off for local sessions unless the user set them.
        for name in ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", *LOCAL_OFF):
            if name not in os.environ:
                env_vars[name] = "0"
        # The raylet starts one idle worker per CPU before the job connects; they cannot serve
        # a job with its own runtime_env (ours sets env_vars), so they only imported Ray on
        # both cores while the job's own actors started, and were killed unused ~15 s later.
        for name in ("RAY_enable_worker_prestart", "RAY_prestart_worker_first_driver"):
            os.environ.setdefault(name, "0")
        kwargs["runtime_env"] = {"env_vars": env_vars}
    # An embedded session on this machine needs no token authentication (Ray would turn it on
    # and print a notice on every start); a cluster keeps whatever the user's environment says
    # (RAY_AUTH_MODE, or a token Ray finds by itself), so this is set for local starts only
    # and put back when the session ends.
    auth_before = os.environ.get("RAY_AUTH_MODE")
    if not address and auth_before is None:
        os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        ray.init(**kwargs)
    except (ConnectionError, ray.exceptions.AuthenticationError) as err:
        if not address:
            raise
        from trainyard.spec import UserInputError  # one line, exit 2: the user fixes it

        raise UserInputError(f"cannot join the Ray cluster at {address}: "
                             f"{str(err).strip().splitlines()[0]}") from None
    finally:
        if not users_port:  # ours was for this start only
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    EMBEDDED = not address
    loading.join(PRELOAD_WAIT_S)
    try:
        yield dict(ray.cluster_resources())
    finally:
        ray.shutdown()
        EMBEDDED = False
        if auth_before is None:  # (Ray may also have written it)
            os.environ.pop("RAY_AUTH_MODE", None)


CLUSTER_WAIT_S = 300.0  # a cloud autoscaler takes minutes to boot a node


@contextmanager
def cluster_demand(bundles: list[dict[str, float]]) -> Iterator[None]:
    """Ask the cluster's autoscaler for the job's shapes for the length of the block.

    Nothing else asks before the job starts, and the job starts only once the resources are
    there (`require_resources`). Held for the whole job, the request also has the autoscaler
    replace a node the job lost; withdrawn at the end, so idle nodes can go.
    """
    from ray.autoscaler.sdk import request_resources

    if not bundles:
        yield
        return
    request_resources(bundles=bundles)
    try:
        yield
    finally:
        request_resources(bundles=[])


def require_resources(demand: dict[str, float], timeout_s: float = 0.0,
                      poll_s: float = 1.0) -> None:
    """Wait up to `timeout_s` for the cluster to hold `demand`; ResourceError naming the gap.

    A cluster that autoscales adds nodes while we wait (`cluster_demand`), and may take
    minutes; a Ray that trainyard started on this machine never grows, so it is not waited
    for (`timeout_s` 0).
    """
    import ray

    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        total = ray.cluster_resources()
        missing = {name: (need, total.get(name, 0.0)) for name, need in demand.items()
                   if need > total.get(name, 0.0) + 1e-9}
        if not missing:
            return
        if time.monotonic() >= deadline:
            break
        if not said and timeout_s > 30:
            gap = ", ".join(f"{name} {need:g} (has {have:g})"
                            for name, (need, have) in sorted(missing.items()))
            print(f"waiting up to {timeout_s:g} s for the cluster to provide {gap}: an "
                  "autoscaling cluster is adding nodes (Ctrl-C to give up)", flush=True)
            said = True
        time.sleep(poll_s)
    parts = [f"{name}: the job needs {need:g}, the cluster has {have:g}"
             for name, (need, have) in sorted(missing.items())]
    hint = ("lower resources.* in the spec (e.g. -o resources.gpus_per_worker=0), or run on a "
            "cluster that has them with --address")
    waited = f" after {timeout_s:g} s" if timeout_s else ""
    raise ResourceError(f"Ray cannot provide the job's resources{waited}: "
                        f"{'; '.join(parts)}. {hint}")
