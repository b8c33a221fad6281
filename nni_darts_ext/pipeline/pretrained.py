"""NNI's published DARTS weights: where NNI keeps them, and a checked download.

Example::

    path = fetch_pretrained("darts-v2")   # $NNI_HOME/nashub/darts-v2-5465b0d2.pth, sha256 checked
"""

from __future__ import annotations

import hashlib
import logging
import urllib.request
from pathlib import Path

from .._compat import import_nni_quietly
from ..errors import UsageError
from ..io import atomic_open, sha256_of

__all__ = ["PRETRAINED", "fetch_pretrained", "pretrained_weights_path"]

_logger = logging.getLogger("nni_darts_ext.pipeline")

# NNI's published weights of the darts-v2 net (nni/nas/hub/pytorch/utils/pretrained.py PRETRAINED_WEIGHT_URLS;
# the file name ends with the first 8 hex digits of its sha256, checked by nni/common/blob_utils.py).
PRETRAINED = {"darts-v2": {"file": "darts-v2-5465b0d2.pth", "sha256_prefix": "5465b0d2", "width": 36, "num_cells": 20}}
_DOWNLOAD_TIMEOUT_S = 30
_HASH_CHUNK = 1 << 20


def pretrained_weights_path(name: str) -> Path:
    """Where NNI keeps ``name``'s weights: ``$NNI_HOME/nashub/`` else ``$XDG_CACHE_HOME/nni/nashub/`` else
    ``~/.cache/nni/nashub/`` (nni/common/blob_utils.py nni_cache_home).

    Example::

        pretrained_weights_path("darts-v2").name   # 'darts-v2-5465b0d2.pth'
    """
    with import_nni_quietly():
        from nni.common.blob_utils import nni_cache_home

    return Path(nni_cache_home()) / "nashub" / PRETRAINED[name]["file"]



def fetch_pretrained(name: str) -> Path:
    """The checked local file of NNI's pretrained ``name`` weights, downloaded into NNI's cache if missing.

    Raises:
        UsageError: unknown name; offline and no file (says where to put it); hash mismatch.

    Example::

        fetch_pretrained("darts-v2")
    """
    if name not in PRETRAINED:
        raise UsageError(f"--pretrained {name}: unknown; available: {', '.join(PRETRAINED)}")
    info = PRETRAINED[name]
    path = pretrained_weights_path(name)
    if not path.is_file():
        with import_nni_quietly():
            from nni.nas.hub.pytorch.utils.pretrained import PRETRAINED_WEIGHT_URLS
        url = PRETRAINED_WEIGHT_URLS[name]
        _logger.debug("downloading %s to %s", url, path)
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, atomic_open(path) as handle:
                digest = hashlib.sha256()
                for chunk in iter(lambda: response.read(_HASH_CHUNK), b""):
                    digest.update(chunk)
                    handle.write(chunk)
                if not digest.hexdigest().startswith(info["sha256_prefix"]):
                    raise UsageError(f"--pretrained {name}: the download from {url} has sha256 "
                                     f"{digest.hexdigest()[:16]}..., expected {info['sha256_prefix']}...")
        except (OSError, ValueError) as exc:  # URLError, timeouts, DNS: offline
            reason = getattr(exc, "reason", None) or exc
            raise UsageError(
                f"--pretrained {name}: cannot download {url} ({reason}); offline, put {info['file']} "
                f"(sha256 {info['sha256_prefix']}...) in {path.parent}/ (NNI_HOME or XDG_CACHE_HOME move it)"
            ) from None
    actual = sha256_of(path)
    if not actual.startswith(info["sha256_prefix"]):
        raise UsageError(
            f"--pretrained {name}: {path} has sha256 {actual[:16]}..., expected {info['sha256_prefix']}...: "
            "delete it and download it again"
        )
    return path
