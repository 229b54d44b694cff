"""The paper's reference code (github.com/corne00/HiRes-Seg-CNN), seen from geoddu.

* `convert`: checkpoints saved by the reference code -> geoddu checkpoints, and back
  (`geoddu convert`);
* `model`: the reference's DDU-Net re-created in plain torch, with its module names, for
  comparisons in the tests and benchmarks (one clone per subimage, run in a loop).
"""
