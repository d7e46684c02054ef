"""The soak benchmark, short (the CI version of benchmarks/soak.py's 10-minute run)."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_short_soak_keeps_every_healthy_frame_cuts_off_abusers_and_holds_memory(tmp_path):
    """20 s against `f3stream serve` with its defaults: 10 churning streams (3-8 s each, a
    third vanish mid-stream), a ping flooder and a non-reader beside them. Healthy streams
    lose no frame and see no error; every flood connection is aborted and the non-reader is
    closed as a slow reader (the only error the server counts, once per cut-off); the
    server's RSS does not grow after warm-up."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "soak.json"
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "soak.py"),
                          "--clients", "10", "--duration", "20", "--min-session", "3",
                          "--max-session", "8", "--abrupt", "0.33", "--flood-pause", "2",
                          "--nonreader-speed", "10", "--warmup", "8", "--out", str(out)],
                         capture_output=True, text=True, timeout=400, cwd=root,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    healthy = r["healthy"]
    assert healthy["sessions"] >= 5 and r["abrupt"]["sessions"] >= 1, r["abrupt"]
    assert healthy["frames_lost"] == 0 and healthy["frames_expected"] > 1000, healthy
    assert healthy["error_count"] == 0 and r["connect_failures"] == [], healthy["errors"]
    # one latency per frame message (a late round's message carries several frames)
    assert healthy["latency_ms"]["messages"] > 0 and healthy["latency_ms"]["p99"] > 0

    flooder, nonreader = r["abusers"]
    assert flooder["role"] == "flooder" and nonreader["role"] == "nonreader"
    for a in (flooder, nonreader):
        ends = [c["end"] for c in a["connections"]]
        # every connection but the last was cut off by the server; the last may still be open
        assert all(e.startswith("cut off") for e in ends[:-1]), ends
        assert ends[-1].startswith("cut off") or ends[-1] == "still open at the end", ends
    assert flooder["cut_off"] >= 3, flooder  # aborted within a fraction of a second
    assert all(c["after_s"] < 2 for c in flooder["connections"][:-1]), flooder
    assert nonreader["cut_off"] >= 1, nonreader
    # the server's side: each cut-off is one slow_reader (4008 for the non-reader; the flood
    # is aborted, counted under the same code), and nothing else went wrong
    errors = r["server_errors"]
    assert set(errors) == {"slow_reader"}, errors
    cut = flooder["cut_off"] + nonreader["cut_off"]
    assert cut <= errors["slow_reader"] <= cut + 2, (errors, cut)

    rss = r["server_rss_after_warmup"]
    assert rss["samples"] >= 10 and abs(rss["growth_mib"]) < 25, rss
    cond = r["conditions"]
    assert cond["cpu_cores_used"]["server"] > 0 and len(cond["load_average_before"]) == 3
