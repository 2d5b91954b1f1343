"""The HuggingFace hub: whether it can be reached, quickly, and what to say when it cannot."""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlparse

from funnel_tl.errors import FunnelError

# How long the hub reachability probe waits: a connect that takes longer would make loading crawl anyway.
HUB_PROBE_SECONDS = 3.0


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: HuggingFace reads its local cache only, and nothing is probed."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def unreachable_hub() -> str | None:
    """The hub's host (``HF_ENDPOINT`` or huggingface.co) when one short connect to it fails, else None."""

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    return None if _hub_reachable(host, port) else host


def hub_access(name: str, revision: str | None) -> bool | None:
    """Before loading a hub model: ``True`` to load it offline from the cache, ``None`` to go online.

    Without a network, HuggingFace retries for about a minute before failing; one short TCP connect
    to the hub tells the same at once. A model already cached then loads offline; one that is not
    is a FunnelError that names the network and ``HF_HUB_OFFLINE=1``.
    """
    if hub_offline():
        return True
    host = unreachable_hub()
    if host is None:
        return None
    try:
        # Imported on use: the hub client only where a hub name is probed.
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)
    except Exception:  # an odd name or cache layout: let the loader say what is wrong
        cached = False
    if cached:
        return True
    raise FunnelError(
        f"cannot reach the model hub ({host}) to download {name!r}, and it is not in the local cache: "
        "check the network, give a local checkpoint folder, or set HF_HUB_OFFLINE=1 to use "
        "cached models only"
    )


# host, port -> (time probed, reachable): a sweep of many hub checkpoints probes once a minute, not per model.
_PROBES: dict[tuple[str, int], tuple[float, bool]] = {}


def _hub_reachable(host: str, port: int) -> bool:
    probed = _PROBES.get((host, port))
    if probed is not None and time.monotonic() - probed[0] < 60:
        return probed[1]
    reachable = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
            reachable.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # daemon: a hung DNS lookup never blocks exit
    thread.start()
    thread.join(HUB_PROBE_SECONDS)
    _PROBES[(host, port)] = (time.monotonic(), bool(reachable))
    return bool(reachable)
