"""Strict TOML reading: a typo is an error naming the nearest valid key, never a silent default."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.federation import load_federation
from fedtrace.errors import ConfigError
from node.config import load_node_config


def _fed(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fed.toml"
    path.write_text(text)
    return path


INVESTIGATOR = '[investigator]\nname = "FR"\ncert = "c"\nkey = "k"\nca = "a"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            INVESTIGATOR + '[[node]]\nname = "EE"\naddres = "x"\n',
            "missing required key 'address' (found 'addres': a typo?)",
        ),
        (INVESTIGATOR + '[[node]]\nname = "EE"\naddress = "x"\nport = 1\n', "unknown key 'port'"),
        (
            INVESTIGATOR + '[query]\ndeadline_secs = 5\n[[node]]\nname = "EE"\naddress = "x"\n',
            "unknown key 'deadline_secs' (did you mean \"deadline_seconds\"?)",
        ),
        (
            INVESTIGATOR
            + '[query]\ndeadline_seconds = "5"\n[[node]]\nname = "EE"\naddress = "x"\n',
            "'deadline_seconds' must be float, not str",
        ),
        (INVESTIGATOR, "no [[node]] entries"),
        (
            INVESTIGATOR + '[[node]]\nname = "EE"\naddress = "x"\n[[node]]\nname = "EE"\n'
            'address = "y"\n',
            "node names must be unique",
        ),
        ("[investigator\n", "not valid TOML"),
    ],
)
def test_federation_file_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_federation(_fed(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_node_config_rejects_typos_and_bad_values(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text('jurisdiction = "EE"\nepoch_hour = 3\n')
    with pytest.raises(
        ConfigError, match=r"unknown key 'epoch_hour' \(did you mean \"epoch_hours\""
    ):
        load_node_config(tmp_path)
    (tmp_path / "node.toml").write_text('jurisdiction = "EE"\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        load_node_config(tmp_path)
    (tmp_path / "node.toml").write_text(
        'jurisdiction = "EE"\n[[dataset]]\nname = "w"\nkind = "wallets"\nsql = "SELECT 1"\n'
    )
    with pytest.raises(ConfigError, match="kind 'wallets' must be one of wallet, person"):
        load_node_config(tmp_path)
    with pytest.raises(ConfigError, match="no node.toml here"):
        load_node_config(tmp_path / "missing")
