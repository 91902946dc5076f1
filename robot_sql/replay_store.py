"""The learner's durable replay store: an append-only log on disk mirrored in a ReplayBuffer.

Each accepted transitions message is appended as a record holding the frame exactly as it
came off the wire (already validated; validated again on reload):

    record = b"RSQ1" | uint32 payload length | uint32 crc32(payload) | payload

Records go to replay/segment-NNNNNN.log files of bounded size. `append` copies the rows into
the buffer (training may sample them at once), checksums the frame and keeps the record;
`flush` writes what was kept with one writev. The store's own thread fsyncs (fdatasync: the
data and the file size) whenever something new was written, then raises `durable` (records
known to be on disk) and signals `durable_signal`, an eventfd a poller can watch. The learner
acknowledges a batch only once `durable` covers it, so an acknowledged batch survives kill -9
and power loss; records arriving during an fsync are written meanwhile and covered by the next
one (group commit).

Why this split: the receiving thread calls `flush` once per batch of frames, so the store's
thread needs the GIL only around each fsync and rarely waits for the receiving thread or makes
it wait; work handed over frame by frame (checksums, copies, writes) cost both threads more in
hand-overs of the GIL than the work itself. After each fsync the written pages are dropped
from the page cache: they are never read again, and taking fresh pages for every frame was
slower than the disk on the project's VM (buffered writes of 3.6 MB went from 2 to 11 ms once
the cache had grown by half a gigabyte).

On start the log is read back in order: the newest `capacity` transitions refill the buffer,
every (session, seq) is remembered so a resent batch is ignored. A damaged record (bit rot, a
bad sector) is skipped and reported (`damage`): reading resumes at the next record whose magic,
length and CRC hold, so the damage costs that record only. Damage at the very end of the last
segment, with nothing valid after it, is a torn write (a crash mid-write, never acknowledged): it
is copied aside (segment-N.torn-at-OFFSET) and cut off. Records holding a value beyond `max_abs_value`
(stored by a learner that had no such bound) are skipped and counted, never trained on.
"""
from __future__ import annotations

import bisect
import errno
import logging
import os
import struct
import threading
from pathlib import Path

import numpy as np
from isal.isal_zlib import crc32  # zlib's CRC-32 (same values), about 10x faster: ISA-L

from robot_sql.protocol import MAX_FRAME_BYTES, Message, ProtocolError, check_transitions, decode
from robot_sql.replay import ReplayBuffer

MAGIC = b"RSQ1"
HEADER = struct.Struct("<4sII")
SEGMENT_BYTES = 256 * 1024 * 1024
IOV_RECORDS = 500  # records per writev: two buffers each, under the usual IOV_MAX of 1024

log = logging.getLogger(__name__)


class SequenceSet:
    """Positive integers as sorted, disjoint, non-adjacent intervals [start, end]. An actor numbers
    its batches 1, 2, 3, ... and they arrive nearly in order, so a session's millions of batches
    take a few intervals (one more per gap, e.g. batches the actor dropped) instead of a set entry each."""

    __slots__ = ("starts", "ends")

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __contains__(self, n: int) -> bool:
        i = bisect.bisect_right(self.starts, n) - 1
        return i >= 0 and n <= self.ends[i]

    def add(self, n: int) -> None:
        i = bisect.bisect_right(self.starts, n) - 1  # the interval starting at or before n
        if i >= 0 and n <= self.ends[i]:
            return
        extends_left = i >= 0 and self.ends[i] == n - 1
        extends_right = i + 1 < len(self.starts) and self.starts[i + 1] == n + 1
        if extends_left and extends_right:  # n closes the gap between two intervals
            self.ends[i] = self.ends.pop(i + 1)
            del self.starts[i + 1]
        elif extends_left:
            self.ends[i] = n
        elif extends_right:
            self.starts[i + 1] = n
        else:
            self.starts.insert(i + 1, n)
            self.ends.insert(i + 1, n)

    def __iter__(self):
        for start, end in zip(self.starts, self.ends):
            yield from range(start, end + 1)


class ReplayStore:
    def __init__(self, folder: str | Path, obs_dim: int, act_dim: int, capacity: int,
                 max_batch_rows: int = 4096, segment_bytes: int = SEGMENT_BYTES, max_abs_value: float | None = None,
                 max_frame_bytes: int = MAX_FRAME_BYTES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.obs_dim, self.act_dim, self.max_batch_rows, self.segment_bytes = obs_dim, act_dim, max_batch_rows, segment_bytes
        self.max_abs_value = max_abs_value
        self.buffer = ReplayBuffer(obs_dim, act_dim, capacity)
        self.buffer.rows.fill(0.0)  # take the memory now: no page faults while ingesting, no late OOM
        self.seen: dict[str, SequenceSet] = {}  # session -> sequence numbers stored
        self.transitions_total = 0  # ever stored, including those the ring buffer has dropped
        self.skipped = 0  # transitions in the log beyond max_abs_value, left out on reading it back
        self.damage: list[dict] = []  # damaged stretches of the log skipped on reading it back: segment, offset, bytes
        self.max_record_bytes = max(MAX_FRAME_BYTES, max_frame_bytes)  # a longer length field is damage
        self.log_bytes = 0  # the log's size on disk, records kept for the next flush included
        self.lock = threading.Lock()  # buffer writes (receiving thread) vs sampling (training thread)
        self.appended = self.durable = 0  # log records written / fsynced since this store opened
        self.durable_signal = os.eventfd(0, os.EFD_NONBLOCK)  # readable once `durable` has grown
        self._kept: list = []  # records appended but not yet written: header, frame, header, frame, ...
        self._wake = threading.Condition()  # guards appended and durable; wakes the store's thread
        self._fd_lock = threading.Lock()  # an fsync vs a segment change
        self._closing = False
        self.failure: OSError | None = None  # why the store's thread stopped (then nothing more becomes durable)
        segments = sorted(self.folder.glob("segment-*.log"))
        for segment in segments:
            self._read_segment(segment, is_last=segment == segments[-1])
        self._segment_index = int(segments[-1].stem.split("-")[1]) if segments else 0
        self._open_segment()
        self._committer = threading.Thread(target=self._commit_groups, name="replay-commit", daemon=True)
        self._committer.start()

    def _open_segment(self) -> None:
        path = self.folder / f"segment-{self._segment_index:06d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._segment_size = self._synced_size = os.fstat(self._fd).st_size
        folder = os.open(self.folder, os.O_RDONLY)  # make a new file's name durable too
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def _read_segment(self, path: Path, is_last: bool) -> None:
        """Read one segment back. A damaged record (a flipped bit, a torn write) loses only itself: reading
        resumes at the next valid record. Damage with nothing valid after it in the last segment is a torn
        tail, the one write a crash can leave half done: it is copied aside, then cut off so appends go on."""
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            length = self._record_length_at(data, offset)
            if length is None:
                resume = self._next_record(data, offset + 1)
                if resume is None:
                    break
                self._damaged(path, offset, resume - offset)
                offset = resume
                continue
            payload = memoryview(data)[offset + HEADER.size: offset + HEADER.size + length]
            try:
                message = decode(payload, {"transitions"})
                check_transitions(message.body, self.obs_dim, self.act_dim, self.max_batch_rows, self.max_abs_value)
            except ProtocolError as error:
                if error.kind != "out_of_range":
                    raise RuntimeError(f"{path} holds a record this learner cannot use ({error}); was the run made "
                                       "with another environment, or by another version of robot-sql?") from None
                self.skipped += len(message.body["rows"])
            else:
                self._remember(message)
            offset += HEADER.size + length
        if offset < len(data):
            self._damaged(path, offset, len(data) - offset)
            if is_last:
                aside = path.with_name(f"{path.stem}.torn-at-{offset}")
                aside.write_bytes(data[offset:])
                with open(path, "r+b") as file:
                    file.truncate(offset)
                    os.fsync(file.fileno())
                log.warning("replay store: moved a torn tail (%d bytes) of %s to %s", len(data) - offset, path, aside.name)
        self.log_bytes += offset if is_last else len(data)

    def _record_length_at(self, data: bytes, offset: int) -> int | None:
        """The payload length of the intact record at `offset`, None if there is none there."""
        if len(data) - offset < HEADER.size:
            return None
        magic, length, checksum = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if magic != MAGIC or length > self.max_record_bytes or end > len(data):
            return None
        return length if crc32(memoryview(data)[offset + HEADER.size: end]) == checksum else None

    def _next_record(self, data: bytes, start: int) -> int | None:
        offset = data.find(MAGIC, start)
        while offset != -1 and self._record_length_at(data, offset) is None:
            offset = data.find(MAGIC, offset + 1)
        return None if offset == -1 else offset

    def _damaged(self, path: Path, offset: int, size: int) -> None:
        self.damage.append({"segment": path.name, "offset": offset, "bytes": size})
        log.error("replay store: %s is damaged at byte %d: %d bytes skipped (the record(s) there are lost)",
                  path, offset, size)

    def _remember(self, message: Message) -> int:
        rows = message.body["rows"]
        with self.lock:
            self.buffer.add_rows(rows)
        self.seen.setdefault(message.body["session"], SequenceSet()).add(message.body["seq"])
        self.transitions_total += len(rows)
        return len(rows)

    def contains(self, session: str, seq: int) -> bool:
        return seq in self.seen.get(session, ())

    def append(self, message: Message, frame: bytes | memoryview) -> int:
        """Store a transitions message that `check_transitions` has passed: its rows go into the
        buffer now, its record to the log at the next `flush`. Returns the rows added, 0 for a
        duplicate. The frame must not change afterwards."""
        if self.contains(message.body["session"], message.body["seq"]):
            return 0
        rows = self._remember(message)
        self._kept += [HEADER.pack(MAGIC, len(frame), crc32(frame)), frame]
        self.log_bytes += HEADER.size + len(frame)
        return rows

    def flush(self) -> None:
        """Write the records kept by `append`; they are durable once `durable` reaches `appended`
        as of this return (soon, or at once with `sync`). Call it once per batch of appends."""
        if not self._kept:
            return
        batch, batch_bytes = [], 0
        for header, frame in zip(self._kept[::2], self._kept[1::2]):
            if batch and (self._segment_size + batch_bytes >= self.segment_bytes or len(batch) == 2 * IOV_RECORDS):
                self._writev(batch, batch_bytes)
                batch, batch_bytes = [], 0
            if self._segment_size >= self.segment_bytes:
                with self._fd_lock:
                    self._sync()
                    os.close(self._fd)
                    self._segment_index += 1
                    self._open_segment()
            batch += [header, frame]
            batch_bytes += len(header) + len(frame)
        self._writev(batch, batch_bytes)
        with self._wake:
            self.appended += len(self._kept) // 2
            self._wake.notify()
        self._kept = []

    def _writev(self, parts: list, expected: int) -> None:
        written = os.writev(self._fd, parts)
        if written != expected:  # a short write (disk full): what follows would be torn
            raise OSError(errno.ENOSPC, f"replay log: wrote {written} of {expected} bytes")
        self._segment_size += written

    def _commit_groups(self) -> None:
        """Group commit: each fsync covers every record written before it began."""
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closing or self.appended > self.durable)
                if self.appended == self.durable:  # closing, and everything written is on disk
                    return
                covered = self.appended
            try:
                with self._fd_lock:
                    self._sync()
            except OSError as error:  # a failing disk: the learner sees `failure` and stops, loudly
                self.failure = error
                with self._wake:
                    self._wake.notify_all()
                os.eventfd_write(self.durable_signal, 1)
                return
            with self._wake:
                self.durable = covered
                self._wake.notify_all()
            os.eventfd_write(self.durable_signal, 1)

    def _sync(self) -> None:
        size = self._segment_size  # what is written now; the fsync covers at least that
        os.fdatasync(self._fd)
        # never read again: hand the pages back, so the next writes reuse them (see the module docstring)
        os.posix_fadvise(self._fd, self._synced_size, size - self._synced_size, os.POSIX_FADV_DONTNEED)
        self._synced_size = size

    def sync(self) -> None:
        """Write what is kept and wait until everything appended so far is durable (raises if the disk failed)."""
        self.flush()
        with self._wake:
            target = self.appended
            self._wake.wait_for(lambda: self.durable >= target or self.failure is not None)
        if self.durable < target:
            raise OSError(f"replay store: records {self.durable + 1}-{target} are not durable") from self.failure

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        with self.lock:
            return self.buffer.sample(batch_size, rng)

    def __len__(self) -> int:
        return len(self.buffer)

    def close(self) -> None:
        """Write and fsync what is kept, then stop the store's thread."""
        self.flush()
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._committer.join()
        os.close(self._fd)
        os.close(self.durable_signal)
