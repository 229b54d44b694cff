"""How many sample points each stratum (map class) gets: pure arithmetic, no I/O.

Two ways to size the sample, both followed by the same per-class minimum:

* a total ``n`` given by the user;
* Olofsson et al. (2014), "Good practices for estimating area and assessing accuracy of land
  change", Remote Sensing of Environment 148, 42-57, Section 5 (sampling design, sample size): for a
  stratified random sample whose strata are the map classes, the total that gives a chosen
  standard error S(Ô) of the estimated overall accuracy is Cochran's (1977)

      n = ( sum_i W_i S_i / S(Ô) )^2,    S_i = sqrt(U_i (1 - U_i))

  with W_i the mapped proportion of class i and U_i its expected user's accuracy (the
  finite-population term of the exact formula is dropped, as in the paper: a map has far more
  pixels than a sample has points). With the weights of the paper's worked example (W = 0.02,
  0.015, 0.32, 0.645), U = 0.70, 0.60, 0.90, 0.95 (the values we recall it planning with) and
  S(Ô) = 0.01 it gives n = 641; ``tests/accuracy`` checks that and a hand-computed case. R's
  ``sits::sits_sampling_design`` implements the same formula
  (https://search.r-project.org/CRAN/refmans/sits/html/sits_sampling_design.html); the paper's
  own text was not reachable from this project's reference search.

The allocation rule (docs/accuracy.md, "Sampling"):

1. proportional: class i gets n * N_i / N points (N_i its mapped pixels, N all valid pixels);
2. a class whose share is below the minimum M is raised to M (or to all its pixels, when it has
   fewer), and the other classes share what is left, again in proportion to their pixels;
   repeated until no class is below its minimum. If the minimums alone exceed n, every class
   gets its minimum and the total is larger than n;
3. shares are made whole numbers by the largest remainder (Hamilton) method, ties to the lower
   class id, so the total is exactly n (step 2 aside). The arithmetic is in integers: the same
   input gives the same allocation on any machine;
4. a class with fewer pixels than its allocation gets all its pixels (the total then is
   smaller than n: a pixel is never drawn twice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from geoddu.errors import GeodduError

__all__ = [
    "DEFAULT_UA_KEY",
    "allocate",
    "cochran_sample_size",
    "parse_expected_ua",
    "resolve_expected_ua",
]

# In a mapping of expected user's accuracies: the value for every class not named.
DEFAULT_UA_KEY = "*"


def _check_counts(counts: Mapping[int, int]) -> dict[int, int]:
    out = {int(c): int(v) for c, v in counts.items() if int(v) > 0}
    if any(v < 0 for v in counts.values()):
        raise GeodduError("pixel counts cannot be negative")
    if not out:
        raise GeodduError("no valid pixel: nothing to sample")
    return out


def _largest_remainder(total: int, counts: Mapping[int, int]) -> dict[int, int]:
    """``total`` split over the classes in proportion to ``counts``, in whole numbers summing
    to ``total`` (largest remainders first, ties to the lower class id). Integer arithmetic:
    no float rounding can make two machines disagree."""
    whole = sum(counts.values())
    shares = {c: total * v // whole for c, v in counts.items()}
    left = total - sum(shares.values())
    by_remainder = sorted(counts, key=lambda c: (-(total * counts[c] % whole), c))
    for c in by_remainder[:left]:
        shares[c] += 1
    return shares


def allocate(counts: Mapping[int, int], n: int, min_per_class: int = 0) -> dict[int, int]:
    """Points per class for a stratified random sample of ``n`` points (module docstring).

    ``counts``: valid pixels per class id (classes with none are left out of the result).
    """
    if n < 1:
        raise GeodduError(f"the sample size must be at least 1, not {n}")
    if min_per_class < 0:
        raise GeodduError(f"the minimum per class cannot be negative ({min_per_class})")
    counts = _check_counts(counts)
    floor = {c: min(min_per_class, v) for c, v in counts.items()}
    fixed: dict[int, int] = {}
    while True:
        free = {c: v for c, v in counts.items() if c not in fixed}
        if not free:
            break
        left = n - sum(fixed.values())
        whole = sum(free.values())
        # Exact: left * N_i / whole < floor_i  <=>  left * N_i < floor_i * whole.
        below = [c for c, v in free.items() if left * v < floor[c] * whole]
        if not below:
            break
        for c in below:
            fixed[c] = floor[c]
    free = {c: v for c, v in counts.items() if c not in fixed}
    shares = dict(fixed)
    if free:
        shares.update(_largest_remainder(max(0, n - sum(fixed.values())), free))
    return {c: min(shares[c], counts[c]) for c in sorted(counts)}


def cochran_sample_size(weights: Mapping[int, float], expected_ua: Mapping[int, float],
                        target_se: float) -> int:
    """Olofsson et al. (2014) Section 5 (sample size): n = (sum W_i S_i / S(Ô))^2 with
    S_i = sqrt(U_i (1 - U_i)), rounded up (the target is a largest standard error)."""
    if not 0 < target_se < 1:
        raise GeodduError(f"the target standard error must be between 0 and 1, not {target_se}")
    spread = 0.0
    for c, w in weights.items():
        u = expected_ua[c]
        if not 0 < u < 1:
            raise GeodduError(
                f"expected user's accuracy {u} for class {c}: it must be between 0 and 1"
            )
        spread += w * math.sqrt(u * (1 - u))
    # A hair below an integer is that integer: (0.3/0.01)^2 is 899.9999999999999 in floats.
    return max(1, math.ceil((spread / target_se) ** 2 - 1e-9))


def parse_expected_ua(text: str) -> dict[str, float]:
    """``"0.8"`` (every class), ``"water=0.9,2=0.7"`` or ``"0.8,water=0.9"`` (a default and
    exceptions) into {class id or name: accuracy}; the default is under :data:`DEFAULT_UA_KEY`.
    Classes are matched against the map later (:func:`resolve_expected_ua`)."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.rpartition("=")
        key = key.strip() if sep else DEFAULT_UA_KEY
        if sep and not key:
            raise GeodduError(f"{part!r}: give CLASS=ACCURACY, e.g. water=0.85")
        try:
            ua = float(value)
        except ValueError:
            raise GeodduError(
                f"{part!r}: {value.strip()!r} is not a number; give CLASS=ACCURACY, e.g. "
                "water=0.85, or one accuracy for every class"
            ) from None
        if not 0 < ua < 1:
            raise GeodduError(f"{part!r}: an expected user's accuracy is between 0 and 1")
        if key in out:
            what = "a default accuracy" if key == DEFAULT_UA_KEY else f"class {key!r}"
            raise GeodduError(f"{what} is given twice in the expected user's accuracies")
        out[key] = ua
    if not out:
        raise GeodduError("no expected user's accuracy given")
    return out


def resolve_expected_ua(
    given: float | Mapping[int | str, float],
    classes: list[int],
    names: Mapping[int, str],
    where: str,
) -> dict[int, float]:
    """The expected user's accuracy of every class in ``classes`` (the classes on the map),
    from one value or a mapping of class ids / names (``names``: the map's) to values, with
    an optional default under :data:`DEFAULT_UA_KEY`. A class the map does not know, or a
    class left without a value, is an error naming ``where`` (the map)."""
    if not isinstance(given, Mapping):
        given = {DEFAULT_UA_KEY: float(given)}
    by_name = {name: c for c, name in names.items()}
    by_folded = {name.casefold(): c for c, name in names.items()}
    known = set(classes) | set(names)
    out: dict[int, float] = {}
    default = None
    for key, ua in given.items():
        ua = float(ua)
        if not 0 < ua < 1:
            raise GeodduError(f"expected user's accuracy {ua} for {key!r}: it must be "
                              "between 0 and 1")
        if key == DEFAULT_UA_KEY:
            default = ua
            continue
        cls = _class_of(key, by_name, by_folded)
        if cls is None or cls not in known:
            listing = ", ".join(f"{c} {names[c]}" if c in names else str(c)
                                for c in sorted(known))
            raise GeodduError(
                f"expected user's accuracy given for class {key!r}, which {where} does not "
                f"have (its classes: {listing})"
            )
        if cls in out:
            raise GeodduError(f"class {key!r} is given twice in the expected user's accuracies")
        out[cls] = ua
    missing = [c for c in classes if c not in out]
    if missing and default is None:
        c = missing[0]
        label = f"{c} ({names[c]})" if c in names else str(c)
        raise GeodduError(
            f"no expected user's accuracy for class {label} of {where}; give one for it, or "
            "one value for every class not named (e.g. 0.8,water=0.9)"
        )
    return {c: out.get(c, default) for c in classes}


def _class_of(key: int | str, by_name: Mapping[str, int],
              by_folded: Mapping[str, int]) -> int | None:
    if isinstance(key, int):
        return key
    text = str(key).strip()
    if text in by_name:
        return by_name[text]
    try:
        return int(text)
    except ValueError:
        return by_folded.get(text.casefold())
