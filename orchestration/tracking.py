"""MLflow bookkeeping. The driver is the only writer: one parent run per tournament, one nested
child run per match (params = flattened spec, metrics = the record, tags = names).

Child runs are created only when a match's record arrives and are closed at once, so a run is
FINISHED exactly when its match finished. A rerun reopens the tournament's parent run and skips
every match key that already has a FINISHED child.

Every run is tagged with the driver process that created it (``arena.driver``). A driver killed
by SIGKILL (or dying before it could close its runs) leaves them RUNNING; the next driver that
opens a parent run in the experiment marks them KILLED (``arena.reaped`` says why), so MLflow
never shows a run as live or finished when it is neither (D4).

With ``tracking.log_models`` on, models go in too (:meth:`Tracker.log_model`): each victim as
trained on the parent run, each match's scored substitute on its child run, as MLflow PyTorch
models whose signature is inferred from a few test images and the model's softmax outputs.

MLflow 3's runs table shows no metric column until a user picks some (the choice lives in the
browser's local storage; no URL parameter sets it). What the UI does read is a saved view: an
experiment tag ``mlflow.sharedViewState.<key>`` holding ``{name, createdAt, updatedAt, state}``
with ``state`` the JSON of the view (columns, sort), opened by ``?viewStateShareKey=<key>`` and
listed in the runs page's "Views" menu. Every experiment the tracker opens gets two such views
(:data:`VIEWS`): the matches' stolen accuracy, fidelity and utility, and the trials' utility and
protection; :meth:`Tracker.runs_url` links to one, so the printed link opens the table with those
columns already shown.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from arena.errors import ArenaError
from arena.home import ArenaHome
from arena.record import MatchResult, from_tracking, to_tracking
from arena.specs import MatchSpec
from arena.training import predict_probs

TOURNAMENT_TAG = "arena.tournament"
MATCH_KEY_TAG = "arena.match_key"
KIND_TAG = "arena.kind"
TRUST_TAG = "trust"
TRUSTED_IN_CLUSTER = "trusted-in-cluster"
"""tournament runs: attackers ran inside the Ray cluster as trusted code held to the oracle by
contract and static checks (RELIABILITY fact 1); ``arena attack`` results say untrusted-http"""
DRIVER_TAG = "arena.driver"
REAPED_TAG = "arena.reaped"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
"""MLflow 3's UI opens such an experiment on its runs table rather than its GenAI overview"""
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
"""what ``mlflow.set_tracking_uri`` exports to subprocesses (and the CLI reads as a default)"""
SUBSTITUTE_MODEL = "substitute"
"""the name of a match's stolen substitute on its child run (``tracking.log_models``)"""
SUMMARY_FILE = "summary.json"
"""the parent run's figures (tournament or study aggregates), apart from per-match metrics"""
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
"""MLflow 3.17's UI: an experiment tag of this prefix + a key is a saved view of the runs page"""
SHARE_KEY_PARAMETER = "viewStateShareKey"
"""the runs-page URL parameter that opens the saved view of that key"""
MATCHES_VIEW = "arena-matches"
TRIALS_VIEW = "arena-trials"


def _view(name: str, sort_by: str, columns: tuple[str, ...]) -> dict[str, Any]:
    """A saved view as the UI writes it: the sort and the metric columns of the runs table, in
    the UI's column keys (``metrics.`name```), sorted high to low; the columns come in the given
    order right after the run name (without ``columnOrder`` the UI orders them by name)."""
    keys = [f"metrics.`{column}`" for column in columns]
    return {
        "name": name,
        "state": {
            "orderByKey": f"metrics.`{sort_by}`",
            "orderByAsc": False,
            "selectedColumns": keys,
            "columnOrder": keys,
        },
    }


VIEWS: dict[str, dict[str, Any]] = {
    MATCHES_VIEW: _view(
        "Arena matches", "stolen_accuracy", ("stolen_accuracy", "fidelity", "utility")
    ),
    TRIALS_VIEW: _view("Arena trials", "protection", ("utility", "protection", "feasible")),
}
"""the saved views every arena experiment gets, by share key: a tournament's matches sorted by
stolen accuracy (strongest theft first), a study's trials by protection"""


def default_tracking_uri(home: Path) -> str:
    """An absolute SQLite URI under the arena home (DESIGN §4)."""
    return f"sqlite:///{(home / 'mlflow.db').resolve()}"


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"a": {"b": [1, 2]}}`` -> ``("a.b.0", 1), ("a.b.1", 2)``."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from flatten(inner, f"{prefix}{key}.")
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            yield from flatten(inner, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), value


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, field 22 of /proc/<pid>/stat): with the
    pid it names one process, so a reused pid is not mistaken for a dead driver."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def driver_identity() -> str:
    """``host:pid:start time`` of this process, the value of ``arena.driver`` on its runs."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def driver_alive(identity: str) -> bool | None:
    """Whether the driver named by an ``arena.driver`` tag is still running; None when that
    cannot be known here (another host, an unreadable tag)."""
    host, _, rest = identity.rpartition(":")
    host, _, pid_text = host.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if rest != "?" and Path("/proc/self/stat").exists():
        return _start_time(pid) == rest
    try:
        os.kill(pid, 0)  # no /proc: the pid alone (a reused pid counts as alive)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TrackingUnavailable(ArenaError):
    """The MLflow tracking store cannot be used (unreachable server, unsupported URI)."""


def _check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes: MLflow's own HTTP retries take minutes to give up."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except requests.RequestException as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({type(exc).__name__}); start it "
            "(mlflow server ...) or drop --tracking-uri to use the local SQLite store"
        ) from None


class Tracker:
    """The driver's MLflow writer for one experiment."""

    def __init__(
        self, tracking_uri: str, experiment: str, artifact_root: Path | None = None
    ) -> None:
        _check_reachable(tracking_uri)
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
        except MlflowException as exc:
            first = str(exc.message).strip().splitlines()[0]
            raise TrackingUnavailable(
                f"cannot use tracking URI {tracking_uri!r}: {first}"
            ) from None
        self.tracking_uri = tracking_uri
        if artifact_root is None and tracking_uri.startswith("sqlite:///"):
            # beside a local store, never MLflow's default ./mlruns in whatever the cwd is
            artifact_root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        if found is None:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
            )
        else:
            self.experiment_id = found.experiment_id
            if EXPERIMENT_KIND_TAG not in found.tags:  # an experiment made before the tag
                self.client.set_experiment_tag(
                    self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
                )
        self._add_views({} if found is None else found.tags)

    def _add_views(self, tags: Mapping[str, str]) -> None:
        """Write each of :data:`VIEWS` the experiment lacks; a view already there is left as
        it is, since a user may have changed it in the UI ("Override saved view")."""
        now = int(time.time() * 1000)
        for key, view in VIEWS.items():
            if f"{SHARED_VIEW_PREFIX}{key}" in tags:
                continue
            envelope = {
                "name": view["name"],
                "createdAt": now,
                "updatedAt": now,
                "state": json.dumps(view["state"]),
            }
            self.client.set_experiment_tag(
                self.experiment_id, f"{SHARED_VIEW_PREFIX}{key}", json.dumps(envelope)
            )

    def runs_url(self, ui: str = "http://127.0.0.1:5000", view: str = MATCHES_VIEW) -> str:
        """The MLflow UI page of this experiment's runs (not MLflow 3's GenAI overview) in one
        of :data:`VIEWS`: its metric columns shown and its sort applied. Sorting by a metric
        lists the runs flat, and the chart view then charts them (it charts only the runs the
        list shows). The sort is the view's, not a URL parameter: the UI ignores the view
        when the URL carries any search setting (``orderByKey``, ``searchFilter``, ...)."""
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
        return (
            f"{ui}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
            f"&{SHARE_KEY_PARAMETER}={view}"
        )

    @classmethod
    def for_home(cls, home: ArenaHome, tracking_uri: str | None, experiment: str) -> Tracker:
        """The MLflow writer of a run: ``tracking_uri``, or the local SQLite store of ``home``
        (artifacts beside it); MLflow's own chatter is kept to warnings."""
        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        home.root.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri or default_tracking_uri(home.root)
        return cls(uri, experiment, artifact_root=home.root / "mlartifacts")

    def open_tournament(self, name: str, config: Mapping[str, Any]) -> str:
        """Reopen the latest parent run of this tournament, or start one."""
        return self.open_parent("tournament", name, config)

    def open_parent(self, kind: str, name: str, config: Mapping[str, Any]) -> str:
        """Reopen the latest parent run of this ``kind`` ("tournament", "study") and name, or
        start one; the config goes with it as an artifact."""
        name_tag = TOURNAMENT_TAG if kind == "tournament" else f"arena.{kind}"
        self.reap_orphans()
        found = self._latest_parent(kind, name_tag, name)
        if found is not None:
            run_id: str = found
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, DRIVER_TAG, driver_identity())
        else:
            tags = {name_tag: name, KIND_TAG: kind, DRIVER_TAG: driver_identity()}
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            run_id = run.info.run_id
        if kind == "tournament":
            self.client.set_tag(run_id, TRUST_TAG, TRUSTED_IN_CLUSTER)
        self.client.log_dict(run_id, dict(config), f"{kind}_config.json")
        return run_id

    def _latest_parent(self, kind: str, name_tag: str, name: str) -> str | None:
        """The id of the latest parent run of this kind whose ``name_tag`` is ``name``. Names are
        compared here, not in the search filter: MLflow's filter grammar has no escape for a
        quote inside a string literal (it strips the outer quotes and keeps the rest as written),
        so a name such as ``o'brien "smoke"`` cannot be written in a filter at all (H6)."""
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{KIND_TAG}` = '{kind}'",  # kind: a word of the code
                order_by=["attributes.start_time DESC"],
                max_results=1000,
                page_token=token,
            )
            for run in page:
                if run.data.tags.get(name_tag) == name:
                    return str(run.info.run_id)
            token = page.token
            if not token:
                return None

    def reap_orphans(self) -> list[str]:
        """Mark KILLED every run of this experiment (parent or child) left RUNNING by a driver on
        this host that is no longer alive; return their ids. Runs of live drivers, of other
        hosts (their liveness cannot be checked from here) and runs without an ``arena.driver``
        tag are left as they are."""
        reaped = []
        me = driver_identity()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        running = self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50000
        )
        for run in running:
            owner = run.data.tags.get(DRIVER_TAG)
            if owner is None or driver_alive(owner) is not False:
                continue
            why = f"left RUNNING by driver {owner}, which is gone; marked KILLED by {me} at {stamp}"
            self.client.set_tag(run.info.run_id, REAPED_TAG, why)
            self.client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(str(run.info.run_id))
        return reaped

    def log_trial(
        self,
        parent_id: str,
        label: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        record: dict[str, Any],
    ) -> str:
        """One nested child run per tuning trial (or evaluated default), created and closed."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=label,
            tags={
                MLFLOW_PARENT_RUN_ID: parent_id,
                KIND_TAG: "trial",
                DRIVER_TAG: driver_identity(),
                **tags,
            },
        )
        run_id: str = run.info.run_id
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        self.client.log_dict(run_id, record, "trial.json")
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id

    def child_tags(self, parent_id: str, tag: str) -> set[str]:
        """The values of ``tag`` on this parent's FINISHED children (what is already logged)."""
        return {
            run.data.tags[tag]
            for run in self._children(parent_id)
            if run.info.status == "FINISHED" and tag in run.data.tags
        }

    def _children(self, parent_id: str) -> list[Any]:
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'",
                max_results=50000,
            )
        )

    def finished_results(self, parent_id: str) -> dict[str, MatchResult]:
        """Records of the matches already FINISHED under this tournament, by match key."""
        return {
            run.data.tags[MATCH_KEY_TAG]: from_tracking(run.data.metrics, run.data.tags)
            for run in self._children(parent_id)
            if run.info.status == "FINISHED" and MATCH_KEY_TAG in run.data.tags
        }

    def log_match(
        self,
        parent_id: str,
        spec: MatchSpec,
        result: MatchResult,
        substitute: torch.nn.Module | None = None,
        examples: torch.Tensor | None = None,
    ) -> str:
        """One nested child run per match, created and closed in one go once its record is in,
        dated back to when the match started, so the run lasts as long as the match did; with
        the match's scored ``substitute`` (and test images ``examples`` for its signature) the
        model goes in before the run closes."""
        now = int(time.time() * 1000)
        run = self.client.create_run(
            self.experiment_id,
            start_time=now - round(result.match_seconds * 1000),
            run_name=f"{result.defense} × {result.attack} @ {result.budget} s{result.seed}",
            tags=self._match_tags(parent_id, spec),
        )
        run_id: str = run.info.run_id
        metrics, tags = to_tracking(result)
        params = [Param(k, str(v)) for k, v in flatten(spec.model_dump(mode="json"))]
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
            params=params,
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.client.log_dict(run_id, result.model_dump(), "match_result.json")
        if substitute is not None and examples is not None:
            self.log_model(run_id, substitute, SUBSTITUTE_MODEL, examples)
        self.client.set_terminated(run_id, status="FINISHED", end_time=now)
        self._drop_failed_attempts(parent_id, spec.key(), keep=run_id)
        return run_id

    def log_model(
        self, run_id: str, model: torch.nn.Module, name: str, examples: torch.Tensor
    ) -> str:
        """Log ``model`` as an MLflow PyTorch model ``name`` of the run, loadable with
        ``mlflow.pytorch.load_model("runs:/<run id>/<name>")``; returns its model id.

        The signature maps ``examples`` (a few test images) to the model's softmax outputs, what
        the arena scores. Pickled, not ``pt2``: every architecture (plug-ins, removals' edits)
        pickles, not all export; loading needs this project importable. Requirements are named,
        not inferred (inference loads the model again in a subprocess). MLflow's model logging
        reads the tracking URI from its process-wide setting, so it is set to this tracker's
        (the driver is the only writer); the logged model is created in this experiment first,
        since MLflow would otherwise put it in the active (default) one."""
        import mlflow.pytorch  # loaded only when models are logged
        from mlflow.models import infer_signature

        probs = predict_probs(model, examples)
        signature = infer_signature(examples.cpu().numpy(), probs.numpy())
        exported = os.environ.get(TRACKING_URI_VARIABLE)
        mlflow.set_tracking_uri(self.tracking_uri)  # also exports it to every later subprocess
        logged = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id
        )
        flavor_log = logging.getLogger("mlflow.pytorch")
        level = flavor_log.level
        flavor_log.setLevel(logging.ERROR)  # its pickle warning, once per model, says nothing new
        try:
            mlflow.pytorch.log_model(
                model,
                name=name,
                signature=signature,
                model_id=logged.model_id,
                run_id=run_id,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pickle",
            )
        finally:
            flavor_log.setLevel(level)
            # a subprocess started later (a CLI run, a worker) must not inherit this store
            if exported is None:
                os.environ.pop(TRACKING_URI_VARIABLE, None)
            else:
                os.environ[TRACKING_URI_VARIABLE] = exported
        return str(logged.model_id)

    def model_names(self, run_id: str) -> set[str]:
        """Names of the MLflow models logged from this run (a rerun logs no victim twice)."""
        found = self.client.search_logged_models(
            experiment_ids=[self.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        return {str(m.name) for m in found}

    def log_failure(self, parent_id: str, spec: MatchSpec, reason: str) -> str:
        """A FAILED child run carrying the reason; the next rerun retries the match."""
        tags = self._match_tags(parent_id, spec)
        tags["arena.failure"] = reason[:5000]
        run = self.client.create_run(self.experiment_id, run_name=f"FAILED {spec.key()}", tags=tags)
        params = [Param(k, str(v)) for k, v in flatten(spec.model_dump(mode="json"))]
        self.client.log_batch(run.info.run_id, params=params)
        self.client.set_terminated(run.info.run_id, status="FAILED")
        return str(run.info.run_id)

    def _match_tags(self, parent_id: str, spec: MatchSpec) -> dict[str, str]:
        return {
            MLFLOW_PARENT_RUN_ID: parent_id,
            MATCH_KEY_TAG: spec.key(),
            KIND_TAG: "match",
            TRUST_TAG: TRUSTED_IN_CLUSTER,
            DRIVER_TAG: driver_identity(),
            "arena.attack": spec.attack.name,
            "arena.defense": " -> ".join(d.name for d in spec.defenses),
            "arena.victim": spec.victim.key(),
        }

    def _drop_failed_attempts(self, parent_id: str, match_key: str, keep: str) -> None:
        """Once a retried match finishes, earlier FAILED runs of the same key are removed."""
        for run in self._children(parent_id):
            same = run.data.tags.get(MATCH_KEY_TAG) == match_key
            if same and run.info.run_id != keep and run.info.status != "FINISHED":
                self.client.delete_run(run.info.run_id)

    def log_summary(
        self,
        parent_id: str,
        metrics: Mapping[str, float],
        artifacts: Mapping[str, str | dict[str, Any] | Path],
    ) -> None:
        """Tournament-level figures and the leaderboard/plot artifacts on the parent run. The
        figures go into ``summary.json``, not into MLflow metrics: parent-run metrics would sit in
        the runs table and the chart view beside the matches' own (MLflow charts every metric
        of every run), where a newcomer looks for stolen accuracy first."""
        self.client.log_dict(parent_id, {k: float(v) for k, v in metrics.items()}, SUMMARY_FILE)
        for name, content in artifacts.items():
            if isinstance(content, Path):
                self.client.log_artifact(parent_id, str(content))
            elif isinstance(content, dict):
                self.client.log_dict(parent_id, content, name)
            else:
                self.client.log_text(parent_id, content, name)

    def close(self, parent_id: str, status: str) -> None:
        self.client.set_terminated(parent_id, status=status)
