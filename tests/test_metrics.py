import math

import pytest

from perfkit.metrics import point_metrics, summary, truncate_e2e_s


def test_metrics_against_hand_computed_values():
    # B=4, I=100, O=11; three repeats. Medians: ttft 0.2 s, e2e 1.2 s; per-repeat (e2e-ttft)/(O-1):
    # (1.1-0.1)/10 = 0.100, (1.2-0.2)/10 = 0.100, (1.5-0.3)/10 = 0.120 -> median 0.100 s.
    m = point_metrics(4, 100, 11, ttft_s=[0.1, 0.2, 0.3], e2e_s=[1.1, 1.2, 1.5])
    assert m["ttft_ms"] == pytest.approx(200.0)
    assert m["e2e_ms"] == pytest.approx(1200.0)
    assert m["tpot_ms"] == pytest.approx(100.0)
    assert m["prefill_tok_s"] == pytest.approx(4 * 100 / 0.2)  # 2000
    assert m["output_tok_s"] == pytest.approx(4 * 11 / 1.2)  # B*O/e2e
    assert m["decode_tok_s"] == pytest.approx(4 / 0.1)  # B*(O-1)/(e2e-ttft) = 40
    assert m["total_tok_s"] == pytest.approx(4 * 111 / 1.2)
    assert m["repeats"] == 3
    assert m["ttft_iqr_ms"] == pytest.approx(100.0)  # p75 250 - p25 150
    assert m["noisy"] is True  # IQR/median = 0.5


def test_single_output_token_has_no_decode_phase():
    m = point_metrics(1, 10, 1, [0.01, 0.01], [0.01, 0.01])
    assert math.isnan(m["tpot_ms"]) and math.isnan(m["decode_tok_s"])
    assert m["output_tok_s"] == pytest.approx(100.0)


def test_summary_quantiles():
    s = summary(list(range(1, 12)))  # 1..11
    assert (s["median"], s["p10"], s["p90"], s["iqr"], s["n"]) == (6.0, 2.0, 10.0, 5.0, 11)
    assert summary([])["n"] == 0 and math.isnan(summary([])["median"])


def test_truncated_e2e_is_ttft_plus_first_steps():
    assert truncate_e2e_s([1.0, 2.0], [[0.1, 0.2, 0.4], [0.5, 0.5, 0.5]], 3) == pytest.approx([1.3, 3.0])
    with pytest.raises(ValueError):
        truncate_e2e_s([1.0], [[0.1]], 5)
