"""server.toml: defaults, paths relative to the file, and refusals that name the key."""

from __future__ import annotations

import pytest

from fedlm.config import ConfigError
from fedlm.service.settings import load_settings, settings_from_dict


def test_defaults_and_relative_paths(tmp_path):
    (tmp_path / "server.toml").write_text('[server]\ndata_dir = "state"\nport = 9000\n[scheduling]\nregions = ["eu"]\n')
    settings = load_settings(tmp_path / "server.toml")
    assert settings.server.port == 9000 and settings.scheduling.regions == ("eu",)
    assert settings.database_url == f"sqlite:///{tmp_path / 'state' / 'fedlm.db'}"
    assert settings.path(settings.tls.ca) == tmp_path / "certs" / "ca.pem"
    assert (settings.secagg.seconds("advertise"), settings.secagg.seconds("mask")) == (60.0, 600.0)


@pytest.mark.parametrize("data, key", [
    ({"server": {"prot": 1}}, "server.prot"),
    ({"servers": {}}, "servers"),
    ({"server": {"port": 0}}, "server.port"),
    ({"server": {"port": "80"}}, "server.port"),
    ({"scheduling": {"over_selection": -1}}, "scheduling.over_selection"),
    ({"scheduling": {"require_charging": 1}}, "scheduling.require_charging"),
    ({"tls": {"ca": ""}}, "tls.ca"),
    ({"registry": {"canary_margin": -0.1}}, "registry.canary_margin"),
    ({"secagg": {"mask_seconds": 0}}, "secagg.mask_seconds"),
    ({"secagg": {"share_second": 10}}, "secagg.share_second"),
])
def test_bad_settings_are_refused_naming_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        settings_from_dict(data)


def test_every_table_of_server_toml_is_checked_at_once():
    from fedlm.config import ConfigError
    from fedlm.service.settings import settings_from_dict

    with pytest.raises(ConfigError) as caught:
        settings_from_dict({"server": {"port": 0}, "tls": {"cert": ""}, "scheduling": {"deadline_seconds": 0},
                            "limits": {"norm_bound": -1}})
    assert [p.split(": ", 1)[0] for p in caught.value.problems] == [
        "server.port", "tls.cert", "scheduling.deadline_seconds", "limits.norm_bound"]


def test_a_run_config_with_several_globals_is_refused_by_the_service(tmp_path):
    (tmp_path / "run.toml").write_text('[model]\nname = "tiny"\n[clusters]\ncount = 2\nassign = "loss"\n')
    (tmp_path / "server.toml").write_text('[server]\nrun_config = "run.toml"\n')
    settings = load_settings(tmp_path / "server.toml")
    with pytest.raises(ConfigError, match=r"clusters\.count: the service holds one global model"):
        settings.run_config()
