"""The operator's panel: a web page onto one training run, served by uvicorn.

    robot-sql panel --run-dir runs/demo --port 8765 [--learner-control ADDR] [--actor-control ADDR ...]

What it shows comes from the run directory (metrics, events, checkpoints, perturbation
reports) and from the live processes' control channels (health, the arm's state). What it
does goes through those channels: start/pause/resume/stop to the learner; e-stop, re-arm,
episode reset and perturbation tests straight to the actors, never through the learner.

From an actor's status reply the page uses: estopped, holding, connected (its link to the
learner), steps, episodes, weight_version, learner_errors; and for the arm view
joint_positions (rad, right_j0..6), scene, target_position and target_quat (m, base frame),
fixed_brick_position and fixed_brick_quat (the Lego tasks), checked by
robot_sql.protocol.check_arm_state, and position_error (m).

Security: every endpoint except /health needs the panel token, as `Authorization: Bearer
<token>` or as the cookie the page sets after opening the login link `/?token=<token>`
once. The token comes from ROBOT_SQL_PANEL_TOKEN or is generated at first start and kept in
<run-dir>/panel.token (mode 0600); one shorter than 32 characters is refused at start (exit
status 2). The cookie is SameSite=Strict, but a page on another port of the same host is the
same site, so a state-changing request (any method but GET and HEAD) that authenticates with
the cookie must also carry the panel's own Origin (scheme://host:port it was addressed to),
else 403; one with the Bearer header needs none (a page of another origin cannot set that
header without a CORS preflight, which the panel never grants). Every request's Host header
must name the panel, against DNS rebinding: a loopback name when it is bound to loopback,
else its bound address (bound to 0.0.0.0: a loopback name or an IP address); else 400.
Request bodies are at most 64 KiB (else 413: by Content-Length before the body is read;
sent without one, as soon as the bytes read pass the limit), and numbers in bodies and query
values must be finite, integers within 64 bits (else 422). The server binds 127.0.0.1 unless
told otherwise. No endpoint commands joint positions: the only motions it can cause are a reset
to the start pose and perturbations bounded by robot_sql.perturbation's limits.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple, NoReturn

import click
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from robot_sql import perturbation, sawyer
from robot_sql.config import ConfigError, Settings, load_settings
from robot_sql.perturbation import PerturbationSpec, save_report, unfinished_report
from robot_sql.panel import reports as report_pages
from robot_sql.panel.curves import RunsRoot, curves_router
from robot_sql.panel.scene import (AZIMUTH_RANGE, DEFAULT_AZIMUTH, DEFAULT_ELEVATION, ELEVATION_RANGE, VIEWS, ArmView,
                                   Camera, RenderError)
from robot_sql.protocol import ControlClient, ControlError, check_arm_state
from robot_sql.rundir import MetricsStore, RunDir

STATIC = Path(__file__).parent / "static"
TOKEN_NAME = "panel"  # <run-dir>/panel.token
COOKIE = "robot_sql_panel"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# the length of secrets.token_urlsafe(24), 192 random bits (`openssl rand -hex 24` gives 48 characters)
MIN_TOKEN_CHARS = 32
SAFE_METHODS = ("GET", "HEAD")  # every other method changes state
MAX_BODY_BYTES = 64 * 1024  # the biggest body the API takes, a perturbation spec, is a few hundred bytes
MAX_INTEGER = 2**63 - 1  # the largest integer SQLite and msgpack's signed integers hold
# a perturbation test runs whole evaluation episodes on the actor; give it time
PERTURBATION_TIMEOUT_S = 600.0


class Curve(NamedTuple):
    title: str
    window: int  # the number of points the plot averages over (episode successes are 0/1)
    source: str  # "learner" or "actor": whose silence makes the curve stale
    y_range: tuple[float, float] | None = None  # a fixed axis, else fitted to the data


# the live curves: metric name in the MetricsStore (as the learner and the actors log them) -> how to plot it
CURVES: dict[str, Curve] = {
    "episode_return": Curve("Episode return", 1, "actor"),
    "episode_success": Curve("Success rate (last 20 episodes)", 20, "actor", (0.0, 1.0)),
    "q_loss": Curve("Q loss", 1, "learner"),
    "update_rate": Curve("Update rate (updates/s)", 1, "learner"),
    "actor_steps_per_s": Curve("Actor control rate (steps/s)", 1, "actor"),
    "weight_version": Curve("Weight version", 1, "learner"),
}


def split_tcp(address: str) -> tuple[str, int]:
    """("host", port) of "tcp://host:port"; ValueError otherwise."""
    scheme, _, rest = address.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme != "tcp" or not host or not port.isdigit():
        raise ValueError(f"a control address looks like tcp://127.0.0.1:5557, got {address!r}")
    return host, int(port)


class PanelSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="ROBOT_SQL_PANEL_", env_nested_delimiter="__", extra="forbid")

    run_dir: Path
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    token: SecretStr | None = None
    learner_control: str | None = None  # e.g. tcp://127.0.0.1:5557 (the learner's data port + 2)
    learner_config: Path | None = None  # settings for a learner that "start" launches
    actor_control: list[str] = []
    # how often the panel asks the processes for their status and pushes updates to the page
    poll_interval_s: float = Field(1.0, gt=0, le=10)
    # how long a control command (status, e-stop, ...) may take before the process counts as not answering
    control_timeout_s: float = Field(1.0, gt=0, le=30)
    # CURVE towards a learner that has it on (a learner on another machine): the panel's own
    # key pair (.key_secret, from `robot-sql keygen`) and the learner's public .key
    curve_secret_key: Path | None = None
    learner_public_key: Path | None = None
    # the folder of run directories whose curves the page may compare with this run's (default: the
    # run directory's parent, e.g. runs/); the page reads them, never writes
    runs_root: Path | None = None

    @field_validator("learner_control")
    @classmethod
    def _learner_address(cls, address: str | None) -> str | None:
        if address is not None:
            split_tcp(address)
        return address

    @model_validator(mode="after")
    def _curve_pair(self) -> "PanelSettings":
        if (self.curve_secret_key is None) != (self.learner_public_key is None):
            raise ValueError("curve_secret_key and learner_public_key go together")
        for key in (self.curve_secret_key, self.learner_public_key):
            if key is not None and not key.is_file():
                raise ValueError(f"key file not found: {key}")
        return self

    @field_validator("actor_control")
    @classmethod
    def _actor_addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            split_tcp(address)
        return addresses


# ---------------------------------------------------------------------------- the token


def load_or_create_token(run: RunDir, from_environment: str | None) -> tuple[str, bool]:
    """The panel token and whether it was generated just now (then it is shown once).

    ConfigError for one shorter than MIN_TOKEN_CHARS: the token is all that guards the panel."""
    if from_environment:
        token, generated = from_environment, False
        where, remedy = "ROBOT_SQL_PANEL_TOKEN", "make one with: openssl rand -hex 24"
    else:
        token, generated = run.token(TOKEN_NAME)  # TokenFileError is a ConfigError: one line, exit 2
        where, remedy = str(run.root / f"{TOKEN_NAME}.token"), "delete the file to have a new token generated"
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the panel token in {where} is too short to be safe ({len(token)} characters, at least "
                          f"{MIN_TOKEN_CHARS} needed); {remedy}")
    return token, generated


def token_checker(token: str):
    expected = token.encode()

    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        bearer = header.lower().startswith("bearer ")
        supplied = header[7:].strip() if bearer else request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(supplied.encode(), expected):
            raise HTTPException(401, "missing or wrong panel token: send 'Authorization: Bearer <token>' or log in "
                                     "once at /?token=<token> (the token is in <run-dir>/panel.token)",
                                headers={"WWW-Authenticate": "Bearer"})
        # Browsers send the SameSite=Strict cookie also with a form that a page on another port of this
        # host submits (same site, other origin). Such a page cannot send the Bearer header: that takes
        # a CORS preflight, which the panel never grants.
        if not bearer and request.method not in SAFE_METHODS:
            own = f"{request.url.scheme}://{request.headers['host']}".lower()  # the gate checked the Host
            origin = request.headers.get("origin")
            if origin is None or origin.lower() != own:
                raise HTTPException(403, f"cross-origin request refused: a {request.method} authenticated by the login "
                                         f"cookie must come from the panel's own page (Origin {own}), this one has "
                                         f"Origin {origin!r}; scripts send 'Authorization: Bearer <token>' instead")

    return require_token


# ---------------------------------------------------------------------------- what a request may be


HOST_HEADER = re.compile(r"(?P<name>\[[0-9a-fA-F:.]+\]|[^\[\]:@/]+)(:\d{1,5})?")  # name[:port], no user@


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str, bound: str) -> bool:
    """Whether a Host header names the panel bound to `bound`: bound to loopback, a loopback name; bound
    to every interface (0.0.0.0, as in its container), a loopback name or an IP address; else the bound
    address itself. Never a DNS name of someone else's that resolves to the panel's address (DNS
    rebinding): its pages would be same-origin with the panel."""
    match = HOST_HEADER.fullmatch(host)
    if match is None:
        return False
    name, bound = match["name"].strip("[]").lower(), bound.strip("[]").lower()
    if bound in LOOPBACK_HOSTS:
        return name in LOOPBACK_HOSTS
    if bound in ("0.0.0.0", "::"):
        return name in LOOPBACK_HOSTS or is_ip_address(name)
    return name == bound


class RequestGate:
    """ASGI middleware in front of everything: the Host header must name the panel (`host_allowed`,
    else 400), and a body may hold at most MAX_BODY_BYTES (else 413): refused by its Content-Length
    before the application sees the request, or, sent without one (chunked), when the bytes read so
    far pass the limit."""

    too_large = f"request body over {MAX_BODY_BYTES} bytes"

    def __init__(self, app: ASGIApp, bound_host: str):
        self.app, self.bound_host = app, bound_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not host_allowed(host, self.bound_host):
            refusal = (f"Host {host!r} does not name this panel (bound to {self.bound_host}): open it by its address; "
                       "other names are refused against DNS rebinding")
            return await JSONResponse({"detail": refusal}, 400)(scope, receive, send)
        if int(headers.get("content-length", 0)) > MAX_BODY_BYTES:
            return await JSONResponse({"detail": self.too_large}, 413)(scope, receive, send)
        read = 0

        async def counting_receive() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > MAX_BODY_BYTES:
                raise HTTPException(413, self.too_large)  # FastAPI's body reading passes HTTPExceptions on
            return message

        await self.app(scope, counting_receive, send)


def finite_json(body: bytes) -> Any:
    """A request body's JSON, in which numbers must be finite and integers within ±MAX_INTEGER:
    NaN, Infinity, 1e400 (inf) or 10**30 is a json.JSONDecodeError here, which FastAPI answers with
    422, instead of failing later where it hurts (in the JSON of the 422 itself, SQLite, msgpack)."""
    text = body.decode()

    def refuse(literal: str) -> NoReturn:
        raise json.JSONDecodeError(f"{literal} is out of range: numbers must be finite, integers within "
                                   f"±{MAX_INTEGER}", text, text.find(literal))

    def integer(literal: str) -> int:
        if len(literal) > 20 or abs(int(literal)) > MAX_INTEGER:  # the length first: int() of 5000 digits raises
            refuse(literal)
        return int(literal)

    def real(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            refuse(literal)
        return value

    return json.loads(text, parse_constant=refuse, parse_int=integer, parse_float=real)


class FiniteJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = finite_json(await self.body())
        return self._json


class FiniteJSONRoute(APIRoute):
    """A route that reads JSON bodies with `finite_json`."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def finite_json_handler(request: Request) -> Response:
            return await handler(FiniteJSONRequest(request.scope, request.receive))

        return finite_json_handler


# ---------------------------------------------------------------------------- what the run directory holds


def files_newest_first(folder: Path, pattern: str) -> list[tuple[Path, os.stat_result]]:
    """Files in `folder` matching `pattern`, newest first; temporary files of atomic writes (".name") skipped."""
    found = []
    for path in folder.glob(pattern):
        if path.name.startswith("."):
            continue
        with contextlib.suppress(FileNotFoundError):  # replaced or removed while we looked
            found.append((path, path.stat()))
    return sorted(found, key=lambda item: item[1].st_mtime, reverse=True)


def list_checkpoints(run: RunDir) -> list[dict]:
    return [{"name": path.name, "bytes": info.st_size, "time": info.st_mtime}
            for path, info in files_newest_first(run.checkpoints, "*") if stat.S_ISREG(info.st_mode)]


def list_reports(run: RunDir) -> list[dict]:
    """Summaries of the perturbation reports, newest first (unreadable files are listed as such)."""
    out = []
    for path, _ in files_newest_first(run.reports, "*.json"):
        try:
            report = json.loads(path.read_text())
            out.append({"name": path.name, "created": report["created"], "spec": report["spec"], "summary": report["summary"],
                        "outcome": report.get("outcome", "completed"), "reason": report.get("reason")})
        except (OSError, ValueError, KeyError, TypeError) as error:
            out.append({"name": path.name, "error": f"unreadable report: {error}"})
    return out


def latest_frame(run: RunDir) -> Path | None:
    frames = files_newest_first(run.media, "*.png")
    return frames[0][0] if frames else None


# ---------------------------------------------------------------------------- the live processes


# ControlClient error kinds that mean "no answer came", as opposed to an error the process answered
NO_ANSWER = ("timeout", "unreachable", "bad_reply")


class LinkError(Exception):
    """A control command that failed: no answer (the process is down or too slow), or an error answer."""

    def __init__(self, message: str, answered: bool, kind: str = ""):
        super().__init__(message)
        self.answered = answered
        self.kind = kind  # the ControlError kind: perturb_aborted, perturb_failed, timeout, ...

    @property
    def http_status(self) -> int:
        return 502 if self.answered else 503


class ProcessLink:
    """The panel's view of one process's control channel: its last status and when it came.

    Every command opens its own client, so an e-stop never waits behind a long command
    (a perturbation test) on the same process. The process counts as connected while its
    last command was answered, recently.
    """

    def __init__(self, name: str, address: str, timeout_s: float, control_token: str,
                 curve_keys: tuple[Path | None, Path | None] = (None, None)):
        self.name = name
        self.address = address
        self.timeout_s = timeout_s
        self.control_token = control_token  # the run's control.token, which every request carries
        self.curve_keys = curve_keys  # (own secret key file, server's public key file)
        self.last_status: dict | None = None
        self.last_reply_time: float | None = None
        self.answering = False
        self.last_error: str | None = None
        self.stopping = False  # told to stop, or said so: its silence then is no loss
        self.was_connected = False  # as the last poll found it: changes are events

    def call(self, command: str, timeout_s: float | None = None, **arguments) -> dict:
        try:
            with ControlClient(self.address, timeout_s or self.timeout_s, "panel", *self.curve_keys,
                               token=self.control_token) as client:
                reply = client.call(command, **arguments)
        except ControlError as error:
            answered = error.kind not in NO_ANSWER
            self.answering = answered
            if answered:
                self.last_reply_time = time.time()
            self.last_error = f"{command}: {error}"
            verb = "refused" if answered else "did not answer"
            raise LinkError(f"{self.name} ({self.address}) {verb} {command!r}: {error}", answered, error.kind) from error
        self.last_reply_time = time.time()
        self.answering = True
        self.last_error = None
        if command == "stop" or reply.get("state") == "stopping":
            self.stopping = True
        return reply

    def poll(self) -> None:
        try:
            self.last_status = self.call("status")
        except LinkError:
            pass

    def health(self, interval_s: float) -> dict:
        age = None if self.last_reply_time is None else time.time() - self.last_reply_time
        return {
            "name": self.name,
            "address": self.address,
            "connected": self.answering and age is not None and age < 3 * interval_s + self.timeout_s,
            "reply_age_s": age,
            "error": self.last_error,
            "status": self.last_status,
        }


class Fleet:
    """The learner and the actors the panel talks to, polled in a background thread.

    A process that starts or stops answering is an event, `record(kind, message)`: "up", and
    "stopped" when it was told to stop (or said it was stopping), else "lost"."""

    def __init__(self, settings: PanelSettings, control_token: str, record: Callable[[str, str], None]):
        self.record = record
        self.interval_s = settings.poll_interval_s
        timeout_s = settings.control_timeout_s
        keys = (settings.curve_secret_key, settings.learner_public_key)
        self.learner = (ProcessLink("learner", settings.learner_control, timeout_s, control_token, keys)
                        if settings.learner_control else None)
        self.actors = [ProcessLink(f"actor-{i}", address, timeout_s, control_token)
                       for i, address in enumerate(settings.actor_control)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="panel-poll", daemon=True)

    @property
    def links(self) -> list[ProcessLink]:
        return ([self.learner] if self.learner else []) + self.actors

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            for link in self.links:
                link.poll()
                self._note_change(link)
            self._stop.wait(self.interval_s)

    def _note_change(self, link: ProcessLink) -> None:
        health = link.health(self.interval_s)
        if health["connected"] == link.was_connected:
            return
        link.was_connected = health["connected"]
        if health["connected"]:
            link.stopping = False
            self.record("up", f"{link.name} answers ({link.address})")
        elif link.stopping:
            self.record("stopped", f"{link.name} stopped: it was told to stop")
        else:
            self.record("lost", f"{link.name} lost: no answer for {health['reply_age_s']:.0f} s ({link.last_error})")

    def actor(self, name: str | None) -> ProcessLink:
        if not self.actors:
            raise HTTPException(409, "the panel was started without --actor-control: no actor to command")
        if name is None:
            return self.actors[0]
        for link in self.actors:
            if link.name == name:
                return link
        raise HTTPException(404, f"no actor named {name!r}; known: {[link.name for link in self.actors]}")

    def health(self) -> dict:
        return {
            "learner": self.learner.health(self.interval_s) if self.learner else None,
            "actors": [link.health(self.interval_s) for link in self.actors],
        }


# ---------------------------------------------------------------------------- the learner the panel may start


class LearnerLauncher:
    """Starts `robot-sql learner` for the run when "start" finds no learner answering.

    Only for a learner on this machine (a remote learner is started where it runs). Its
    settings: the panel's --learner-config, else the learner.yaml a previous learner of this
    run left behind (so "start" after "stop" continues the same run); with neither it refuses.
    The learner runs in its own session, logging to <run-dir>/learner.log: it belongs to the
    run, not to the panel, so closing the panel does not stop training; "stop" does.
    """

    def __init__(self, run: RunDir, control_address: str, config: Path | None):
        self.run = run
        self.data_port = split_tcp(control_address)[1] - 2  # the learner's control socket is port + 2
        self.config = config
        self.process: subprocess.Popen | None = None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> int:
        config = self.config or self.run.root / "learner.yaml"
        if not config.is_file():
            raise HTTPException(409, f"no learner settings: {config} does not exist; "
                                     "start the panel with --learner-config or start the learner yourself")
        executable = shutil.which("robot-sql", path=str(Path(sys.executable).parent)) or "robot-sql"
        command = [executable, "learner", "--run-dir", str(self.run.root), "--config", str(config),
                   "--port", str(self.data_port)]
        with open(self.run.root / "learner.log", "ab") as log:
            try:
                self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as error:
                raise HTTPException(500, f"cannot start {command[0]}: {error}") from None
        return self.process.pid


def training_state(fleet: Fleet, launcher: LearnerLauncher | None) -> dict[str, str]:
    """What the page's header says about training: state (running, paused, stopping, starting,
    stopped, learner down, no learner) and a line of detail."""
    learner = fleet.learner
    if learner is None:
        return {"state": "no learner", "detail": "the panel was started without --learner-control"}
    health = learner.health(fleet.interval_s)
    if health["connected"] and learner.last_status:
        return {"state": learner.last_status.get("state", "running"),
                "detail": f"{learner.last_status.get('updates', '?')} updates"}
    if launcher is not None and launcher.running():
        return {"state": "starting", "detail": f"launched learner pid {launcher.process.pid}, waiting for it to answer"}
    if learner.stopping:
        return {"state": "stopped", "detail": "Start launches it again from its checkpoint"}
    exited = launcher.process.returncode if launcher is not None and launcher.process is not None else None
    return {"state": "learner down",
            "detail": ("never answered" if health["reply_age_s"] is None else f"no answer for {health['reply_age_s']:.0f} s")
            + (f"; the learner this panel started exited with status {exited} (learner.log)" if exited else "")}


# ---------------------------------------------------------------------------- the web application


class PerturbationRequest(PerturbationSpec):
    actor: str | None = Field(None, description="which actor runs the test (default: the first)")


class RearmRequest(BaseModel):
    """Re-arming lets the arms move again: the request must say so ({"confirm": true}), else 422. The
    page asks in a dialog first; a script cannot re-arm by an empty POST."""
    model_config = ConfigDict(extra="forbid")
    confirm: bool = Field(strict=True)  # true itself: not 1, "yes" or "true"

    @field_validator("confirm")
    @classmethod
    def _confirmed(cls, confirm: bool) -> bool:
        if confirm is not True:
            raise ValueError('re-arming lets the arm move: send {"confirm": true}')
        return confirm


class ActorChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str | None = None


class StreamCursor(BaseModel):
    """Where an event stream is: the id of the last event and the time of each curve's last point it
    sent. Each update carries it as its SSE id, which the browser sends back as Last-Event-ID when
    it reconnects: the new stream sends only what is newer (no curve or event twice)."""
    model_config = ConfigDict(extra="forbid")
    events: int = Field(0, ge=0, le=MAX_INTEGER)
    series: dict[str, float] = {}

    @field_validator("series")
    @classmethod
    def _known_curves(cls, series: dict[str, float]) -> dict[str, float]:
        if unknown := sorted(set(series) - set(CURVES)):
            raise ValueError(f"unknown curves {unknown}; known: {list(CURVES)}")
        return series

    @classmethod
    def parse(cls, text: str | None) -> "StreamCursor":
        """The cursor in `text` (none: from the start); 422 for anything but one this panel made."""
        try:
            return cls() if text is None else cls.model_validate(finite_json(text.encode()))
        except ValueError as error:  # JSONDecodeError and ValidationError are ValueErrors
            raise HTTPException(422, f"bad stream cursor (Last-Event-ID or resume): {error}") from None


def create_app(settings: PanelSettings, token: str, shutting_down: Callable[[], bool] = lambda: False) -> FastAPI:
    """The panel application; `shutting_down()` tells open event streams to end (the server is stopping)."""
    run = RunDir.create(settings.run_dir)
    store = MetricsStore(run.metrics)
    control_token, _ = run.token("control")  # made here when the panel is first; the learner keeps it

    def record(kind: str, message: str) -> None:
        store.event("panel", kind, message)

    fleet = Fleet(settings, control_token, record)
    launcher = (LearnerLauncher(run, settings.learner_control, settings.learner_config)
                if settings.learner_control and split_tcp(settings.learner_control)[0] in LOOPBACK_HOSTS else None)
    perturbation_job: dict = {"state": "idle"}
    job_lock = threading.Lock()
    require_token = token_checker(token)
    arm_view = ArmView()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        fleet.start()
        yield
        fleet.stop()
        arm_view.close()
        store.close()

    app = FastAPI(title="robot-sql panel", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.fleet, app.state.arm_view = fleet, arm_view  # for tests in the same process
    app.add_middleware(RequestGate, bound_host=settings.host)
    api = APIRouter(dependencies=[Depends(require_token)], route_class=FiniteJSONRoute)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/")
    def page(request: Request, token_query: str | None = Query(None, alias="token")):
        """The page; `/?token=...` logs the browser in (sets the cookie) and drops the token from the address."""
        if token_query is not None:
            if not hmac.compare_digest(token_query.encode(), token.encode()):
                raise HTTPException(401, "wrong panel token")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        require_token(request)
        return FileResponse(STATIC / "index.html")

    @api.get("/static/{name}")
    def static(name: str):
        path = STATIC / name
        if name not in {entry.name for entry in STATIC.iterdir()}:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(path)

    # ---- what the page shows
    def overview() -> dict:
        return {
            "run_dir": str(run.root),
            "curves": {name: curve._asdict() for name, curve in CURVES.items()},
            "joints": {"names": list(sawyer.JOINT_NAMES), "lower": sawyer.POSITION_LOWER.tolist(),
                       "upper": sawyer.POSITION_UPPER.tolist()},
            "links": list(sawyer.LINK_NAMES),
            "limits": {"wrench_force_n": perturbation.MAX_WRENCH_FORCE_N,
                       "wrench_duration_s": perturbation.MAX_WRENCH_DURATION_S,
                       "displacement_rad": perturbation.MAX_DISPLACEMENT_RAD},
            "actors": [link.name for link in fleet.actors],
            "camera": {"azimuth": DEFAULT_AZIMUTH, "elevation": DEFAULT_ELEVATION, "azimuth_range": AZIMUTH_RANGE,
                       "elevation_range": ELEVATION_RANGE, "views": VIEWS},
        }

    def status() -> dict:
        return {**fleet.health(), "training": training_state(fleet, launcher), "perturbation": dict(perturbation_job),
                "launched_learner_pid": launcher.process.pid if launcher and launcher.running() else None}

    api.get("/api/overview")(overview)
    api.get("/api/status")(status)

    @api.get("/api/series/{name}")
    def series(name: str, since: float = Query(0.0, allow_inf_nan=False)) -> list[tuple[float, int, float]]:
        return store.series(name, since)

    @api.get("/api/events")
    def events(after: int = Query(0, ge=0, le=MAX_INTEGER)) -> list[tuple[int, float, str, str, str]]:
        return store.events(after)

    @api.get("/api/checkpoints")
    def checkpoints() -> list[dict]:
        return list_checkpoints(run)

    @api.get("/api/reports")
    def reports() -> list[dict]:
        return list_reports(run)

    @api.get("/api/reports/{name}")
    def report(name: str) -> dict:
        path = run.reports / name
        if not name.endswith(".json") or name not in {entry.name for entry in run.reports.iterdir()}:
            raise HTTPException(404, f"no report {name!r}")
        return json.loads(path.read_text())

    @api.get("/api/frame")
    def frame(actor: str | None = None,
              azimuth: int = Query(DEFAULT_AZIMUTH, ge=AZIMUTH_RANGE[0], le=AZIMUTH_RANGE[1]),
              elevation: int = Query(DEFAULT_ELEVATION, ge=ELEVATION_RANGE[0], le=ELEVATION_RANGE[1]),
              view: Literal[VIEWS] = "arm"):  # type: ignore[valid-type]
        """The actor's arm in its task's scene at the state it last reported, from the camera asked for
        (degrees; view arm or work); else the newest image in the run's media/. Rendered once per
        (actor, state, camera) however many pages ask."""
        link = fleet.actor(actor) if fleet.actors else None
        if link is not None and link.last_status and "joint_positions" in link.last_status:
            try:
                state = check_arm_state(link.last_status)
                png = arm_view.frame(link.name, state, Camera(azimuth, elevation, view))
            except (ValueError, RenderError) as error:  # ProtocolError is a ValueError
                raise HTTPException(503, f"cannot draw {link.name}'s arm: {error}") from None
            return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
        path = latest_frame(run)
        if path is None:
            raise HTTPException(404, "no arm state from an actor and no rendered frame in the run directory")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})

    @api.get("/api/stream")
    async def stream(request: Request, resume: str | None = Query(None, max_length=4096),
                     last_event_id: str | None = Header(None, max_length=4096)):
        """Server-sent events: one `update` per poll interval with new curve points, events, status and
        lists, from where a StreamCursor says (Last-Event-ID from the browser's reconnect, else `resume`)."""
        cursor = StreamCursor.parse(last_event_id or resume)

        async def updates():
            while not shutting_down() and not await request.is_disconnected():
                update = await asyncio.to_thread(collect, cursor)
                yield f"id: {cursor.model_dump_json()}\nevent: update\ndata: {json.dumps(update)}\n\n"
                await asyncio.sleep(settings.poll_interval_s)

        return StreamingResponse(updates(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    def collect(cursor: StreamCursor) -> dict:
        """What is new since `cursor`, which moves past it."""
        points = {}
        for name in CURVES:  # [time, step, value, source]: one line per source (the learner, each actor)
            rows = store.points(name, cursor.series.get(name, 0.0), limit=2000)
            if rows:
                cursor.series[name] = rows[-1][0]
                points[name] = rows
        events = store.events(cursor.events, limit=200)
        if events:
            cursor.events = events[-1][0]
        return {"series": points, "events": events, "status": status(),
                "checkpoints": list_checkpoints(run)[:20], "reports": list_reports(run)[:50]}

    # ---- training, through the learner
    def learner_call(command: str) -> dict:
        if fleet.learner is None:
            raise HTTPException(409, "the panel was started without --learner-control")
        try:
            return fleet.learner.call(command)
        except LinkError as error:
            raise HTTPException(error.http_status, str(error)) from None

    @api.post("/api/training/start")
    def start_training() -> dict:
        """Resume a learner that answers; otherwise start one here (loopback learners only)."""
        if fleet.learner is None:
            raise HTTPException(409, "the panel was started without --learner-control")
        try:
            reply = fleet.learner.call("resume")
        except LinkError as error:
            if error.answered:  # it is there but refused (e.g. stopping): starting a second one would be wrong
                raise HTTPException(502, str(error)) from None
            if launcher is None:
                raise HTTPException(503, f"{error}; the learner is not on this machine, start it where it runs") from None
            if launcher.running():
                raise HTTPException(503, f"a learner started by this panel (pid {launcher.process.pid}) is not answering yet; "
                                         "see learner.log in the run directory") from None
            pid = launcher.launch()
            record("training", f"started robot-sql learner (pid {pid})")
            return {"started": True, "pid": pid}
        record("training", "resumed training")
        return {"started": False, "reply": reply}

    for command in ("pause", "resume", "stop", "checkpoint"):
        def handler(command: str = command) -> dict:
            reply = learner_call(command)
            record("training", f"{command} sent to the learner")
            return {"reply": reply}
        api.post(f"/api/training/{command}", name=f"training_{command}")(handler)

    # ---- the arm, straight to the actors
    def every_actor(command: str) -> dict:
        if not fleet.actors:
            raise HTTPException(409, "the panel was started without --actor-control: no actor to command")
        results = {}
        threads = []

        def send(link: ProcessLink) -> None:
            try:
                results[link.name] = {"ok": True, "reply": link.call(command)}
            except LinkError as error:
                results[link.name] = {"ok": False, "error": str(error)}

        for link in fleet.actors:
            threads.append(threading.Thread(target=send, args=(link,)))
            threads[-1].start()
        for thread in threads:
            thread.join()
        failed = [name for name, result in results.items() if not result["ok"]]
        record(command, f"{command} sent to {len(results)} actor(s); not confirmed by: {failed or 'none'}")
        if failed:
            raise HTTPException(503, {"message": f"{command} not confirmed by {failed}", "actors": results})
        return {"actors": results}

    @api.post("/api/estop")
    def estop() -> dict:
        """Every actor stops commanding motion and holds the arm until re-armed."""
        return every_actor("estop")

    @api.post("/api/rearm")
    def rearm(_confirmed: RearmRequest) -> dict:
        """Every actor stops holding and moves again under the policy: only with {"confirm": true}."""
        return every_actor("rearm")

    @api.post("/api/episode/reset")
    def reset_episode(choice: ActorChoice) -> dict:
        link = fleet.actor(choice.actor)
        try:
            reply = link.call("reset_episode")
        except LinkError as error:
            raise HTTPException(error.http_status, str(error)) from None
        record("episode", f"episode reset sent to {link.name}")
        return {"reply": reply}

    @api.post("/api/perturbation", status_code=202)
    def start_perturbation(request_body: PerturbationRequest) -> dict:
        """Start a perturbation test on one actor; its report appears in /api/reports when it ends
        (completed, aborted by an e-stop, or failed). Refused (409) while the actor is e-stopped."""
        link = fleet.actor(request_body.actor)
        spec = PerturbationSpec(**request_body.model_dump(exclude={"actor"}))
        try:  # the actor refuses too, but only in the test's thread: the page must hear it now
            estopped = link.call("status").get("estopped")
        except LinkError as error:
            raise HTTPException(error.http_status, str(error)) from None
        if estopped:
            raise HTTPException(409, f"{link.name} is e-stopped: re-arm before a perturbation test")
        with job_lock:
            if perturbation_job.get("state") == "running":
                raise HTTPException(409, "a perturbation test is already running")
            perturbation_job.clear()
            perturbation_job.update(state="running", actor=link.name, spec=spec.model_dump(), started=time.time())

        def run_test() -> None:
            try:
                path = save_report(run, link.call("perturb", timeout_s=PERTURBATION_TIMEOUT_S, **spec.model_dump()))
            except (LinkError, ValidationError) as error:
                # an e-stop during the test: the actor answers with its own error kind
                outcome = "aborted" if getattr(error, "kind", "") == "perturb_aborted" else "failed"
                path = save_report(run, unfinished_report(spec, outcome, str(error)))
                perturbation_job.update(state=outcome, error=str(error), report=path.name)
                record("perturbation", f"{spec.kind} test on {link.name} {outcome}: {error}")
            else:
                perturbation_job.update(state="done", report=path.name)
                record("perturbation", f"{spec.kind} test on {link.name} done: reports/{path.name}")

        threading.Thread(target=run_test, name="perturbation-test", daemon=True).start()
        record("perturbation", f"{spec.kind} test of {spec.trials} trial(s), magnitude {spec.magnitude}, on {link.name}")
        return {"state": "running", "actor": link.name}

    # ---- Prometheus
    registry = CollectorRegistry()
    registry.register(RunCollector(store, fleet))

    @api.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(curves_router(RunsRoot(settings.runs_root or run.root.parent, run), store,
                                     [Depends(require_token)]))  # any metric, per source, other runs
    app.include_router(api)
    app.include_router(report_pages.create_router(run, require_token, record))  # report pages, checkpoint history
    return app


class RunCollector:
    """Prometheus view of the run: the newest value of every metric, and the processes' health."""

    def __init__(self, store: MetricsStore, fleet: Fleet):
        self.store, self.fleet = store, fleet

    def collect(self):
        for name, value in self.store.latest(self.store.names()).items():
            family = GaugeMetricFamily(f"robot_sql_{re.sub(r'[^a-zA-Z0-9_]', '_', name)}", f"newest value of run metric {name}")
            family.add_metric([], value)
            yield family
        up = GaugeMetricFamily("robot_sql_process_up", "1 when the process answered its control channel recently", labels=["process"])
        age = GaugeMetricFamily("robot_sql_process_reply_age_seconds", "age of the process's last control reply", labels=["process"])
        for link in self.fleet.links:
            health = link.health(self.fleet.interval_s)
            up.add_metric([link.name], float(health["connected"]))
            if health["reply_age_s"] is not None:
                age.add_metric([link.name], health["reply_age_s"])
        yield up
        yield age


# ---------------------------------------------------------------------------- the command


@click.command("panel")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="The run directory to show and control.")
@click.option("--port", type=int, default=None, help="TCP port (default 8765).")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1; anything else exposes the panel to the network).")
@click.option("--learner-control", default=None, help="The learner's control address, e.g. tcp://127.0.0.1:5557.")
@click.option("--actor-control", multiple=True, help="An actor's control address; repeat for several actors.")
@click.option("--learner-config", default=None, type=click.Path(dir_okay=False),
              help="LearnerSettings YAML for a learner that Start launches (default: the run's learner.yaml).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="YAML file of panel settings.")
def panel_command(run_dir, port, host, learner_control, actor_control, learner_config, config_path) -> None:
    """Serve the web panel of a run: live curves, health, arm state, controls, e-stop, perturbation tests."""
    import uvicorn

    settings = load_settings(PanelSettings, config_path, run_dir=run_dir, port=port, host=host,
                             learner_control=learner_control, learner_config=learner_config,
                             actor_control=list(actor_control) or None)
    run = RunDir.create(settings.run_dir)
    token, generated = load_or_create_token(run, settings.token.get_secret_value() if settings.token else None)
    url = f"http://{settings.host}:{settings.port}/"
    if generated:
        click.echo(f"panel: new token stored in {run.root / TOKEN_NAME}.token (mode 0600); log in once at {url}?token={token}")
    elif settings.token:
        click.echo(f"panel: serving {url} (token from ROBOT_SQL_PANEL_TOKEN; log in at {url}?token=<token>)")
    else:
        click.echo(f"panel: serving {url} (token in {run.root / TOKEN_NAME}.token; log in at {url}?token=<token>)")
    if settings.host not in LOOPBACK_HOSTS:
        click.echo(f"panel: WARNING bound to {settings.host}: reachable from the network, without TLS", err=True)
    # open event streams end once uvicorn has been told to exit (SIGINT/SIGTERM), so it stops cleanly
    app = create_app(settings, token, shutting_down=lambda: server.should_exit)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    server.run()
