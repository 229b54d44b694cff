"""Accuracy assessment of class maps: sampling designs, the error matrix, area-adjusted
estimators (Olofsson et al. 2014) and reports.

* :mod:`.estimators`: pure numpy; the error matrix in area proportions, accuracies and
  error-adjusted areas with standard errors, F1/IoU, quantity/allocation disagreement.
* :mod:`.map_info`: a class map's names, pixel area and class pixel counts (blockwise).
* :mod:`.reference`: reference points, polygons or a raster against the map.
* :mod:`.assess`: :func:`assess`, the engine of ``geoddu assess``.
* :mod:`.report`: JSON, CSV and HTML outputs.
"""

from .estimators import DESIGNS, Estimates, estimate

__all__ = ["DESIGNS", "Estimates", "estimate"]
