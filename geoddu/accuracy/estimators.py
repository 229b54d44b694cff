"""Accuracy and area estimators for a class map and a sample of reference labels.

Pure numpy. The stratified estimators are those of Olofsson et al. (2014), "Good practices for
estimating area and assessing accuracy of land change", Remote Sensing of Environment 148,
42-57 (eqs. 2-11; the producer's accuracy variance of Olofsson et al. 2013, eq. 7, as in
Stehman 2014), for a stratified random sample whose strata are the map classes. ``simple``
is a simple random (or systematic) sample: the error matrix in area proportions is the sample
counts over the sample size. Quantity and allocation disagreement are Pontius & Millones
(2011), reported instead of kappa.

The error matrix is always rows = map class, columns = reference class, both in the same class
order; the mapped area of class i is the area of stratum i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DESIGNS", "Z95", "Estimates", "estimate"]

DESIGNS = ("stratified", "simple")
# The normal quantile of a two-sided 95% interval, the one Olofsson et al. use (1.96).
Z95 = 1.96


@dataclass
class Estimates:
    """Everything estimated from one error matrix. Areas are in the unit of ``mapped_area``;
    a NaN is a figure the sample cannot give (a class never mapped in the sample, a stratum
    of one sample unit for a variance)."""

    classes: list[str]
    design: str
    counts: np.ndarray  # n_ij, sample units (or pixels) mapped i, reference j
    mapped_area: np.ndarray  # A_m,i, the mapped area of each class
    weights: np.ndarray  # W_i = A_m,i / A_tot
    proportions: np.ndarray  # p_ij, the error matrix in proportions of area
    overall: float
    overall_se: float
    users: np.ndarray
    users_se: np.ndarray
    producers: np.ndarray
    producers_se: np.ndarray
    area_proportion: np.ndarray  # p_.j
    area_proportion_se: np.ndarray
    area: np.ndarray  # A_tot p_.j, the error-adjusted area
    area_se: np.ndarray
    f1: np.ndarray
    iou: np.ndarray
    quantity_disagreement: float
    allocation_disagreement: float
    z: float = Z95

    @property
    def total_area(self) -> float:
        return float(self.mapped_area.sum())

    def ci(self, se: Any) -> Any:
        """The half-width of the confidence interval (``z`` standard errors)."""
        return self.z * se

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-class figures as lists in :attr:`classes` order, NaN as None."""

        def clean(value: Any) -> Any:
            arr = np.asarray(value, dtype=float)
            out = np.where(np.isfinite(arr), arr, np.nan).tolist()
            if isinstance(out, float):
                return None if out != out else out
            return _nan_to_none(out)

        return {
            "classes": list(self.classes),
            "design": self.design,
            "z": self.z,
            "sample_counts": np.asarray(self.counts).tolist(),
            "mapped_area": clean(self.mapped_area),
            "weights": clean(self.weights),
            "proportions": clean(self.proportions),
            "overall_accuracy": {"estimate": clean(self.overall),
                                 "se": clean(self.overall_se),
                                 "ci": clean(self.ci(self.overall_se))},
            "users_accuracy": {"estimate": clean(self.users), "se": clean(self.users_se),
                               "ci": clean(self.ci(self.users_se))},
            "producers_accuracy": {"estimate": clean(self.producers),
                                   "se": clean(self.producers_se),
                                   "ci": clean(self.ci(self.producers_se))},
            "area_proportion": {"estimate": clean(self.area_proportion),
                                "se": clean(self.area_proportion_se),
                                "ci": clean(self.ci(self.area_proportion_se))},
            "area": {"estimate": clean(self.area), "se": clean(self.area_se),
                     "ci": clean(self.ci(self.area_se))},
            "f1": clean(self.f1),
            "iou": clean(self.iou),
            "quantity_disagreement": clean(self.quantity_disagreement),
            "allocation_disagreement": clean(self.allocation_disagreement),
        }


def _nan_to_none(values: Any) -> Any:
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if values != values else values


def _div(a: Any, b: Any) -> np.ndarray:
    """a / b with NaN (not a warning) where b is 0: an estimate the sample cannot give."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def estimate(
    counts: Any,
    mapped_area: Any,
    *,
    classes: list[str] | None = None,
    design: str = "stratified",
    z: float = Z95,
) -> Estimates:
    """Accuracy and error-adjusted areas from the sample error matrix ``counts`` (rows = map
    class, columns = reference class, square) and the mapped area (or pixel count) of each
    class, ``mapped_area``, in the same order.

    ``design="stratified"``: a stratified random sample with the map classes as strata
    (Olofsson et al. 2014): p_ij = W_i n_ij / n_i. . ``design="simple"``: a simple random or
    systematic sample: p_ij = n_ij / n.
    """
    n = np.asarray(counts, dtype=float)
    area_m = np.asarray(mapped_area, dtype=float)
    if n.ndim != 2 or n.shape[0] != n.shape[1]:
        raise ValueError(f"the error matrix must be square, got shape {n.shape}")
    k = n.shape[0]
    if area_m.shape != (k,):
        raise ValueError(f"{k} classes in the error matrix but {area_m.size} mapped areas")
    if (n < 0).any() or (area_m < 0).any():
        raise ValueError("counts and mapped areas must not be negative")
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r} (one of {', '.join(DESIGNS)})")
    names = list(classes) if classes is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{k} classes in the error matrix but {len(names)} class names")
    total = area_m.sum()
    if total <= 0:
        raise ValueError("the map has no mapped area")
    weights = area_m / total
    n_i = n.sum(axis=1)  # n_i.: sample units in each map class (stratum)
    n_tot = n.sum()
    diag = np.diag(n)

    # Users' accuracy is a within-stratum proportion under both designs (eq. 2's row).
    users = _div(diag, n_i)
    users_se = np.sqrt(_div(users * (1 - users), n_i - 1))

    if design == "stratified":
        # eq. 4: each stratum's row of sample proportions scaled by the stratum's weight.
        row_share = _div(n, n_i[:, None])  # n_ij / n_i.
        proportions = np.where(n_i[:, None] > 0, weights[:, None] * row_share, 0.0)
        # A stratum with map area but no sample unit leaves its area unaccounted for: the
        # estimates then describe the sampled strata only (the caller warns about it).
        col = proportions.sum(axis=0)  # p_.j
        overall = float(np.trace(proportions))
        # eq. 5: V(O) = sum W_i^2 U_i (1 - U_i) / (n_i. - 1)
        overall_var = np.nansum(weights**2 * _div(users * (1 - users), n_i - 1))
        # eq. 10: V(p_.j) = sum_i (W_i p_ij - p_ij^2) / (n_i. - 1)
        term = _div(weights[:, None] * proportions - proportions**2, (n_i - 1)[:, None])
        area_prop_var = np.nansum(term, axis=0)
        producers = _div(np.diag(proportions), col)
        # Olofsson et al. 2013 eq. 7 (2014 eq. 7 as printed, with the estimated
        # N_.j = sum_i N_i. n_ij / n_i.); written with weights, as N cancels.
        n_dot_j = (weights[:, None] * row_share).sum(axis=0)
        first = (weights**2 * (1 - producers) ** 2
                 * _div(users * (1 - users), n_i - 1))
        share = np.nan_to_num(row_share)
        others = weights[:, None] ** 2 * _div(share * (1 - share), (n_i - 1)[:, None])
        others = np.nansum(others, axis=0) - np.nan_to_num(np.diag(others))
        producers_var = _div(first + producers**2 * others, n_dot_j**2)
    else:
        proportions = _div(n, n_tot) if n_tot > 0 else np.zeros_like(n)
        col = proportions.sum(axis=0)
        overall = float(np.trace(proportions))
        overall_var = _div(overall * (1 - overall), n_tot - 1)
        area_prop_var = _div(col * (1 - col), n_tot - 1)
        n_j = n.sum(axis=0)
        producers = _div(diag, n_j)
        producers_var = _div(producers * (1 - producers), n_j - 1)

    row = proportions.sum(axis=1)
    pii = np.diag(proportions)
    f1 = _div(2 * pii, row + col)
    iou = _div(pii, row + col - pii)
    # Pontius & Millones 2011: quantity = half the summed |p_i. - p_.i|; allocation = half the
    # summed 2 min(p_i. - p_ii, p_.i - p_ii). Together they are 1 - overall accuracy.
    quantity = float(np.abs(row - col).sum() / 2)
    allocation = float(np.minimum(row - pii, col - pii).sum())
    area_prop_se = np.sqrt(np.asarray(area_prop_var, dtype=float))
    return Estimates(
        classes=names,
        design=design,
        counts=np.asarray(counts),
        mapped_area=area_m,
        weights=weights,
        proportions=proportions,
        overall=overall,
        overall_se=float(np.sqrt(overall_var)),
        users=users,
        users_se=users_se,
        producers=producers,
        producers_se=np.sqrt(producers_var),
        area_proportion=col,
        area_proportion_se=area_prop_se,
        area=total * col,
        area_se=total * area_prop_se,
        f1=f1,
        iou=iou,
        quantity_disagreement=quantity,
        allocation_disagreement=allocation,
        z=z,
    )
