"""Accuracy assessment of class maps (Olofsson et al. 2014, Remote Sensing of Environment 148):
sampling designs, error matrix, area-adjusted estimators, reports.

* :mod:`.allocation`: sample size (Cochran / Olofsson) and points per stratum; pure arithmetic.
* :mod:`.sampling`: a stratified random sample of pixels from a class map, written as points
  (``geoddu sample``), in memory bounded by the sample, not the map.
"""

from .sampling import SampleDraw, SampleResult, Stratum, draw_sample, sample

__all__ = ["SampleDraw", "SampleResult", "Stratum", "draw_sample", "sample"]
