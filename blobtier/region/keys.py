"""``blobtier grant-key``: show, rotate or retire the region key that signs grants.

The key file is ``<root>/run/grant.key`` (``services.grant_key_file``), made by ``up`` when
the region runs tokens and a metadata service. Rotation puts a new signing key first and
keeps the old one for checking; services read the file when they start, so the region's
services are restarted after each step (``blobtier restart SERVICE...``). Retire the old
key once the grants it signed have expired (``grants.DEFAULT_TTL_S``). Only key ids are
ever printed, never a key.
"""

from __future__ import annotations

import os

from blobtier.config import RegionConfig
from blobtier.errors import InvalidRequest
from blobtier.grants import DEFAULT_TTL_S, KeyRing

ACTIONS = ("show", "rotate", "retire")


def grant_key(config: RegionConfig, action: str) -> int:
    """Do ``action`` (show, rotate, retire) on the region's key file and print its key ids.

    Raises: ``InvalidRequest`` when the region has no key file (it runs no grants) or
    the action is unknown; what ``KeyRing.load`` raises for a bad file.
    """
    from blobtier.region.services import grant_key_file

    path = grant_key_file(config)
    if action not in ACTIONS:
        raise InvalidRequest(f"grant-key: action must be one of {', '.join(ACTIONS)}, got {action!r}")
    if not os.path.exists(path):
        raise InvalidRequest(f"{path}: no region key; `blobtier up` makes one when the region "
                             "runs tokens (auth.token_file) and a metadata service (services.meta_servers)")
    if action == "rotate":
        KeyRing.rotate(path)
    elif action == "retire":
        KeyRing.retire(path)
    ids = [kid.hex() for kid, _ in KeyRing.load(path).keys]
    print(f"{path}: signing key {ids[0]}" + (f", still checking {ids[1]}" if len(ids) > 1 else ""))
    if action != "show":
        print("restart the region's services to use it (`blobtier restart` with every service "
              "`blobtier status` lists)" + (f"; retire the old key after {DEFAULT_TTL_S / 3600:.0f} h, "
                                            "when the grants it signed have expired"
                                            if action == "rotate" else ""))
    return 0
