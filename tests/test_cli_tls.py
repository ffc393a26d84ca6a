"""The servers' --tls-* flags: file paths, checked before anything listens."""

from __future__ import annotations

import re

import pytest

from blobtier.cli import main


@pytest.mark.parametrize("serve", [["block", "serve", "--root", "{d}/b"],
                                   ["flash", "serve", "--dir", "{d}/f", "--capacity", "8MiB",
                                    "--region-size", "1MiB", "--block-endpoints", "127.0.0.1:1"],
                                   ["meta", "serve", "--backend", "rocksdb:{d}/m"],
                                   ["daemon", "--socket", "{d}/d.sock", "--listen", "127.0.0.1:0"]])
@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "{d}/missing.pem", "--tls-key", "{d}/key.pem"], "--tls-cert names no file: .*missing"),
    (["--tls-cert", "{d}/cert.pem"], "needs both --tls-cert and --tls-key"),
    (["--tls-cert", "{d}/cert.pem", "--tls-key", "{d}/key.pem", "--tls-require-client-cert"],
     "--tls-require-client-cert needs --tls-ca"),
])
def test_bad_tls_flags_are_refused_naming_the_flag(tmp_path, capsys, serve, flags, message):
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("PEM\n")
    argv = [a.format(d=tmp_path) for a in serve + flags]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
