"""The wire protocol between actors, learner and panel: ZeroMQ frames holding msgpack maps.

No pickle anywhere: a frame is a msgpack map with a message `type`, the protocol version `v`
and the `sender` id, plus the fields of that type. Arrays travel as
{"dtype": "<f4", "shape": [...], "data": bytes} with an allow-list of little-endian dtypes.
Every frame is validated before any of it is used; a bad one raises `ProtocolError` whose
`kind` says what was wrong (the receivers count rejections per kind). Arrays are read-only
views of msgpack's copy of their bytes. A transitions message carries its batch as one float32
array of rows (layout in robot_sql/replay.py) with the dimensions it was made for.

Sockets (a learner binds three consecutive ports from `port`):
    port      data     ROUTER  <- actor DEALER: transitions, ping, stats; -> ack, pong, error
    port + 1  weights  XPUB    -> actor SUB: weights; the actor keeps only the newest
    port + 2  control  ROUTER  <- REQ (ControlClient): request; -> reply, error
An actor binds its own control ROUTER (status, estop, rearm, reset_episode, perturb).

Control requests carry the run's control token (<run-dir>/control.token, see
`robot_sql.rundir`); a request without the right one is refused with kind "unauthorized" and
counted (`control_check`). The one command that needs no token is an actor's `estop`:
stopping the arm must never depend on a credential.

Optional CURVE (encryption + authentication) for links that leave the machine: key pairs
from `robot-sql keygen`, see `secure_server` and `secure_client`.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import click
import msgpack
import numpy as np
import zmq
import zmq.auth

from robot_sql.replay import transition_width

# 2: a transitions message carries one array of rows (robot_sql/replay.py), not five columns
# 3: a control request carries the control token
PROTOCOL_VERSION = 3
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_ARRAY_ELEMENTS = 16 * 1024 * 1024
MAX_ARRAY_DIMS = 4
MAX_NAME_LENGTH = 256
MAX_STATS_VALUES = 64  # names in one stats message
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8", "|u1", "|b1"})
ITEMSIZES = {dtype: np.dtype(dtype).itemsize for dtype in ALLOWED_DTYPES}
FLOAT_DTYPES = frozenset({"<f4", "<f8"})

# why a frame was rejected; receivers keep one counter per kind
REJECT_KINDS = (
    "oversized",  # frame or array larger than the caps
    "malformed",  # not msgpack, or not a map with type / v / sender
    "version",  # another protocol version
    "unknown_type",  # a type this protocol does not know
    "unexpected",  # a known type that this socket does not take
    "schema",  # a field missing, extra or of the wrong type
    "dtype",  # an array dtype outside the allow-list
    "shape",  # an array whose shape does not match its bytes or its role
    "nonfinite",  # NaN or inf in a float array
    "framing",  # ZeroMQ multipart layout that no client of ours sends
    "out_of_range",  # finite values beyond the learner's max_abs_value
    "unknown_metric",  # a stats name that actors do not report (STATS_NAMES)
    "forged",  # stats claiming to come from the learner
    "rate_limited",  # transitions beyond a session's max_ingest_rate or everyone's max_total_ingest_rate
    "disk_budget",  # transitions once the replay log holds max_replay_bytes
    "unauthorized",  # a control request without the run's control token
)
# what an actor reports in stats messages (robot_sql/actor.py); the learner stores no other name
STATS_NAMES = frozenset({"episode_return", "episode_length", "episode_success", "episode_collision_steps",
                         "actor_steps_per_s", "actor_loop_period_max_ms", "actor_loop_period_mean_ms", "actor_unacked",
                         "actor_dropped", "actor_weight_version"})

log = logging.getLogger(__name__)


class ProtocolError(ValueError):
    def __init__(self, kind: str, detail: str):
        assert kind in REJECT_KINDS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass(frozen=True)
class Message:
    type: str
    sender: str
    body: dict[str, Any]
    peer_key: str = ""  # the CURVE public key (Z85) the frame arrived under; "" without CURVE


# ---- field checks: each returns the validated value or raises ProtocolError("schema") ------
def _integer(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ProtocolError("schema", f"expected a non-negative integer, got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    if type(value) is not str or len(value) > MAX_NAME_LENGTH:
        raise ProtocolError("schema", f"expected a string of at most {MAX_NAME_LENGTH} characters")
    return value


def _integers(value: Any) -> list[int]:
    if type(value) is not list:
        raise ProtocolError("schema", f"expected a list of integers, got {type(value).__name__}")
    return [_integer(item) for item in value]


def _numbers(value: Any) -> dict[str, float]:
    """A flat map name -> finite number (actor statistics)."""
    if type(value) is not dict:
        raise ProtocolError("schema", f"expected a map of numbers, got {type(value).__name__}")
    if len(value) > MAX_STATS_VALUES:
        raise ProtocolError("oversized", f"{len(value)} values, at most {MAX_STATS_VALUES}")
    numbers = {}
    for name, number in value.items():
        if type(number) not in (int, float):
            raise ProtocolError("schema", f"value of {name!r} is not a number")
        if not math.isfinite(number):
            raise ProtocolError("nonfinite", f"value of {name!r} is {number}")
        numbers[_text(name)] = float(number)
    return numbers


def _plain_value(value: Any, depth: int) -> None:
    if depth > 8:
        raise ProtocolError("schema", "nested too deeply")
    if type(value) is dict:
        for name, item in value.items():
            _text(name)
            _plain_value(item, depth + 1)
    elif type(value) is list:
        for item in value:
            _plain_value(item, depth + 1)
    elif type(value) is float and not math.isfinite(value):
        raise ProtocolError("nonfinite", f"value {value}")
    elif type(value) not in (str, int, float, bool, type(None)):
        raise ProtocolError("schema", f"{type(value).__name__} is not a plain value")


def _plain(value: Any) -> dict[str, Any]:
    """A map of plain values (request arguments, replies): no arrays, bytes or extension types."""
    if type(value) is not dict:
        raise ProtocolError("schema", f"expected a map, got {type(value).__name__}")
    _plain_value(value, 0)
    return value


def decode_array(value: Any) -> np.ndarray:
    if type(value) is not dict or set(value) != {"dtype", "shape", "data"}:
        raise ProtocolError("schema", "an array must be a map with exactly dtype, shape and data")
    dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if type(dtype) is not str or dtype not in ALLOWED_DTYPES:
        raise ProtocolError("dtype", f"dtype {str(dtype)[:32]!r} is not one of {sorted(ALLOWED_DTYPES)}")
    if type(shape) is not list or len(shape) > MAX_ARRAY_DIMS or any(type(n) is not int or n < 0 for n in shape):
        raise ProtocolError("shape", f"shape must be a list of at most {MAX_ARRAY_DIMS} non-negative integers")
    if type(data) is not bytes:
        raise ProtocolError("schema", "array data must be bytes")
    count = math.prod(shape)
    if count > MAX_ARRAY_ELEMENTS:
        raise ProtocolError("oversized", f"array of {count} elements exceeds {MAX_ARRAY_ELEMENTS}")
    itemsize = ITEMSIZES[dtype]
    if count * itemsize != len(data):
        raise ProtocolError("shape", f"shape {shape} of {dtype} needs {count * itemsize} bytes, got {len(data)}")
    # A read-only view of msgpack's own copy of the bytes: independent of the frame, no second copy.
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype in FLOAT_DTYPES and not np.isfinite(array).all():
        raise ProtocolError("nonfinite", "array contains NaN or inf")
    return array


def _arrays(value: Any) -> dict[str, np.ndarray]:
    if type(value) is not dict or not value:
        raise ProtocolError("schema", "expected a non-empty map of arrays")
    return {_text(name): decode_array(array) for name, array in value.items()}


SCHEMAS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "transitions": {"session": _text, "seq": _integer, "obs_dim": _integer, "act_dim": _integer, "rows": decode_array},
    "ack": {"session": _text, "seqs": _integers},
    "ping": {"session": _text},
    "pong": {"weight_version": _integer},
    "stats": {"session": _text, "values": _numbers},
    "weights": {"run": _text, "version": _integer, "hidden_sizes": _integers, "weights": _arrays},
    "request": {"command": _text, "args": _plain, "token": _text},
    "reply": {"result": _plain},
    "error": {"kind": _text, "detail": _text},
}


# ---- encoding and decoding -------------------------------------------------------------------
def _to_wire(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        little = value.astype(value.dtype.newbyteorder("<"), copy=False)
        return {"dtype": little.dtype.str, "shape": list(little.shape), "data": np.ascontiguousarray(little).tobytes()}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot put {type(value).__name__} on the wire")


def encode(message_type: str, sender: str, **body: Any) -> bytes:
    """One frame: numpy arrays anywhere in `body` become {dtype, shape, data} maps."""
    assert message_type in SCHEMAS and set(body) == set(SCHEMAS[message_type]), (message_type, sorted(body))
    return msgpack.packb({"type": message_type, "v": PROTOCOL_VERSION, "sender": sender, **body}, default=_to_wire)


def _refuse_extension(code: int, data: bytes) -> None:
    raise ProtocolError("malformed", f"msgpack extension type {code} is not allowed")


def decode(frame: bytes, accept: frozenset[str] | set[str], max_bytes: int = MAX_FRAME_BYTES,
           max_entries: int | None = None) -> Message:
    """Validate one frame completely; raise ProtocolError unless it is a well-formed message of a type in `accept`.

    `max_entries` caps every map and list in the frame; msgpack checks it at each one's header,
    so a stats map of a million names costs nothing to refuse (the learner's data socket)."""
    if len(frame) > max_bytes:
        raise ProtocolError("oversized", f"frame of {len(frame)} bytes exceeds {max_bytes}")
    limits = {} if max_entries is None else {"max_map_len": max_entries, "max_array_len": max_entries}
    try:
        # unpackb caps every declared length by the frame's size, so huge declared sizes fail early
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=_refuse_extension, **limits)
    except ProtocolError:
        raise
    except Exception as error:  # msgpack raises several types (ExtraData, StackError, UnicodeDecodeError, ...)
        if limits and re.search(r"exceeds max_(map|array)_len", str(error)):
            raise ProtocolError("oversized", f"a map or list of more than {max_entries} entries") from None
        raise ProtocolError("malformed", f"not msgpack: {type(error).__name__}") from None
    if type(raw) is not dict or not {"type", "v", "sender"} <= set(raw):
        raise ProtocolError("malformed", "a message is a map with type, v and sender")
    if type(raw["v"]) is not int or raw["v"] != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {str(raw['v'])[:32]!r}, this side speaks {PROTOCOL_VERSION}")
    message_type = raw.pop("type")
    if message_type not in SCHEMAS:
        raise ProtocolError("unknown_type", f"unknown message type {str(message_type)[:32]!r}")
    if message_type not in accept:
        raise ProtocolError("unexpected", f"{message_type!r} is not taken here")
    sender = _text(raw.pop("sender"))
    raw.pop("v")
    schema = SCHEMAS[message_type]
    if set(raw) != set(schema):
        raise ProtocolError("schema", f"{message_type} needs fields {sorted(schema)}, got {sorted(map(str, raw))[:8]}")
    return Message(message_type, sender, {name: check(raw[name]) for name, check in schema.items()})


def check_transitions(body: dict[str, Any], obs_dim: int, act_dim: int, max_rows: int, max_abs: float | None = None) -> int:
    """Check a decoded transitions message against the learner's dimensions and its bound on
    magnitudes (`max_abs`, None for none); return its row count."""
    if (body["obs_dim"], body["act_dim"]) != (obs_dim, act_dim):
        raise ProtocolError("shape", f"transitions of (obs_dim, act_dim) = {(body['obs_dim'], body['act_dim'])}, "
                                     f"this learner's environment has {(obs_dim, act_dim)}")
    rows = body["rows"]
    if rows.dtype != np.float32:  # what the replay buffer stores: no lossy cast
        raise ProtocolError("dtype", "transition rows must be float32 ('<f4')")
    width = transition_width(obs_dim, act_dim)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ProtocolError("shape", f"transition rows have shape {rows.shape}, expected [n, {width}]")
    if not 1 <= len(rows) <= max_rows:
        raise ProtocolError("oversized" if len(rows) > max_rows else "shape",
                            f"{len(rows)} transitions (allowed 1 to {max_rows})")
    # finite but huge values (3e38) overflow the networks: NaN losses, then a learner that cannot train
    if max_abs is not None and (largest := max(float(rows.max()), -float(rows.min()))) > max_abs:  # no |rows| copy
        raise ProtocolError("out_of_range", f"a value of magnitude {largest:.3g} exceeds {max_abs:g}")
    return len(rows)


# ---- ROUTER framing ----------------------------------------------------------------------------
# ---- the arm state in an actor's status reply (what the panel draws) ---------------------------
ARM_SCENES = ("arm", "lego", "obstacle")  # the scenes of sim/scenes.py build_model
ARM_JOINTS = 7
MAX_ARM_COORDINATE_M = 3.0  # every position the Sawyer's tasks use lies within 1.5 m of its base
MAX_JOINT_ANGLE_RAD = 2 * math.pi  # beyond every joint's limit (right_j6: 4.71 rad)


class ArmState(NamedTuple):
    """An actor's arm as the panel draws it; hashable (the panel caches pictures by it).
    Poses are (x, y, z, qw, qx, qy, qz) in the base frame (m)."""
    scene: str
    joint_positions: tuple[float, ...]
    target: tuple[float, ...] | None
    fixed_brick: tuple[float, ...] | None


def _vector(status: dict[str, Any], name: str, length: int, bound: float) -> tuple[float, ...]:
    value = status[name]
    if type(value) is not list or len(value) != length or any(type(v) not in (int, float) for v in value):
        raise ProtocolError("schema", f"{name} must be a list of {length} numbers")
    if not all(math.isfinite(v) for v in value):
        raise ProtocolError("nonfinite", f"{name} holds NaN or inf")
    if any(abs(v) > bound for v in value):
        raise ProtocolError("out_of_range", f"{name} has a value beyond {bound}")
    return tuple(float(v) for v in value)


def _pose(status: dict[str, Any], position: str, quat: str, need_quat: bool) -> tuple[float, ...] | None:
    if position not in status and quat not in status:
        return None
    if position not in status or (need_quat and quat not in status):
        raise ProtocolError("schema", f"{position} and {quat} go together")
    rotation = _vector(status, quat, 4, 1.5) if quat in status else (1.0, 0.0, 0.0, 0.0)
    if abs(math.hypot(*rotation) - 1.0) > 0.01:
        raise ProtocolError("out_of_range", f"{quat} is not a unit quaternion")
    return _vector(status, position, 3, MAX_ARM_COORDINATE_M) + rotation


def check_arm_state(status: dict[str, Any]) -> ArmState | None:
    """The arm state in an actor's status reply (robot_sql/actor.py `_arm_state`), checked; None when it
    reports no arm (an env without a robot). ProtocolError for a field of the wrong type, size or range:
    joint_positions (7 angles, rad), scene (one of ARM_SCENES; default "arm"), target_position (m) with
    target_quat (w, x, y, z; an actor of before it sends only the position), fixed_brick_position with
    fixed_brick_quat (the Lego tasks)."""
    if "joint_positions" not in status:
        return None
    scene = status.get("scene", "arm")
    if scene not in ARM_SCENES:
        raise ProtocolError("schema", f"scene {str(scene)[:32]!r} is not one of {ARM_SCENES}")
    return ArmState(scene, _vector(status, "joint_positions", ARM_JOINTS, MAX_JOINT_ANGLE_RAD),
                    _pose(status, "target_position", "target_quat", need_quat=False),
                    _pose(status, "fixed_brick_position", "fixed_brick_quat", need_quat=True))


def split_routed(frames: list[bytes]) -> tuple[list[bytes], bytes]:
    """ROUTER frames -> (return envelope, payload). DEALER peers send [payload], REQ peers [b"", payload]."""
    if len(frames) == 2:
        return frames[:1], frames[1]
    if len(frames) == 3 and frames[1] == b"":
        return frames[:2], frames[2]
    raise ProtocolError("framing", f"{len(frames) - 1} frames after the identity")


@dataclass
class RejectCounter:
    """Frames received on one socket: accepted, and rejected per kind (each kind logged once)."""

    socket_name: str
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_KINDS, 0))

    def reject(self, error: ProtocolError) -> None:
        if self.rejected[error.kind] == 0:
            log.warning("%s socket: rejected a frame (%s); further %s rejections are only counted",
                        self.socket_name, error, error.kind)
        self.rejected[error.kind] += 1

    @property
    def received(self) -> int:
        return self.accepted + sum(self.rejected.values())


class RouterEndpoint:
    """A bound ROUTER socket that validates every frame, answers bad ones with an error and counts all."""

    def __init__(self, socket: zmq.Socket, name: str, sender: str, accept: set[str], max_bytes: int = MAX_FRAME_BYTES,
                 check: Callable[[Message], None] | None = None, max_entries: int | None = None):
        self.socket, self.sender, self.accept, self.max_bytes = socket, sender, frozenset(accept), max_bytes
        self.max_entries = max_entries  # see `decode`
        self.check = check  # the receiver's own checks (e.g. array shapes), raising ProtocolError
        self.keyed = bool(socket.curve_server)  # CURVE on: each frame's client key goes with its message
        self.counter = RejectCounter(name)

    def receive(self) -> tuple[list[bytes], Message, memoryview] | None:
        """One queued message if valid: (return envelope, message, payload); None if none queued or it was rejected.

        The payload is a read-only view of ZeroMQ's buffer (no copy out of the socket)."""
        try:
            parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        frames = [part.bytes for part in parts[:-1]] + [part.buffer for part in parts[-1:]]
        envelope = frames[:1]
        try:
            envelope, payload = split_routed(frames)
            message = decode(payload, self.accept, self.max_bytes, self.max_entries)
            if self.keyed:
                message = replace(message, peer_key=_peer_key(parts[-1]))
            if self.check is not None:
                self.check(message)
        except ProtocolError as error:
            self.counter.reject(error)
            self.send(envelope, encode("error", self.sender, kind=error.kind, detail=error.detail[:200]))
            return None
        self.counter.accepted += 1
        return envelope, message, payload

    def send(self, envelope: list[bytes], frame: bytes) -> None:
        try:  # ROUTER drops unroutable peers silently; NOBLOCK so a stuck peer never stalls us
            self.socket.send_multipart([*envelope, frame], zmq.NOBLOCK)
        except zmq.Again:
            pass


def session_tag(session: str) -> str:
    """How status, events and logs name an actor session: a session id is the secret that lets a
    sender claim (session, seq) numbers, so it is never shown, only a hash of it."""
    return hashlib.sha256(session.encode()).hexdigest()[:12]


def control_check(token: str, open_commands: frozenset[str] = frozenset()) -> Callable[[Message], None]:
    """A RouterEndpoint check: a request must carry `token`, unless its command is one of `open_commands`."""
    expected = token.encode()

    def check(message: Message) -> None:
        body = message.body
        if body["command"] not in open_commands and not hmac.compare_digest(body["token"].encode(), expected):
            raise ProtocolError("unauthorized", "missing or wrong control token (the run's control.token)")

    return check


def _peer_key(frame: zmq.Frame) -> str:
    """The CURVE client key that ZAP authenticated for this frame's connection."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:  # no ZAP handler answered for this connection: no key
        return ""


class ControlError(RuntimeError):
    """The peer answered a control request with an error, or did not answer in time (kind "timeout")."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class ControlClient:
    """Request/reply client for the learner's and the actors' control channels; never hangs.

    Every call waits at most `timeout_s`. A REQ socket that timed out is stuck mid-exchange,
    so it is closed and the next call opens a fresh one (a late reply is then dropped).
    """

    def __init__(self, address: str, timeout_s: float = 2.0, sender: str = "control-client",
                 secret_key_file: str | Path | None = None, server_key_file: str | Path | None = None,
                 token: str = ""):
        self.address, self.timeout_s, self.sender, self.token = address, timeout_s, sender, token
        self.keys = (secret_key_file, server_key_file)
        self.context = zmq.Context.instance()
        self.socket: zmq.Socket | None = None

    def call(self, command: str, timeout_s: float | None = None, **args: Any) -> dict[str, Any]:
        if self.socket is None:
            self.socket = self.context.socket(zmq.REQ)
            self.socket.linger = 0
            secure_client(self.socket, *self.keys)
            self.socket.connect(self.address)
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            self.socket.send(encode("request", self.sender, command=command, args=args, token=self.token), zmq.NOBLOCK)
            if not self.socket.poll(int(timeout_s * 1000)):
                raise ControlError("timeout", f"no reply from {self.address} to {command!r} within {timeout_s} s")
            message = decode(self.socket.recv(), {"reply", "error"})
        except ControlError:
            self.close()
            raise
        except (ProtocolError, zmq.ZMQError) as error:
            self.close()
            raise ControlError("bad_reply" if isinstance(error, ProtocolError) else "unreachable", str(error)) from None
        if message.type == "error":
            raise ControlError(message.body["kind"], message.body["detail"])
        return message.body["result"]

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- CURVE -------------------------------------------------------------------------------------
def secure_server(socket: zmq.Socket, secret_key_file: str | Path | None) -> None:
    """Make `socket` a CURVE server with the key pair in `secret_key_file` (no-op when None)."""
    if secret_key_file is None:
        return
    public, secret = _load_keys(secret_key_file, need_secret=True)
    socket.curve_publickey, socket.curve_secretkey, socket.curve_server = public, secret, True


def secure_client(socket: zmq.Socket, secret_key_file: str | Path | None, server_key_file: str | Path | None) -> None:
    """Make `socket` a CURVE client: its own key pair plus the server's public key (both or neither)."""
    if (secret_key_file is None) != (server_key_file is None):
        raise ValueError("CURVE needs both the client's secret key file and the server's public key file")
    if secret_key_file is None:
        return
    public, secret = _load_keys(secret_key_file, need_secret=True)
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_serverkey, _ = _load_keys(server_key_file, need_secret=False)


def start_authenticator(context: zmq.Context, allowed_clients_dir: str | Path | None):
    """Accept CURVE clients whose public keys are in `allowed_clients_dir`; None accepts any client key."""
    from zmq.auth.thread import ThreadAuthenticator

    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    location = str(allowed_clients_dir) if allowed_clients_dir is not None else zmq.auth.CURVE_ALLOW_ANY
    authenticator.configure_curve(domain="*", location=location)
    return authenticator


def _load_keys(path: str | Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"key file not found: {path}")
    public, secret = zmq.auth.load_certificate(path)
    if need_secret and secret is None:
        raise ValueError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


@click.command("keygen")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the key files.")
@click.option("--name", required=True, help="Key pair name, e.g. learner or actor-arm1.")
def keygen_command(out_dir: str, name: str) -> None:
    """Write a CURVE key pair: NAME.key (public, give it to peers) and NAME.key_secret (keep it private)."""
    if not zmq.has("curve"):
        raise click.ClickException("this libzmq was built without CURVE support")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / f"{name}.key_secret").exists():
        raise click.ClickException(f"{folder / (name + '.key_secret')} exists; refusing to overwrite a key")
    public_file, secret_file = zmq.auth.create_certificates(folder, name)
    Path(secret_file).chmod(0o600)
    click.echo(f"public key: {public_file}\nsecret key: {secret_file}")


@click.command("control")
@click.argument("command")
@click.argument("args", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--run-dir", type=click.Path(file_okay=False), help="The run, whose control.token is sent.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="The token file, where no run directory is at hand "
              "(the robot side: a copy of the run's control.token).")
@click.option("--address", default="tcp://127.0.0.1:5557", show_default=True,
              help="The learner's control endpoint (its port + 2) or an actor's control_bind.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1, max=600), default=5.0, show_default=True)
def control_command(command: str, args: tuple[str, ...], run_dir: str | None, token_file: str | None, address: str,
                    timeout_s: float) -> None:
    """Send one control request and print the reply as JSON.

    The learner takes status, pause, resume, checkpoint, stop; an actor status, estop, rearm,
    reset_episode, perturb. Values of KEY=VALUE are JSON where they parse (true, 3, [1,2]), else text."""
    import json

    from robot_sql.config import ConfigError
    from robot_sql.rundir import TokenFileError, read_token

    if (run_dir is None) == (token_file is None):
        raise click.UsageError("give --run-dir or --token-file (one of them)")
    try:
        token = read_token(token_file or Path(run_dir) / "control.token")
    except TokenFileError as error:
        raise ConfigError(f"{error} (the learner makes it at its first start)") from None
    values = {}
    for item in args:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise click.UsageError(f"arguments are KEY=VALUE, got {item!r}")
        try:
            values[key] = json.loads(value)
        except ValueError:
            values[key] = value
    try:
        with ControlClient(address, timeout_s, "robot-sql-control", token=token) as client:
            click.echo(json.dumps(client.call(command, **values), indent=2, sort_keys=True))
    except ControlError as error:
        raise click.ClickException(str(error)) from None
