"""Pretrained AlexNet on first use: download, SHA-256 check, torch-free port, cache.

`--config.model.alexnet_weights=imagenet` (the default) downloads torchvision's ImageNet
AlexNet once from a pinned URL, checks its SHA-256, reads the .pth with
`msjax.convert.pth` (no torch needed), ports it and keeps only the msjax params file in
the cache: `$MSJAX_CACHE_DIR`, else `$XDG_CACHE_HOME/msjax`, else `~/.cache/msjax`. Later
runs read the cache. Every write is a temporary file renamed into place, so a failed,
corrupted or interrupted download leaves no cache entry; its error is one line naming
the URL, what failed and the manual route (`bin/port_alexnet`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from msjax.convert.pth import read_pth
from msjax.convert.torchvision import ALEXNET_URL, port_state_dict, save_params
from msjax.errors import CheckpointError

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
# SHA-256 of torchvision's alexnet-owt-7be5be79.pth (244,408,911 bytes; the name carries
# its first 8 digits).
ALEXNET_SHA256 = "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloaded weights live: $MSJAX_CACHE_DIR, $XDG_CACHE_HOME/msjax or ~/.cache/msjax."""
    if os.environ.get("MSJAX_CACHE_DIR"):
        return Path(os.environ["MSJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "msjax"


def _manual(url: str) -> str:
    name = url.rsplit("/", 1)[-1]
    return (
        f"download it by hand, port it with `bin/port_alexnet --pth={name} "
        "--out=alexnet.npz` and pass --config.model.alexnet_weights=alexnet.npz "
        "(or --config.model.random_alexnet=true to train AlexNet from scratch)"
    )


def fetch(url: str, sha256: str, dest: Path, *, timeout: float = 60.0) -> Path:
    """Downloads `url` to `dest`, checking its SHA-256; `dest` appears only when it matches.

    Raises:
        CheckpointError: the download failed or the hash differs (one line naming the
            URL); no partial file is left.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Its own `.part` file rather than msjax.io.files.atomic_write: the network's errors are
    # OSErrors too, which atomic_write would report as a disk that cannot be written.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise CheckpointError(
                f"{url}: SHA-256 mismatch (got {digest.hexdigest()}, expected {sha256}); "
                + _manual(url)
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise CheckpointError(f"{url}: download failed ({reason}); {_manual(url)}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def imagenet_alexnet(
    cache: Path | None = None, url: str = ALEXNET_URL, sha256: str = ALEXNET_SHA256
) -> Path:
    """The cached msjax params file of torchvision's ImageNet AlexNet, made on first use.

    Args:
        cache: The cache directory (default `cache_dir()`).
        url, sha256: Where the .pth comes from and its pinned hash.

    Raises:
        CheckpointError: the download, hash check or port failed (nothing is cached).
    """
    cache = Path(cache) if cache is not None else cache_dir()
    out = cache / f"alexnet_imagenet_{sha256[:8]}.npz"
    if out.is_file():
        return out
    log.info("downloading ImageNet AlexNet once from %s into %s", url, cache)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download") as tmp:
        pth = fetch(url, sha256, Path(tmp) / "alexnet.pth")
        save_params(port_state_dict(read_pth(pth), url), out)
    return out


def alexnet_weights_file(weights: str, random_init: bool) -> Path | None:
    """The AlexNet params file a run loads, or None for a random initialisation.

    A path is used as it is; otherwise `random_init` means random weights, "imagenet"
    the cached download, and an empty value is an error.

    Raises:
        CheckpointError: empty without `random_init`, or the download failed.
    """
    if weights and weights != IMAGENET:
        return Path(weights)
    if random_init:
        return None
    if weights == IMAGENET:
        return imagenet_alexnet()
    raise CheckpointError(
        "--config.model.alexnet_weights is empty: use imagenet (downloaded once), a file "
        "from bin/port_alexnet, or --config.model.random_alexnet=true to train it from scratch"
    )
