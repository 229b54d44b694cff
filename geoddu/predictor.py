"""A loaded checkpoint ready to segment: normalisation, the nodata rule, in-memory prediction.

`SegmentationModel.predict` is the in-memory reference for small images; the streaming engine
(`geoddu.segment`) must write exactly what it returns, so both share `prepare` and the skip rule.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .analysis import skip_values
from .checkpoint import load_checkpoint, model_from_checkpoint
from .checkpoint_metadata import check_description
from .errors import GeodduError
from .models.ddunet import DDUNet
from .models.frozen_cpu import freeze_for_cpu
from .models.fusion import fuse_for_inference
from .partition import Partition
from .precision_probe import resolve_precision
from .resources import release_free_memory

if TYPE_CHECKING:
    from .io.raster import RasterSource

NODATA = 255


@dataclass(frozen=True)
class ModelSpec:
    """What planning a job needs of a model, without its weights: the checkpoint's bands,
    subimage size and configuration, and the architecture's figures. `geoddu segment --plan`
    builds one from the checkpoint alone (:meth:`from_checkpoint`); a loaded model has one."""

    config: Mapping[str, Any]
    bands: tuple[int, ...]
    subimage_size: int
    stride: int
    comm_features: int
    communicates: bool
    comm_halo: int
    weight_bytes: int  # the checkpoint's tensors

    @classmethod
    def of(cls, metadata: Mapping[str, Any], net: DDUNet) -> ModelSpec:
        """The spec of `net` (real or on the meta device) described by `metadata`."""
        state = metadata.get("state_dict") or net.state_dict()
        return cls(
            config=dict(net.config),
            bands=tuple(metadata["bands"]),
            subimage_size=int(metadata["subimage_size"]),
            stride=net.stride,
            comm_features=net.comm_features,
            communicates=net.communicates,
            comm_halo=net.comm_halo,
            weight_bytes=sum(t.numel() * t.element_size() for t in state.values()),
        )

    def skip_bytes(self, size: int, precision: str) -> int:
        """Bytes of one `size` px subimage's skips and bottleneck, what a one-pass strip keeps
        per cell until its row is decoded: from the architecture's figures."""
        return skip_values(self.config, size) * (4 if precision == "fp32" else 2)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> ModelSpec:
        """The spec of a checkpoint read by `load_checkpoint`: its architecture on the meta
        device (shapes only), no weights loaded into it."""
        return cls.of(ckpt, check_description(ckpt))

    def check_bands(self, count: int, what: str = "input") -> None:
        if count != len(self.bands):
            raise GeodduError(
                f"{what} has {count} band(s) but the model expects {len(self.bands)} "
                f"(bands {','.join(map(str, self.bands))}); pick them with --bands"
            )

    def scene_bands(self, scene: RasterSource, bands: Sequence[int] | None = None) -> list[int]:
        """The bands of ``scene`` (a source on the whole file) that feed the model.

        Bands the user chose are used as given (opening them and :meth:`check_bands` check
        them). Otherwise the scene must hold as many bands as the model takes, alpha bands
        aside (GDAL reads those as the mask), and the checkpoint's bands are used. Any other
        scene is refused: cutting it to the first bands would segment the wrong image silently.
        """
        if bands is not None:
            return [int(b) for b in bands]
        need = len(self.bands)
        total = scene.total_bands
        data = [b for b in range(1, total + 1) if b not in scene.alpha_bands]
        for usable in (range(1, total + 1), data):
            if len(usable) == need and all(b in usable for b in self.bands):
                return list(self.bands)
        names = [n or f"band {b}" for b, n in enumerate(scene.band_names, 1)]
        listed = f" ({', '.join(names)})" if any(scene.band_names) else ""
        has = f"{scene.path} has {total} band{'s' if total != 1 else ''}{listed}"
        trained = ",".join(map(str, self.bands))
        if len(data) < need:
            raise GeodduError(f"{has} but the model takes {need} (trained on bands {trained})")
        fits = all(b in data for b in self.bands)
        example = ",".join(map(str, self.bands if fits else data[:need]))
        if len(data) > need:
            why = f"the model takes {need}"
        else:  # as many bands as the model takes, but not the ones it was trained on
            why = f"the model was trained on bands {trained}"
        raise GeodduError(
            f"{has} but {why}; choose them with --bands, e.g. --bands {example} "
            "(QGIS: the Bands parameter)"
        )

    def partition_for(self, height: int, width: int, subimage_size: int | None = None) -> Partition:
        """The subimage grid of a scene: full subimages covering it, the last ones padded."""
        size = subimage_size or self.subimage_size
        if size % self.stride:
            raise GeodduError(
                f"subimage size {size} is not a multiple of the model stride {self.stride}"
            )
        rows, cols = -(-height // size), -(-width // size)
        return Partition((size,) * rows, (size,) * cols)


class SegmentationModel(nn.Module):
    """A DDU-Net plus what it needs to read a raster: bands, normalisation, classes, grid,
    and the precision it computes in (:meth:`computing`)."""

    def __init__(self, net: DDUNet, metadata: dict[str, Any], precision: str = "fp32",
                 fused: bool = False) -> None:
        super().__init__()
        self.net = net
        self.metadata = metadata
        self.precision = precision
        self.fused = fused  # BatchNorm folded: with_precision builds its copy alike
        self.classes: list[dict[str, Any]] = metadata["classes"]
        self.bands: list[int] = metadata["bands"]
        self.subimage_size: int = metadata["subimage_size"]
        mean = torch.tensor(metadata["normalization"]["mean"], dtype=torch.float32)
        std = torch.tensor(metadata["normalization"]["std"], dtype=torch.float32)
        self.register_buffer("mean", mean.view(-1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(-1, 1, 1), persistent=False)
        self.spec = ModelSpec.of(metadata, net)

    @property
    def config(self) -> dict[str, Any]:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """What the network's inputs are: float32, or bfloat16 for a bf16 copy (CPU)."""
        return next(self.net.parameters()).dtype

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """Run the network's stages in this model's precision.

        A CPU model in bf16 is a bf16 copy of the weights (:func:`load_model`): nothing to
        switch. A CUDA model in bf16/fp16 keeps fp32 weights and
        runs under autocast, as cuDNN does best.
        """
        if self.precision == "fp32" or self.dtype != torch.float32:
            yield
            return
        from .parallel.devices import autocast

        with autocast(self.device, self.precision):
            yield

    def with_precision(self, precision: str) -> SegmentationModel:
        """This model, or a copy of it that computes in `precision` (weights from its
        checkpoint, loaded again, so that a frozen fp32 model can become a bf16 one)."""
        precision = resolve_precision(precision, self.device)
        if precision == self.precision:
            return self
        return model_from_checkpoint_dict(
            self.metadata, self.device, fuse=self.fused, precision=precision)

    def prepare(self, raw: np.ndarray, valid: np.ndarray) -> torch.Tensor:
        """Raw (C, H, W) values -> normalised (1, C, H, W) tensor; invalid pixels set to 0.

        The nodata rule: an invalid pixel becomes the normalisation's zero before the encoder.
        """
        # In place on a copy of our own: the same bits as (x - mean) / std and a where(), in a
        # third of the time (fewer passes over memory, nothing new to fault in).
        x = torch.from_numpy(np.array(raw, dtype=np.float32)).to(self.device)
        x.sub_(self.mean).div_(self.std)
        x.masked_fill_(~torch.from_numpy(np.ascontiguousarray(valid)).to(self.device), 0)
        # channels-last is what oneDNN (CPU) and cuDNN (tensor cores) run fastest.
        return x.unsqueeze(0).to(self.dtype, memory_format=torch.channels_last)

    @torch.no_grad()
    def predict(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        subimage_size: int | None = None,
        return_logits: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Classes (H, W) uint8 for a whole raw image (bands, H, W) in memory; 255 = nodata.

        The whole scene is one DDU-Net over the subimage grid: the communication network sees
        the mosaic of every subimage. Subimages without a valid pixel are skipped: they
        contribute zeros to the mosaic and come out as nodata.
        """
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[None]
        self.spec.check_bands(image.shape[0])
        _, h, w = image.shape
        valid = np.ones((h, w), bool) if mask is None else np.asarray(mask).astype(bool)
        part = self.spec.partition_for(h, w, subimage_size)
        ph, pw = part.shape
        raw = np.zeros((image.shape[0], ph, pw), np.float32)
        raw[:, :h, :w] = image
        vpad = np.zeros((ph, pw), bool)
        vpad[:h, :w] = valid
        x = self.prepare(raw, vpad)
        net = self.net
        cells = part.subimages()
        rows, cols = part.grid
        grid = [
            [
                x[..., c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width]
                for c in cells[i * cols : (i + 1) * cols]
            ]
            for i in range(rows)
        ]
        live = [
            bool(vpad[c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width].any())
            for c in cells
        ]
        # The model's own composition (encode, stitch, communicate, replace, decode), with
        # all-nodata subimages as zeros in the mosaic and not decoded.
        with self.computing():
            decoded = net.forward_subimages(grid, live)
        logits = torch.zeros((1, net.config["num_classes"], ph, pw), device=self.device)
        for c in cells:
            out = decoded[c.row][c.col]
            if out is not None:
                logits[..., c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width] = out
        logits_np = logits[0, :, :h, :w].float().cpu().numpy()
        classes = logits_np.argmax(0).astype(np.uint8)
        classes[~valid] = NODATA
        return (classes, logits_np) if return_logits else classes


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    fuse: bool = True,
    precision: str = "fp32",
) -> SegmentationModel:
    """Load a geoddu checkpoint (weights_only) as a SegmentationModel in eval mode.

    With `fuse` (the default) BatchNorm is folded into the convs and the weights are stored
    channels-last: the same function, faster. `predict` and `segment` use the same model, so
    they agree exactly with each other, in each precision.

    `precision`: "fp32"; "bf16", which on the CPU is a bf16 copy of the (fused) weights (a
    CPU with AVX-512 BF16 or AMX runs its convolutions at twice the fp32 rate), and on CUDA
    autocast; "fp16" (CUDA only); "auto", what :func:`geoddu.precision_probe.choose_precision`
    finds fastest on `device`.
    """
    return model_from_checkpoint_dict(load_checkpoint(path), device, fuse, precision)


def model_from_checkpoint_dict(
    ckpt: dict[str, Any],
    device: str | torch.device = "cpu",
    fuse: bool = True,
    precision: str = "fp32",
) -> SegmentationModel:
    """:func:`load_model` of a checkpoint already read by `load_checkpoint`."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    bf16_copy = device.type == "cpu" and precision == "bf16"
    net = model_from_checkpoint(ckpt)
    if fuse:
        net = fuse_for_inference(net, conv_relu=bf16_copy)
    model = SegmentationModel(net, ckpt, precision, fused=fuse).to(device).eval()
    if bf16_copy:
        model.net.to(torch.bfloat16)
    model = model.to(memory_format=torch.channels_last)
    # The bf16 copy stays eager: torch.jit.trace cannot record the fused conv + ReLU
    # (its Scalar?[] argument), and without that fusion the traced bf16 model was the slower
    # one (segment of a 4096^2 scene, base 16: 4.0-4.2 s traced against 3.7-3.9 s eager).
    if fuse and device.type == "cpu" and not bf16_copy:
        x = torch.zeros(1, len(model.bands), model.subimage_size, model.subimage_size,
                        dtype=model.dtype).contiguous(memory_format=torch.channels_last)
        freeze_for_cpu(model.net, x)
        # Tracing ran one subimage through the model: hand its freed activations back, or
        # they stay resident in this thread's heap, which the compute threads never reuse.
        release_free_memory()
    return model
