"""`robot-sql bench transport` at a toy size: a real learner process, real sockets, the report's fields."""
import json
import subprocess
import sys
from pathlib import Path

ROBOT_SQL = str(Path(sys.executable).with_name("robot-sql"))


def test_bench_transport_small_run_reports_ingest_push_and_memory(tmp_path):
    out = tmp_path / "transport.json"
    run = subprocess.run([ROBOT_SQL, "bench", "transport", "--out", str(out), "--messages", "40", "--rows", "64",
                          "--window", "4", "--window", "16", "--repeats", "1", "--pushes", "5",
                          "--memory-transitions", "6400"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    ingest = report["ingest"]
    assert ingest["windows"] == [4, 16] and ingest["rows_per_message"] == 64
    for window in ("window_4", "window_16"):
        for actors in ("1_actors", "4_actors"):
            case = ingest[window][actors]
            # every transition acknowledged by the learner (acked = fsynced), and the same frames through raw ZeroMQ
            assert case["learner_transitions_per_s"] > 0 and case["raw_zmq_transitions_per_s"] > 0
            assert case["ratio"] == round(case["learner_transitions_per_s"] / case["raw_zmq_transitions_per_s"], 3)
    pushes = report["weight_push"]["networks"]
    assert set(pushes) == {"multigoal-128x128", "sawyer-128x128", "sawyer-256x256", "sawyer-512x512"}
    assert all(0 < network["p50_ms"] <= network["p99_ms"] for network in pushes.values())
    memory = report["replay_memory"]
    assert memory["transitions"] == 6400
    # 55 float32 per Sawyer transition: 220 B, i.e. 210 MiB per million, on disk with the frames' few bytes of framing
    assert 205 < memory["disk_mib_per_million"] < 230
