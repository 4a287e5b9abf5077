"""inclinet.reliability: temperature calibration, reliability tables, out-of-distribution warnings."""

import numpy as np
import pytest

from inclinet import reliability
from inclinet.normalise import STATISTICS


def overconfident(n, temperature, seed=0):
    """Labels drawn from true probabilities, and the probabilities an overconfident model reports."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    reported = 1 / (1 + np.exp(-logits * temperature))
    return reported, labels


def test_fit_temperature_recovers_the_overconfidence():
    reported, labels = overconfident(4000, 3.0)
    temperature = reliability.fit_temperature(reported, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    raw_rows, raw_ece = reliability.reliability_table(reported, labels)
    _, calibrated_ece = reliability.reliability_table(reliability.apply_temperature(reported, temperature), labels)
    assert calibrated_ece < 0.5 * raw_ece
    assert sum(row[2] for row in raw_rows) == len(labels)


def test_cross_fit_calibrates_each_half_on_the_other():
    reported, labels = overconfident(2000, 2.0, seed=1)
    groups = np.arange(len(labels))
    calibrated = reliability.cross_fitted(reported, labels, groups)
    _, before = reliability.reliability_table(reported, labels)
    _, after = reliability.reliability_table(calibrated, labels)
    assert after < before
    # One class only: nothing to fit, the temperature stays 1.
    assert reliability.fit_temperature(reported[:50], np.zeros(50)) == 1.0


def test_warnings_name_what_is_unusual():
    info = {"detected": True, "zoom_limited": False, "fill_fraction": 0.0, "offset": 0.01, "snr": 50.0}
    reference = {"statistics": {name: [0.0, 1.0] for name in STATISTICS}, "max_member_spread": 3.0}
    inside = np.full(len(STATISTICS), 0.5)
    assert reliability.warnings_for(info, inside, 1.0, reference) == []
    outside = inside.copy()
    outside[STATISTICS.index("edge_flux")] = 4.0
    found = reliability.warnings_for({**info, "snr": 2.0}, outside, 6.0, reference)
    assert any("edge flux" in w for w in found)
    assert any("barely above" in w for w in found)
    assert any("disagree" in w for w in found)
    assert reliability.warnings_for({**info, "detected": False}, inside, 1.0, None) == [
        "no galaxy stands out from the sky"
    ]
