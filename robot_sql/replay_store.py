"""The learner's durable replay store: an append-only log on disk mirrored in a ReplayBuffer.

Each accepted transitions message is appended as a record holding the frame exactly as it
came off the wire (already validated; validated again on reload):

    record = b"RSQ1" | uint32 payload length | uint32 crc32(payload) | payload

Records go to replay/segment-NNNNNN.log files of bounded size. A background thread commits
in groups: whenever records were appended since its last fsync it fsyncs again (fdatasync:
the data and the file size), then raises `durable` (records known to be on disk) and signals
`durable_signal`, an eventfd a poller can watch. The learner acknowledges a batch only once
`durable` covers it, so an acknowledged batch survives kill -9 and power loss, and the next
frames are received while the disk works.

On start the log is read back in order: the newest `capacity` transitions refill the buffer,
every (session, seq) is remembered so a resent batch is ignored, and a torn last record (a
crash mid-write, never acknowledged) is cut off.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from robot_sql.protocol import Message, ProtocolError, check_transitions, decode
from robot_sql.replay import ReplayBuffer

MAGIC = b"RSQ1"
HEADER = struct.Struct("<4sII")
SEGMENT_BYTES = 256 * 1024 * 1024

log = logging.getLogger(__name__)


class ReplayStore:
    def __init__(self, folder: str | Path, obs_dim: int, act_dim: int, capacity: int,
                 max_batch_rows: int = 4096, segment_bytes: int = SEGMENT_BYTES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.obs_dim, self.act_dim, self.max_batch_rows, self.segment_bytes = obs_dim, act_dim, max_batch_rows, segment_bytes
        self.buffer = ReplayBuffer(obs_dim, act_dim, capacity)
        for array in self.buffer.arrays.values():  # take the memory now: no page faults while ingesting, no late OOM
            array.fill(0.0)
        self.seen: dict[str, set[int]] = {}  # session -> sequence numbers stored
        self.transitions_total = 0  # ever stored, including those the ring buffer has dropped
        self.lock = threading.Lock()  # buffer writes (I/O thread) vs sampling (training thread)
        self.appended = self.durable = 0  # log records written / fsynced since this store opened
        self.durable_signal = os.eventfd(0, os.EFD_NONBLOCK)  # readable once `durable` has grown
        self._fd_lock = threading.Lock()  # an fsync vs a segment change
        self._wake = threading.Condition()
        self._closing = False
        self.failure: OSError | None = None  # why the background fsync stopped (then nothing more becomes durable)
        segments = sorted(self.folder.glob("segment-*.log"))
        for segment in segments:
            self._read_segment(segment, is_last=segment == segments[-1])
        self._segment_index = int(segments[-1].stem.split("-")[1]) if segments else 0
        self._open_segment()
        self._committer = threading.Thread(target=self._commit_groups, name="replay-fsync", daemon=True)
        self._committer.start()

    def _open_segment(self) -> None:
        path = self.folder / f"segment-{self._segment_index:06d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._segment_size = os.fstat(self._fd).st_size
        folder = os.open(self.folder, os.O_RDONLY)  # make the new file's name durable too
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def _read_segment(self, path: Path, is_last: bool) -> None:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            if len(data) - offset < HEADER.size:
                break
            magic, length, checksum = HEADER.unpack_from(data, offset)
            payload = data[offset + HEADER.size: offset + HEADER.size + length]
            if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != checksum:
                break
            try:
                message = decode(payload, {"transitions"})
                self._remember(message, check_transitions(message.body["batch"], self.obs_dim, self.act_dim,
                                                          self.max_batch_rows))
            except ProtocolError as error:
                raise RuntimeError(f"{path} holds a record this learner cannot use ({error}); "
                                   "was the run made with another environment?") from None
            offset += HEADER.size + length
        if offset < len(data):
            if not is_last:
                raise RuntimeError(f"{path} is damaged at byte {offset} and is not the last segment")
            log.warning("replay store: cutting a torn record (%d bytes) off the end of %s", len(data) - offset, path)
            with open(path, "r+b") as file:
                file.truncate(offset)
                os.fsync(file.fileno())

    def _remember(self, message: Message, rows: int) -> int:
        with self.lock:
            self.buffer.add_batch(message.body["batch"])
        self.seen.setdefault(message.body["session"], set()).add(message.body["seq"])
        self.transitions_total += rows
        return rows

    def contains(self, session: str, seq: int) -> bool:
        return seq in self.seen.get(session, ())

    def append(self, message: Message, frame: bytes) -> int:
        """Store a validated transitions message; it is durable once `durable` reaches `appended` as of
        this return (soon, or at once with `sync()`). Returns rows added, 0 if a duplicate."""
        if self.contains(message.body["session"], message.body["seq"]):
            return 0
        rows = check_transitions(message.body["batch"], self.obs_dim, self.act_dim, self.max_batch_rows)
        if self._segment_size >= self.segment_bytes:
            with self._fd_lock:
                self._sync_locked()
                os.close(self._fd)
                self._segment_index += 1
                self._open_segment()
        self._segment_size += os.writev(self._fd, [HEADER.pack(MAGIC, len(frame), zlib.crc32(frame)), frame])
        self._remember(message, rows)
        self.appended += 1
        with self._wake:
            self._wake.notify()
        return rows

    def _commit_groups(self) -> None:
        """Group commit: each fsync covers every record appended before it began."""
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closing or self.appended > self.durable)
                if self._closing:
                    return
            try:
                with self._fd_lock:
                    self._sync_locked()
            except OSError as error:  # a failing disk: the learner sees `failure` and stops, loudly
                self.failure = error
                os.eventfd_write(self.durable_signal, 1)
                return

    def _sync_locked(self) -> None:
        covered = self.appended  # written before the fsync starts, so the fsync covers them
        os.fdatasync(self._fd)
        if covered > self.durable:
            self.durable = covered
            os.eventfd_write(self.durable_signal, 1)

    def sync(self) -> None:
        """Make everything appended so far durable now."""
        with self._fd_lock:
            self._sync_locked()

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        with self.lock:
            return self.buffer.sample(batch_size, rng)

    def __len__(self) -> int:
        return len(self.buffer)

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._committer.join()
        self.sync()
        os.close(self._fd)
        os.close(self.durable_signal)
