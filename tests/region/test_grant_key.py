"""``blobtier grant-key show|rotate|retire`` on a region's key file (blobtier/region/keys.py)."""

from __future__ import annotations

from blobtier.cli import main
from blobtier.grants import READ, KeyRing


def test_rotate_then_retire_from_the_cli(tmp_path, capsys):
    root = tmp_path / "region"
    config = tmp_path / "region.toml"
    config.write_text(f'root = "{root}"\n')
    assert main(["grant-key", "show", "-c", str(config)]) == 1  # no key: the region runs no grants
    assert "no region key" in capsys.readouterr().err
    path = str(root / "run" / "grant.key")
    (root / "run").mkdir(parents=True)
    KeyRing.create(path)
    old = KeyRing.load(path)
    grant = old.sign(b"\1" * 16, 1, "ns", READ)
    assert main(["grant-key", "rotate", "-c", str(config)]) == 0
    ring = KeyRing.load(path)
    assert [k for k, _ in ring.keys][1] == old.keys[0][0] and ring.verify(grant)
    out = capsys.readouterr().out
    assert ring.keys[0][0].hex() in out and "still checking" in out
    assert all(secret.hex() not in out for _, secret in ring.keys)  # key ids only
    assert main(["grant-key", "retire", "-c", str(config)]) == 0
    assert len(KeyRing.load(path).keys) == 1
