"""`slotwise bench booking`, run small: the figures it prints come from what happened (every
hold confirmed, each acknowledged booking in the database, none overlapping), and its
baseline ran on both sides of the HTTP run. Its speed is the benchmark's business, not this
test's."""

from __future__ import annotations

from simulation.bench_booking import run


def test_a_small_booking_benchmark_reports_what_happened() -> None:
    result = run(bookings=60, concurrency=4, staff=3, workers=1, history=50)
    assert (result["history_per_staff"], result["history_in_db"]) == (50, 50 * 3)
    assert result["outcomes"] == {"201": 60}
    assert result["confirmed"] == result["acknowledged_in_db"] == 60
    assert result["double_bookings"] == 0  # over the history's rows too
    before, after = result["raw_runs_per_s"]
    assert before > 0 and after > 0
    # The baseline is the combined rate of its two runs (a harmonic mean of their rates).
    assert abs(result["raw_lock_insert_per_s"] - 2 / (1 / before + 1 / after)) < 1.0
    assert abs(result["ratio"] - result["confirmed_per_s"] / result["raw_lock_insert_per_s"]) < 0.01
    assert result["availability_p50_ms"] > 0
