"""What the inference engine and training both stand on to run over several processes.

* `group`: the torch.distributed process group (joining it under torchrun, rank and world,
  errors every rank agrees on, broadcasting a Python object);
* `collectives`: an all-reduce autograd can differentiate (statistics, loss sums);
* `halo`: which rank owns which subimage, and the point-to-point halo exchange of bottleneck
  strips between neighbouring ranks;
* `devices`: which devices run the subimage work, and the precision.

How training runs one DDU-Net over ranks (`SpatialTraining`) lives with training
(`geoddu.train.spatial`); models never import this package.
"""

# Defined here, not in `devices`, so that a segment request can name them without torch.
PRECISIONS = ("fp32", "bf16", "fp16")
# What a request may ask for: a precision, or "auto", which the cached probe of
# `geoddu.precision_probe` resolves per device before anything is planned.
PRECISION_CHOICES = (*PRECISIONS, "auto")
