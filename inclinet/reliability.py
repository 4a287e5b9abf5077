"""How far to trust a prediction: calibrated rejection likelihoods and out-of-distribution warnings.

* **Calibration of the reject models.** A binary member's P(reject) is rescaled by one
  temperature ``T`` on the logit, ``p' = sigmoid(logit(p) / T)``, fitted by maximum
  likelihood on labelled galaxies (:func:`fit_temperature`). Evaluation reports the
  reliability of the calibrated probabilities with a 2-fold cross-fit (each half is
  calibrated on the other), and the bundle carries the temperature fitted on all of them.
* **Out-of-distribution warnings** (:func:`warnings_for`), from three sources:
  the normaliser's measurements of the raw image (no galaxy found, the zoom at its limit,
  most of the frame filled, a galaxy far off centre or barely above the noise: fixed
  rules, :data:`RAW_RULES`); the statistics of the normalised image
  (:func:`inclinet.normalise.image_statistics`) outside the range of the evaluation's test
  images (their 0.5-99.5 percentiles widened by a quarter of their span); and the spread of
  the regression members above the 99th percentile of their spread on the test images.
"""

import math

import numpy as np

from inclinet.normalise import STATISTICS, image_statistics

#: Fixed rules on the normaliser's measurements of a raw image: (name, test, message).
RAW_RULES = (
    ("detected", lambda info: not info["detected"], "no galaxy stands out from the sky"),
    ("zoom", lambda info: info["zoom_limited"], "the galaxy is much smaller or larger in the frame than usual"),
    ("fill", lambda info: info["fill_fraction"] > 0.35, "more than a third of the frame is blank fill"),
    ("offset", lambda info: info["offset"] > 0.25, "the galaxy is far from the centre of the frame"),
    ("snr", lambda info: info["detected"] and info["snr"] < 4.0, "the galaxy is barely above the sky noise"),
)
_EPSILON = 1e-6


def _logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), _EPSILON, 1.0 - _EPSILON)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probabilities, temperature):
    """``sigmoid(logit(p) / temperature)``; ``temperature`` 1 leaves ``p`` unchanged."""
    return 1.0 / (1.0 + np.exp(-_logit(probabilities) / float(temperature)))


def fit_temperature(probabilities, labels):
    """The temperature (0.05-20) minimising the negative log-likelihood of ``labels`` (0/1)."""
    from scipy.optimize import minimize_scalar

    logits = _logit(probabilities)
    labels = np.asarray(labels, dtype=np.float64)
    if len(labels) < 4 or labels.min() == labels.max():
        return 1.0

    def loss(log_temperature):
        scaled = logits / math.exp(log_temperature)
        # log(1 + exp(-|z|)) + max(z, 0) - y z: the stable binary cross-entropy on logits.
        return float(np.mean(np.logaddexp(0.0, scaled) - labels * scaled))

    found = minimize_scalar(loss, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(found.x))


def cross_fitted(probabilities, labels, groups):
    """Probabilities calibrated with a 2-fold cross-fit: rows of each parity of ``groups`` use the other's fit."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    fold = (np.asarray(groups, dtype=np.int64) % 2).astype(bool)
    out = np.empty_like(probabilities)
    for part in (False, True):
        temperature = fit_temperature(probabilities[fold != part], labels[fold != part])
        out[fold == part] = apply_temperature(probabilities[fold == part], temperature)
    return out


def reliability_table(probabilities, labels, n_bins=10):
    """Per bin of predicted probability: ``(low, high, count, mean predicted, observed rate)``; and the ECE.

    Empty bins have ``None`` for the mean and the rate.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (probabilities >= low) & ((probabilities < high) if high < 1.0 else (probabilities <= high))
        count = int(inside.sum())
        if count:
            predicted, observed = float(probabilities[inside].mean()), float(labels[inside].mean())
            ece += count / max(len(labels), 1) * abs(predicted - observed)
        else:
            predicted = observed = None
        rows.append((float(low), float(high), count, predicted, observed))
    return rows, float(ece)


def reference_ranges(normalised_images, member_spread):
    """The bundle's out-of-distribution reference from the test images and the regression members' spread."""
    stats = image_statistics(normalised_images)
    ranges = {}
    for column, name in enumerate(STATISTICS):
        values = stats[:, column][np.isfinite(stats[:, column])]
        if not len(values):
            continue
        low, high = np.percentile(values, [0.5, 99.5])
        margin = 0.25 * (high - low)
        ranges[name] = [float(low - margin), float(high + margin)]
    spread = np.asarray(member_spread, dtype=np.float64)
    spread = spread[np.isfinite(spread)]
    return {
        "statistics": ranges,
        "max_member_spread": float(np.percentile(spread, 99.0)) if len(spread) else None,
        "rule": "0.5-99.5 percentiles of the test images widened by 25% of their span; "
        "99th percentile of the regression members' standard deviation",
    }


def warnings_for(info, statistics, member_spread, reference):
    """Out-of-distribution warnings (list of short sentences) for one image.

    ``info`` is the normaliser's :class:`~inclinet.normalise.NormalisationInfo` as a dict,
    ``statistics`` the row of :func:`image_statistics` of the normalised image,
    ``member_spread`` the standard deviation of the regression members (deg), ``reference``
    the bundle's :func:`reference_ranges` (or None).
    """
    found = [message for _, test, message in RAW_RULES if test(info)]
    if reference:
        for column, name in enumerate(STATISTICS):
            limits = reference["statistics"].get(name)
            value = float(statistics[column])
            if limits and not limits[0] <= value <= limits[1]:
                found.append(f"{name.replace('_', ' ')} {value:.3g} {_RANGE_TEXT} {limits[0]:.3g}..{limits[1]:.3g}")
        limit = reference.get("max_member_spread")
        if limit is not None and member_spread is not None and member_spread > limit:
            found.append(f"{_SPREAD_TEXT}: spread {member_spread:.1f} deg > {limit:.1f} deg")
    return found


_RANGE_TEXT = "is outside the training range"
_SPREAD_TEXT = "the models disagree"


def warning_kind(message):
    """The kind of a :func:`warnings_for` message: a raw rule's name, ``range:<statistic>``, ``spread`` or ``other``."""
    for name, _, text in RAW_RULES:
        if message == text:
            return name
    for statistic in STATISTICS:
        if message.startswith(statistic.replace("_", " ") + " ") and _RANGE_TEXT in message:
            return f"range:{statistic}"
    if message.startswith(_SPREAD_TEXT):
        return "spread"
    return "other"
