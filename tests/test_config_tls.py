"""``[tls]`` in the region config: strict like every section, paths relative to the file."""

from __future__ import annotations

import pytest

from blobtier.config import from_mapping, load
from blobtier.errors import InvalidRequest


@pytest.fixture
def pem(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not checked here: read when a server or channel starts\n")
    return {n: str(tmp_path / f"{n}.pem") for n in ("ca", "cert", "key")}


def _tls(tmp_path, **tls):
    return from_mapping({"root": str(tmp_path / "r"), "tls": tls}, env={}).tls


def test_off_by_default_and_on_with_a_ca(tmp_path, pem):
    assert not _tls(tmp_path).enabled
    tls = _tls(tmp_path, **pem, require_client_cert=True)
    assert tls.enabled and (tls.ca, tls.cert, tls.key) == (pem["ca"], pem["cert"], pem["key"])
    assert _tls(tmp_path, ca=pem["ca"]).enabled  # a client that verifies servers, presenting nothing
    assert not _tls(tmp_path, mode="auto").enabled  # until `up` makes the files


@pytest.mark.parametrize("field", ["ca", "cert", "key"])
def test_a_file_that_does_not_exist_names_its_field(tmp_path, pem, field):
    with pytest.raises(InvalidRequest, match=rf"tls\.{field} names no file: .*missing\.pem"):
        _tls(tmp_path, **{**pem, field: str(tmp_path / "missing.pem")})


@pytest.mark.parametrize("tls, field", [
    ({"mode": "on"}, "tls.mode"),
    ({"cert": "{cert}", "key": "{key}"}, "tls.ca"),  # clients could verify nothing
    ({"ca": "{ca}", "cert": "{cert}"}, "tls.key"),
    ({"ca": "{ca}", "key": "{key}"}, "tls.cert"),
    ({"require_client_cert": True}, "tls.require_client_cert"),
    ({"mode": "auto", "ca": "{ca}"}, "tls.ca"),  # auto makes its own
    ({"mode": "off", "require_client_cert": True}, "tls.require_client_cert"),
    ({"require_client_cert": "maybe"}, "tls.require_client_cert"),
    ({"certificate": "{cert}"}, "tls.certificate"),
])
def test_inconsistent_settings_name_the_field(tmp_path, pem, tls, field):
    tls = {k: v.format(**pem) if isinstance(v, str) else v for k, v in tls.items()}
    with pytest.raises(InvalidRequest, match=field.replace(".", r"\.")):
        _tls(tmp_path, **tls)


def test_paths_in_a_toml_file_are_relative_to_it_and_the_environment_overrides(tmp_path, pem):
    (tmp_path / "region.toml").write_text('root = "r"\n[tls]\nca = "ca.pem"\ncert = "cert.pem"\n'
                                          'key = "key.pem"\nrequire_client_cert = true\n')
    tls = load(str(tmp_path / "region.toml")).tls
    assert (tls.ca, tls.cert, tls.key, tls.require_client_cert) == (pem["ca"], pem["cert"], pem["key"], True)
    over = from_mapping({"root": str(tmp_path)}, env={"BLOBTIER_TLS_MODE": "auto"}).tls
    assert over.mode == "auto"
