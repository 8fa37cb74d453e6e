from __future__ import annotations

import pytest

from nsrun.errors import UsageError
from nsrun.firewall.select import HostFirewall, choose, requested_backend


@pytest.mark.parametrize(
    ("host", "backend"),
    [
        pytest.param(HostFirewall("nft", (), True, False), "nftables", id="iptables-nft"),
        pytest.param(HostFirewall("legacy", ("ip docker",), True, False), "nftables", id="nft-ruleset-in-use"),
        pytest.param(HostFirewall("legacy", (), True, False), "iptables", id="legacy-host"),
        pytest.param(HostFirewall(None, (), True, False), "nftables", id="no-iptables-command"),
        pytest.param(HostFirewall(None, (), False, True), "iptables", id="no-libnftables"),
        pytest.param(HostFirewall("nft", (), False, False), "iptables", id="nft-but-no-libnftables"),
    ],
)
def test_choose(host: HostFirewall, backend: str) -> None:
    chosen, why = choose(host)
    assert chosen == backend
    assert why


def test_requested_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSRUN_FIREWALL", raising=False)
    assert requested_backend() == "auto"
    monkeypatch.setenv("NSRUN_FIREWALL", "nftables")
    assert requested_backend() == "nftables"
    monkeypatch.setenv("NSRUN_FIREWALL", "pf")
    with pytest.raises(UsageError):
        requested_backend()
