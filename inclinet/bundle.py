"""The model bundle: its format (one version number), writing it (evaluate) and loading it (predict, the service).

A bundle is a folder: ``manifest.json`` (written last, so a bundle with a manifest is
complete) and ``<member>.keras`` for every member. docs/architecture.md lists the manifest
keys. Stages import this module; none imports another stage for the bundle.
"""

import hashlib
import json
import shutil
import statistics
from pathlib import Path

import numpy as np

from inclinet import models as inclinet_models
from inclinet import naming, reliability
from inclinet._helpers import versions
from inclinet.errors import InputError
from inclinet.io import atomic_path, atomic_write_json

#: 2: members trained on normalised images; peer calibration, reject temperatures, OOD reference.
BUNDLE_FORMAT_VERSION = 2
MANIFEST = Path(naming.bundle_manifest()).name
FAMILY_GROUPS = {"model4": "Group_0", "model5": "Group_1", "model6": "Group_2"}
GROUP_ORDER = ("Group_0", "Group_1", "Group_2")
#: Decimals of the reported rejection likelihoods (percent) and member spread (deg).
REPORTED_DECIMALS = 2


def summary(values):
    """Mean, median and population standard deviation of ``values`` (the API's summary)."""
    values = [float(v) for v in values]
    if not values:
        return {"mean": None, "median": None, "stdev": None}
    return {
        "mean": statistics.fmean(values),
        "median": float(statistics.median(values)),
        "stdev": statistics.pstdev(values),
    }


def write_bundle(
    bundle_dir,
    members,
    *,
    input_size,
    metrics=None,
    seed=0,
    views=8,
    peer_calibration=None,
    reject_temperatures=None,
    ood_reference=None,
):
    """Copy every member to ``bundle_dir/<name>.keras`` and write ``manifest.json`` last.

    ``members`` are records with ``name``, ``model``, ``task``, ``subset`` and ``path``
    (see :func:`describe_members`). The manifest also carries the classical peer's
    calibration (:class:`inclinet.peer.PeerCalibration`), the reject members' temperatures
    and the out-of-distribution reference (:func:`inclinet.reliability.reference_ranges`),
    each ``null`` when not given. Returns the manifest.
    """
    bundle_dir = Path(bundle_dir)
    entries = []
    for member in members:
        file_name = Path(naming.bundle_member(member["name"])).name
        with atomic_path(bundle_dir / file_name) as tmp:
            shutil.copyfile(member["path"], tmp)
        entries.append(
            {
                "name": member["name"],
                "file": file_name,
                "model": member["model"],
                "task": member["task"],
                "subset": member["subset"],
            }
        )
    groups = {}
    for entry in entries:
        group = "binary" if entry["task"] == "binary" else FAMILY_GROUPS[entry["model"]]
        groups.setdefault(group, []).append(entry["name"])
    calibration, summary_metrics = {}, {}
    if metrics:
        for column, per_band in metrics["regression"].items():
            overall = per_band["all"]
            if "fit" in overall:
                calibration[column] = overall["fit"]
            summary_metrics[column] = {k: overall.get(k) for k in ("n", "rms", "mae", "bias", "rms_corrected")}
        for column, per_band in metrics.get("binary", {}).items():
            keys = ("n", "precision", "recall", "accuracy", "auc")
            summary_metrics[column] = {k: per_band["all"].get(k) for k in keys}
    manifest = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "members": entries,
        "groups": {key: groups[key] for key in ("Group_0", "Group_1", "Group_2", "binary") if key in groups},
        "input_size": int(input_size),
        "pixel_scaling": inclinet_models.PIXEL_SCALING,
        "label_scaling": inclinet_models.LABEL_SCALING,
        "calibration": {
            "formula": "i_pc = (i_p + b) / (1 - m), fitted on |true - predicted| < 10; reported, not applied",
            "fits": calibration,
        },
        "metrics": summary_metrics,
        "versions": versions(),
        "seed": int(seed),
        "views": int(views),
        "normalisation": "inclinet.normalise.normalise_image",
        "peer": peer_calibration.as_dict() if peer_calibration is not None else None,
        "reject_temperatures": dict(reject_temperatures or {}),
        "out_of_distribution": ood_reference,
    }
    atomic_write_json(bundle_dir / MANIFEST, manifest)
    return manifest


def identity(directory, *, length=12):
    """The bundle's identity: the first ``length`` hex digits of the SHA-256 of its manifest and members.

    Two bundles with the same identity hold the same bytes; a retrained or re-evaluated
    bundle gets another. The survey workflow names its catalog by it and refuses to merge
    chunks measured with different bundles.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = [MANIFEST] + sorted(member["file"] for member in manifest["members"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{manifest_path}: not a readable bundle manifest ({exc}); give a bundle made by inclinet-evaluate"
        ) from None
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        try:
            with open(directory / name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise InputError(f"{directory / name}: bundle file not readable ({exc}); rebuild the bundle") from None
    return digest.hexdigest()[:length]


def files(directory):
    """Names of the bundle's files, manifest first (what a workflow job must be given)."""
    manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    return [MANIFEST] + [member["file"] for member in manifest["members"]]


class Bundle:
    """A loaded model bundle: its manifest and Keras models (loaded on first use)."""

    def __init__(self, directory):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise InputError(f"{manifest_path}: bundle manifest not found; run inclinet-evaluate to build the bundle")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{manifest_path}: unreadable manifest ({exc}); rebuild the bundle") from None
        missing = [k for k in ("format_version", "members", "groups", "input_size", "views") if k not in self.manifest]
        if missing:
            raise InputError(f"{manifest_path}: manifest lacks {', '.join(missing)}; rebuild the bundle")
        if self.manifest["format_version"] != BUNDLE_FORMAT_VERSION:
            raise InputError(
                f"{manifest_path}: bundle format {self.manifest['format_version']} is not {BUNDLE_FORMAT_VERSION}; "
                "rebuild the bundle with this version of inclinet"
            )
        self.input_size = int(self.manifest["input_size"])
        self.views = int(self.manifest["views"])
        self.members = {m["name"]: m for m in self.manifest["members"]}
        for member in self.members.values():
            if not (self.directory / member["file"]).is_file():
                raise InputError(f"{self.directory / member['file']}: bundle member missing; rebuild the bundle")
        self._networks = {}

    def network(self, name):
        if name not in self._networks:
            keras = inclinet_models.import_keras()
            path = self.directory / self.members[name]["file"]
            try:
                self._networks[name] = keras.models.load_model(path, compile=False)
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: not a readable Keras model ({exc}); rebuild the bundle") from None
        return self._networks[name]

    def regression_groups(self):
        groups = self.manifest["groups"]
        return [(group, groups[group]) for group in GROUP_ORDER if groups.get(group)]

    def binary_members(self):
        return list(self.manifest["groups"].get("binary", []))

    def predict(self, images):
        """API answers (without status/filename) for uint8 images (N, S, S, 3) at the bundle's size."""
        images = np.asarray(images)
        outputs = {}
        for _, names in self.regression_groups():
            for name in names:
                outputs[name] = self._run(name, images)[:, 0]
        temperatures = self.manifest.get("reject_temperatures") or {}
        for name in self.binary_members():
            # The calibrated P(reject): the member's temperature from evaluation (1 = as trained).
            outputs[name] = reliability.apply_temperature(self._run(name, images)[:, 1], temperatures.get(name, 1.0))
        spreads = np.std(
            np.stack(
                [
                    inclinet_models.target_to_inclination(outputs[name])
                    for _, names in self.regression_groups()
                    for name in names
                ]
            ),
            axis=0,
        )
        peer_values = self._peer(images)
        answers = []
        for index in range(len(images)):
            inclinations = {}
            values = []
            for group, names in self.regression_groups():
                inclinations[group] = {}
                for name in names:
                    degrees = float(np.round(inclinet_models.target_to_inclination(outputs[name][index])))
                    inclinations[group][name] = degrees
                    values.append(degrees)
            inclinations["summary"] = summary(values)
            # Float32 outputs can differ in their last place with the batch they ran in: rounding
            # what is reported (like the degrees above) keeps answers independent of batching.
            answer = {"inclinations": inclinations, "member_spread": _reported(spreads[index])}
            if peer_values is not None:
                answer["peer"] = {"method": peer_values[0], "inclination": _rounded(peer_values[1][index])}
            if self.binary_members():
                rejection = {name: _reported(100.0 * outputs[name][index]) for name in self.binary_members()}
                rejection["summary"] = summary(list(rejection.values()))
                answer["rejection_likelihood"] = rejection
            answers.append(answer)
        return answers

    def _peer(self, images):
        """``(method, inclinations)`` of the bundle's calibrated classical peer, or None without one."""
        calibration = self.manifest.get("peer")
        if not calibration:
            return None
        from inclinet import peer

        fitted = peer.PeerCalibration.from_dict(calibration)
        method = fitted.best
        return method, fitted.methods[method].inclination(peer.measure(images, methods=(method,))[method])

    def _run(self, name, images):
        mean, _ = inclinet_models.predict_views(self.network(name), images, self.views)
        return mean


def _reported(value):
    """A float32 model output as reported: rounded to :data:`REPORTED_DECIMALS`."""
    return round(float(value), REPORTED_DECIMALS)


def _rounded(value):
    return None if not np.isfinite(value) else float(np.round(value))
