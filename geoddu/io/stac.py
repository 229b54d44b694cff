"""The band files of a STAC item: its assets, picked by key or by band name, as paths GDAL opens.

A STAC item (a JSON file, local or at an http(s) URL) lists one asset per band file for
Sentinel-2 and Landsat. Assets are picked by their key (``red``, ``B04``) or, where no key
matches, by the band name their ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1) declare
(``common_name``/``eo:common_name``, then ``name``). Relative hrefs are resolved against the
item's own location, as STAC says; remote ones are read through GDAL's ``/vsicurl/`` (or
``/vsis3/``... :func:`geoddu.io.band_stack.gdal_path`). Plain JSON: no STAC library needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

from geoddu.documents import parse_json
from geoddu.errors import GeodduError

from .band_stack import BandRef

__all__ = ["read_item", "stac_bands"]

# An item is a few kB; a server that does not answer in this time is not going to.
_HTTP_TIMEOUT_S = 60


def _is_url(location: str) -> bool:
    return urlsplit(location).scheme.lower() in ("http", "https")


def read_item(location: str) -> dict[str, Any]:
    """The STAC item at ``location`` (a path or an http(s) URL); one-line errors."""
    if _is_url(location):
        from urllib.error import HTTPError, URLError
        from urllib.request import urlopen

        try:
            with urlopen(location, timeout=_HTTP_TIMEOUT_S) as response:
                raw = response.read()
        except HTTPError as exc:
            raise GeodduError(f"--stac {location}: HTTP {exc.code} {exc.reason}") from exc
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise GeodduError(f"--stac {location}: cannot be fetched ({reason})") from exc
    else:
        path = location[len("file://"):] if location.startswith("file://") else location
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise GeodduError(f"--stac {location}: {exc.strerror or exc}") from exc
    item = parse_json(raw, f"--stac {location}")
    if not isinstance(item, dict) or not isinstance(item.get("assets"), dict):
        raise GeodduError(f"--stac {location}: not a STAC item (no 'assets' object)")
    return item


def _band_names(asset: Mapping[str, Any]) -> set[str]:
    """The names an asset's bands go by (a single-band asset: its one band's)."""
    names: set[str] = set()
    for key in ("eo:bands", "bands"):
        bands = asset.get(key)
        if isinstance(bands, list) and len(bands) == 1 and isinstance(bands[0], dict):
            band = bands[0]
            for field in ("common_name", "eo:common_name", "name"):
                if isinstance(band.get(field), str):
                    names.add(band[field])
    return names


def _pick(location: str, assets: Mapping[str, Any], wanted: str) -> tuple[str, Mapping]:
    if wanted in assets:
        return wanted, assets[wanted]
    hits = [k for k, a in assets.items() if isinstance(a, dict) and wanted in _band_names(a)]
    if len(hits) == 1:
        return hits[0], assets[hits[0]]
    if hits:
        raise GeodduError(
            f"--assets {wanted}: {len(hits)} assets of {location} hold band {wanted!r} "
            f"({', '.join(hits)}); pick one by its key"
        )
    raise GeodduError(
        f"--assets {wanted}: {location} has no asset or band of that name; its assets: "
        f"{', '.join(assets)}"
    )


def _resolve(location: str, href: str) -> str:
    """``href`` of an asset of the item at ``location``, absolute."""
    if "://" in href or href.startswith("/"):
        return href
    if _is_url(location):
        return urljoin(location, href)
    base = os.path.dirname(os.path.abspath(location[len("file://"):] if location.startswith(
        "file://") else location))
    return os.path.normpath(os.path.join(base, href))


def stac_bands(location: str, assets: Sequence[str]) -> list[BandRef]:
    """The band files of the STAC item at ``location``: one per name in ``assets``, in that
    order (the model's band order)."""
    if not assets:
        raise GeodduError("--stac needs --assets: the item's assets, in the model's band order")
    item = read_item(location)
    out = []
    for wanted in assets:
        key, asset = _pick(location, item["assets"], wanted)
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or not href:
            raise GeodduError(f"--assets {wanted}: asset {key!r} of {location} has no href")
        out.append(BandRef(_resolve(location, href), key))
    return out
