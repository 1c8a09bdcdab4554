from gateway.progress import DrainProgress


def test_drain_progress_rate_and_eta():
    p = DrainProgress(first_seq=1000, target_seq=11_000, started_s=100.0)
    assert p.total == 10_000 and p.done == 0 and p.rate(100.05) is None
    p.done_seq = 3500
    assert p.done == 2500
    assert p.rate(102.0) == 1250.0
    assert p.eta_s(102.0) == 6.0
    assert "2500/10000 samples, 1,250 samples/s, ETA 6 s" == p.describe(102.0)
    p.done_seq = 20_000       # live samples after the drain do not count past the target
    assert p.finished and p.done == 10_000
