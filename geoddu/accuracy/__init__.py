"""Accuracy assessment of class maps: sampling designs, the error matrix, area-adjusted
estimators (Olofsson et al. 2014) and reports.

* :mod:`.allocation`: sample size (Cochran / Olofsson) and points per stratum; pure arithmetic.
* :mod:`.sampling`: a stratified random sample of pixels from a class map, written as points
  to label (``geoddu sample``), in memory bounded by the sample, not the map.
* :mod:`.estimators`: pure numpy; the error matrix in area proportions, accuracies and
  error-adjusted areas with standard errors, F1/IoU, quantity/allocation disagreement.
* :mod:`.map_info`: a class map's names, pixel area and class pixel counts (blockwise).
* :mod:`.reference`: reference points, polygons or a raster against the map.
* :mod:`.assess`: :func:`assess`, the engine of ``geoddu assess``.
* :mod:`.report`: JSON, CSV and HTML outputs.
"""

from .estimators import DESIGNS, Estimates, estimate
from .sampling import SampleDraw, SampleResult, Stratum, draw_sample, sample

__all__ = ["DESIGNS", "Estimates", "SampleDraw", "SampleResult", "Stratum", "draw_sample",
           "estimate", "sample"]
