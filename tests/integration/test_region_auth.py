"""`blobtier up` with tokens and a metadata service: the region key is made under run/
(0600) and every service is given its path; clients of namespace ``a`` write and read
through the metadata service, chunk servers and the flash node under grants, and a token
of namespace ``b`` reads none of it. No token or key appears in argv, logs or the state
file."""

from __future__ import annotations

import os
import stat

import pytest

import blobtier
from blobtier import runstate as state
from blobtier.rpc.auth import digest
from tests.integration.region_support import blobtier as run_cli
from tests.integration.region_support import free_base_port, kill_leftovers, write_config


@pytest.fixture
def region(tmp_path):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[token]]\nname = "ops"\nsha256 = "{digest("ops-secret")}"\nrights = ["read", "write", "admin"]\n'
        f'[[token]]\nname = "a"\nsha256 = "{digest("a-secret")}"\n'
        'grants = [{ns = "a", rights = ["read", "write"]}]\n'
        f'[[token]]\nname = "b"\nsha256 = "{digest("b-secret")}"\n'
        'grants = [{ns = "b", rights = ["read", "write"]}]\n')
    root = tmp_path / "region"
    path = write_config(tmp_path / "region.toml", root, free_base_port(),
                        f'meta_servers = 1\n[auth]\ntoken_file = "{tokens}"\ntoken = "ops-secret"\n')
    yield path, str(root)
    run_cli("down", "-c", path)
    kill_leftovers(str(root))


def test_a_region_with_tokens_signs_and_checks_grants(region):
    path, root = region
    up = run_cli("up", "-c", path)
    assert up.returncode == 0, up.stderr
    key_file = os.path.join(root, "run", "grant.key")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    secret = open(key_file).read().split(":")[1].strip()

    data = os.urandom(300_000)
    with blobtier.connect(path, auth={"token": "a-secret"}) as a:
        a.put("a/blob", data)
        assert bytes(a.get("a/blob")) == data
    with blobtier.connect(path, auth={"token": "b-secret"}, cache={"daemon": "off", "l1_bytes": 0}) as b:
        with pytest.raises(PermissionError):
            b.get("a/blob")
        assert [i.key for i in b.iter_ls("")] == []
    with blobtier.connect(path, auth={"token": "a-secret"}, cache={"daemon": "off", "l1_bytes": 0}) as a:
        assert bytes(a.get("a/blob")) == data  # no host L1: L3 and the chunk servers, under grants

    region = state.read(root)
    assert {s.kind for s in region.services} >= {"meta", "block", "flash"}
    argvs = [open(f"/proc/{s.pid}/cmdline", "rb").read().decode() for s in region.services]
    assert all(key_file in argv for argv in argvs)  # its path, to every service
    texts = argvs + [open(os.path.join(root, "run", "region.json")).read()]
    texts += [open(os.path.join(root, "logs", f)).read() for f in os.listdir(os.path.join(root, "logs"))]
    for text in texts:
        assert secret not in text
        for token in ("ops-secret", "a-secret", "b-secret"):
            assert token not in text
