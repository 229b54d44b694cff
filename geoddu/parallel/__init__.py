"""What the inference engine and training both stand on to run over several processes.

* `group`: the torch.distributed process group (joining it under torchrun, rank and world,
  errors every rank agrees on, broadcasting a Python object);
* `halo`: which rank owns which subimage, and the point-to-point halo exchange of bottleneck
  strips between neighbouring ranks;
* `spatial`: one DDU-Net over the ranks of a group for training (F-map gather/scatter,
  cross-rank BatchNorm, gradient averaging);
* `dropout`: dropout masks drawn as one process draws them, whichever rank holds the rows;
* `devices`: which devices run the subimage work, and the precision.
"""

# Defined here, not in `devices`, so that a segment request can name them without torch.
PRECISIONS = ("fp32", "bf16", "fp16")
