"""`dagster dev` as a child process, and the few GraphQL calls a test makes against its webserver.

The webserver answers `/server_info` before the code location has loaded, so readiness is "the workspace
reports the location LOADED". `dagster dev` spawns the webserver, the daemon and code servers in its own
process group; stopping sends SIGTERM to the whole group and SIGKILL to what is left after a grace period,
because a run launched by the daemon may still be finishing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tidb_pipeline.lab.service import wait_until

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).with_name("dagster")
ASSET_JOB = "__ASSET_JOB"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


class GraphQLError(AssertionError):
    """The webserver answered a GraphQL call with errors or an error type."""


@dataclass(frozen=True)
class AssetCheck:
    asset_key: tuple[str, ...]
    name: str


@dataclass(frozen=True)
class Materialization:
    run_id: str
    # Plain (int, float, text) entries only; tables, JSON and schemas are left out.
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # SUCCEEDED, FAILED, ... or NONE when never executed
    success: bool | None
    metadata: Mapping[str, Any]


_METADATA_VALUES = (
    "... on IntMetadataEntry { intValue intRepr } ... on TextMetadataEntry { text } "
    "... on FloatMetadataEntry { floatValue }"
)


def _plain_metadata(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in entries:
        if "intRepr" in entry:
            # GraphQL's Int is 32-bit: a larger int (an epoch in ms) comes only as its decimal text.
            out[entry["label"]] = int(entry["intRepr"])
            continue
        for field in ("text", "floatValue"):
            if field in entry:
                out[entry["label"]] = entry[field]
    return out


def start(*, home: Path, env: Mapping[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start `dagster dev` on 127.0.0.1:`port` with the repo's workspace; its output goes to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(DAGSTER), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            # The workspace's working_directory is relative to the workspace file, so any cwd works; the
            # instance folder avoids dagster's warning about the repo's own dagster.yaml.
            cwd=home, env={**env, "DAGSTER_HOME": str(home)}, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], *, grace_s: float = 30.0) -> None:
    """Stop `dagster dev` and everything it started (one process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        # Children (webserver, daemon, code servers, run workers) may outlive the parent.
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


class Dagster:
    """A GraphQL client for one webserver."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=60)

    def close(self) -> None:
        self._http.close()

    def query(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = self._http.post("/graphql", json={"query": query, "variables": dict(variables or {})})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    # --- readiness --------------------------------------------------------------------------------------------

    def location(self) -> tuple[str, str] | None:
        """(location, repository) once the code location has loaded; raises if it failed to load."""
        data = self.query("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename
              ... on RepositoryLocation { name repositories { name } }
              ... on PythonError { message } } } } } }""")
        entries = data["workspaceOrError"].get("locationEntries") or []
        for entry in entries:
            loaded = entry["locationOrLoadError"]
            if loaded and loaded["__typename"] == "PythonError":
                raise GraphQLError(f"code location {entry['name']} failed to load: {loaded['message']}")
            if entry["loadStatus"] == "LOADED" and loaded:
                return loaded["name"], loaded["repositories"][0]["name"]
        return None

    def wait_loaded(self, proc: subprocess.Popen[bytes], log: Path, *, timeout: float = 180) -> tuple[str, str]:
        found: list[tuple[str, str]] = []

        def loaded() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"dagster dev exited with {proc.returncode}:\n{log_tail(log)}")
            if self._http.get("/server_info").status_code != 200:
                return False
            location = self.location()
            if location:
                found.append(location)
            return bool(found)

        try:
            wait_until(loaded, timeout=timeout, what="dagster dev's code location", interval=0.5)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{log_tail(log)}") from None
        return found[0]

    # --- instance settings a user would make once ---------------------------------------------------------------

    def dismiss_community_dialog(self) -> None:
        """What the dialog's Skip button does on the server; a fresh instance shows it on every page."""
        self.query("mutation { setNuxSeen }")

    def stop_running_sensors(self, location: str, repository: str) -> list[str]:
        """Stop every running sensor, so only the runs the test launches touch its tables; returns their names."""
        data = self.query(
            """query($sel: RepositorySelector!) { sensorsOrError(repositorySelector: $sel) { __typename
                 ... on Sensors { results { name sensorState { id status } } } } }""",
            {"sel": {"repositoryLocationName": location, "repositoryName": repository}},
        )
        stopped = []
        for sensor in data["sensorsOrError"].get("results") or []:
            if sensor["sensorState"]["status"] == "RUNNING":
                result = self.query(
                    """mutation($id: String) { stopSensor(id: $id) { __typename
                         ... on StopSensorMutationResult { instigationState { status } }
                         ... on PythonError { message } } }""",
                    {"id": sensor["sensorState"]["id"]},
                )["stopSensor"]
                if result["__typename"] != "StopSensorMutationResult":
                    raise GraphQLError(f"stopping sensor {sensor['name']} failed: {result}")
                stopped.append(sensor["name"])
        return stopped

    # --- assets, runs --------------------------------------------------------------------------------------------

    def asset_keys(self) -> set[tuple[str, ...]]:
        return {tuple(n["assetKey"]["path"]) for n in self.query("{ assetNodes { assetKey { path } } }")["assetNodes"]}

    def asset_checks(self, key: Sequence[str]) -> list[AssetCheck]:
        data = self.query(
            """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
                 ... on AssetNode { assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } } }""",
            {"key": {"path": list(key)}},
        )
        checks = data["assetNodeOrError"]["assetChecksOrError"].get("checks") or []
        return [AssetCheck(tuple(key), c["name"]) for c in checks]

    def launch(self, location: str, repository: str, assets: Sequence[Sequence[str]],
               checks: Sequence[AssetCheck] = ()) -> str:
        """Materialise `assets` (and run `checks`) in one run, as the UI's Materialize button does; the run id."""
        selector = {
            "repositoryLocationName": location, "repositoryName": repository, "jobName": ASSET_JOB,
            "assetSelection": [{"path": list(k)} for k in assets],
            "assetCheckSelection": [{"assetKey": {"path": list(c.asset_key)}, "name": c.name} for c in checks],
        }
        data = self.query(
            """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
                 ... on LaunchRunSuccess { run { runId } }
                 ... on RunConfigValidationInvalid { errors { message } }
                 ... on Error { message } } }""",
            {"params": {"selector": selector, "mode": "default", "runConfigData": {}}},
        )["launchRun"]
        if data["__typename"] != "LaunchRunSuccess":
            raise GraphQLError(f"launching a run of {list(assets)} failed: {data}")
        return data["run"]["runId"]

    def run_status(self, run_id: str) -> str:
        data = self.query("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }",
                          {"id": run_id})
        return data["runOrError"]["status"]

    def run_failures(self, run_id: str) -> list[str]:
        """The error messages of a failed run's steps (for the assertion message)."""
        data = self.query(
            """query($id: ID!) { logsForRun(runId: $id) { __typename ... on EventConnection { events { __typename
                 ... on ExecutionStepFailureEvent { stepKey error { message cause { message cause { message } } } }
                 ... on RunFailureEvent { message } } } } }""",
            {"id": run_id},
        )
        out = []
        for e in data["logsForRun"].get("events") or []:
            if e["__typename"] == "ExecutionStepFailureEvent":
                # Dagster wraps the user's exception: its message is in the cause.
                messages, error = [], e.get("error")
                while error:
                    messages.append(error["message"].strip())
                    error = error.get("cause")
                out.append(f"{e['stepKey']}: " + "\n  caused by: ".join(messages))
            elif e["__typename"] == "RunFailureEvent":
                out.append(e["message"])
        return out

    def wait_run(self, run_id: str, *, timeout: float = 300) -> str:
        """Poll until the run ends; its final status."""
        seen: list[str] = []

        def ended() -> bool:
            seen.append(self.run_status(run_id))
            return seen[-1] in TERMINAL

        wait_until(ended, timeout=timeout, what=f"run {run_id}", interval=0.5)
        return seen[-1]

    def latest_materialization(self, key: Sequence[str]) -> Materialization | None:
        data = self.query(
            """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) { __typename ... on Asset {
                 assetMaterializations(limit: 1) { runId metadataEntries { __typename label """
            + _METADATA_VALUES + """ } } } } }""",
            {"key": {"path": list(key)}},
        )
        events = data["assetOrError"].get("assetMaterializations") or []
        if not events:
            return None
        return Materialization(events[0]["runId"], _plain_metadata(events[0]["metadataEntries"]))

    def check_results(self, key: Sequence[str]) -> dict[str, CheckResult]:
        """Each check's latest execution, by check name."""
        data = self.query(
            """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename ... on AssetNode {
                 assetChecksOrError { __typename ... on AssetChecks { checks { name
                   executionForLatestMaterialization { status evaluation { success metadataEntries {
                     __typename label """ + _METADATA_VALUES + """ } } } } } } } } }""",
            {"key": {"path": list(key)}},
        )
        out: dict[str, CheckResult] = {}
        for c in data["assetNodeOrError"]["assetChecksOrError"].get("checks") or []:
            ex = c["executionForLatestMaterialization"] or {"status": "NONE", "evaluation": None}
            evaluation = ex["evaluation"] or {"success": None, "metadataEntries": []}
            out[c["name"]] = CheckResult(c["name"], ex["status"], evaluation["success"],
                                         _plain_metadata(evaluation["metadataEntries"]))
        return out


def wait_for_run(dagster: Dagster, run_id: str, what: str, *, timeout: float = 300) -> None:
    """Fail with the run's step errors unless it ends in SUCCESS."""
    status = dagster.wait_run(run_id, timeout=timeout)
    if status != "SUCCESS":
        problems = "\n".join(dagster.run_failures(run_id)) or "(no step failure recorded)"
        raise AssertionError(f"run {run_id} ({what}) ended {status}:\n{problems}")

