"""Helpers for the band-files tests: single-band GeoTIFFs, STAC items, and a local HTTP server
that answers Range requests (GDAL's /vsicurl/ reads a remote file in byte ranges; Python's
SimpleHTTPRequestHandler ignores the Range header and would send whole files)."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import rasterio
import rasterio.shutil
from helpers import CRS
from rasterio.transform import from_origin

# The scene every band-files test cuts into files: 150 x 206 px of 10 m (even, so that a 20 m
# band covers it exactly).
HEIGHT, WIDTH = 150, 206
ORIGIN = (500000.0, 4000000.0)
# All bands 0 here: nodata in the stack as in one file with nodata 0.
ALL_NODATA = (slice(0, 20), slice(0, 30))
# Band 2 alone 0 here: valid, in the stack as in one file.
ONE_NODATA = (slice(60, 80), slice(100, 140))


def scene_bands(seed: int = 0) -> np.ndarray:
    """(3, HEIGHT, WIDTH) uint8, with ALL_NODATA 0 in every band and ONE_NODATA 0 in band 2."""
    data = np.random.default_rng(seed).integers(1, 255, (3, HEIGHT, WIDTH), dtype=np.uint8)
    data[(slice(None), *ALL_NODATA)] = 0
    data[(1, *ONE_NODATA)] = 0
    return data


def write_band(path: Path, data: np.ndarray, res: float = 10.0, *, crs: str = CRS,
               nodata: float | None = None, mask: np.ndarray | None = None,
               cog: bool = False) -> Path:
    """A GeoTIFF of ``data`` ((bands, h, w) or (h, w)) on the scene's origin at ``res`` m."""
    data = data[None] if data.ndim == 2 else data
    count, h, w = data.shape
    target = path.with_suffix(".plain.tif") if cog else path
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, crs=crs,
                   transform=from_origin(*ORIGIN, res, res), nodata=nodata, tiled=True,
                   blockxsize=64, blockysize=64)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(target, "w", **profile) as ds:
        ds.write(data)
        if mask is not None:
            ds.write_mask(mask)
    if cog:
        rasterio.shutil.copy(target, path, driver="COG", blocksize=64)
        target.unlink()
    return path


def split_bands(folder: Path, data: np.ndarray, names: Sequence[str], nodata: float | None = 0,
                cog: bool = False) -> list[Path]:
    """One single-band file per band of ``data``, named ``names``."""
    return [write_band(folder / n, band, nodata=nodata, cog=cog)
            for n, band in zip(names, data, strict=True)]


def stac_item(path: Path, assets: dict[str, tuple[str, str]]) -> Path:
    """A STAC item at ``path`` with ``assets``: key -> (href, eo:bands common name)."""
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "test-item", "properties": {},
        "geometry": None, "links": [],
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "assets": {
            key: {"href": href, "type": "image/tiff; application=geotiff",
                  "roles": ["data"], "eo:bands": [{"name": key, "common_name": common}]}
            for key, (href, common) in assets.items()
        },
    }
    item["assets"]["thumbnail"] = {"href": "thumb.png", "type": "image/png"}
    path.write_text(json.dumps(item), encoding="utf-8")
    return path


# -- a local HTTP server with Range requests ---------------------------------------------------
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _RangeHandler(BaseHTTPRequestHandler):
    root: Path
    log: list[tuple[str, str, str | None]]

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        rng = self.headers.get("Range")
        self.log.append((self.command, self.path, rng))
        path = (self.root / unquote(urlsplit(self.path).path).lstrip("/")).resolve()
        if not path.is_file() or not path.is_relative_to(self.root):
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        size = len(data)
        match = _RANGE.match(rng.strip()) if rng else None
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            data = data[start:end + 1]
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the log list says what was asked; stderr stays quiet


@contextmanager
def range_server(root: Path) -> Iterator[tuple[str, list[tuple[str, str, str | None]]]]:
    """Serve ``root`` on 127.0.0.1 (a free port) in a thread: (base URL, log of (method,
    path, Range header) per request)."""
    log: list[tuple[str, str, str | None]] = []
    handler = type("Handler", (_RangeHandler,), {"root": root.resolve(), "log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# GDAL and urllib kept local and quick: no proxy, no directory listing of the server, only
# .tif files looked up over HTTP, no retries.
LOCAL_HTTP_ENV = {
    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
    "GDAL_HTTP_MAX_RETRY": "0", "GDAL_HTTP_TIMEOUT": "20",
}
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
              "all_proxy")


def local_http_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (the process's environment) with LOCAL_HTTP_ENV and no proxy variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in PROXY_VARS}
    return {**env, **LOCAL_HTTP_ENV}
