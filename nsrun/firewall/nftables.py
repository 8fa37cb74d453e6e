"""The nftables backend, in-process through libnftables' JSON API; the only module importing nftables.

Layout: one table of nsrun's own, `inet nsrun`, with base chains `forward` (filter) and
`postrouting` (nat). Per network: chains `nw-NAME-in` (entered by a jump inserted at the top of
`forward`, so every network's inbound checks precede every network's outbound accept) and
`nw-NAME-out` (entered by a jump appended at the end), and its masquerade rule in `postrouting`.
Every rule carries the comment `nsrun:NAME`. Each change is one atomic transaction.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import NsrunError
from nsrun.firewall.portguard import BRIDGE_FAMILY, BRIDGE_TABLE, DISPATCH, PORTS_MAP, removal, removal_script
from nsrun.firewall.portguard import PREROUTING as PORTGUARD_PREROUTING
from nsrun.firewall.rules import (
    COMMENT_PREFIX,
    DOCKER_USER,
    SANDBOX_COMMENT_PREFIX,
    ForeignChain,
    Verdict,
    accept_target,
)

if TYPE_CHECKING:
    from nsrun.firewall.portguard import PortGuard
    from nsrun.firewall.rules import NetworkRules, PortMapping, PortRules, Rule

__all__ = ["FAMILY", "TABLE", "NftablesBackend", "commits", "open_nftables"]

FAMILY: Final = "inet"
TABLE: Final = "nsrun"
FORWARD: Final = "forward"
POSTROUTING: Final = "postrouting"
GUARD: Final = "guard"  # filter at raw priority on prerouting
INPUT: Final = "input"  # what sandboxes may open on the host itself
PORTS: Final = "ports"  # DNAT of published ports, entered from the nat prerouting and output hooks
PREROUTING_NAT: Final = "prerouting-nat"
OUTPUT_NAT: Final = "output-nat"
# the jumps to the ports chain: not a network's tag (`nsrun:NAME`), so never taken for one
PORTS_COMMENT: Final = "nsrun-ports"
_LEGACY_PORTS_COMMENT: Final = "nsrun:ports"  # what nsrun 0.1 tagged them with
_FILTER_PRIORITY: Final = 0
_SRCNAT_PRIORITY: Final = 100
_DSTNAT_PRIORITY: Final = -100
_RAW_PRIORITY: Final = -300
_NETWORK_BASE_CHAINS: Final = (FORWARD, POSTROUTING, GUARD, INPUT)
_CT_STATES: Final = frozenset({"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"})
_CT_STATUSES: Final = frozenset({"DNAT", "SNAT"})
_T: Final = {"family": FAMILY, "table": TABLE}


# One libnftables context per thread and process: making one and, above all, freeing it (its
# ruleset cache) costs milliseconds, and a context must not be shared (its netlink socket).
_contexts = threading.local()


def open_nftables() -> Any:
    cached = getattr(_contexts, "nft", None)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    try:
        import nftables

        nft = nftables.Nftables()
    except (ImportError, OSError) as err:
        raise NsrunError(
            "loading libnftables", str(err), "install the libnftables1 package, or set NSRUN_FIREWALL=iptables"
        ) from err
    nft.set_json_output(True)
    nft.set_handle_output(True)
    _contexts.nft = (os.getpid(), nft)
    return nft


def commits() -> int:
    """Write transactions this thread committed through libnftables: each moves nf_tables'
    generation by one at most (by none where it changed nothing)."""
    return int(getattr(_contexts, "commits", 0))


def remove_port_guard(sandbox_id: str, nft: NftablesBackend | None = None) -> None:
    """Remove the sandbox's bridge-port chain and its entry in the map: by name, one
    transaction, straight through netlink (libnftables would take most of a millisecond to
    parse it and fill its cache, and a thread's first context 0.2 ms more: `nft`, a backend
    with one, is made only if needed). Where netlink does not answer, the same transaction goes
    through libnftables; where it is refused (nsrun 0.2's jump rule; a half-made filter), what
    the listing shows of the filter goes. NsrunError where there is no libnftables then."""
    from nsrun.net import netlink

    gone = removal(sandbox_id)
    try:
        refused: int | None = netlink.delete_nft_objects(
            gone.family, gone.table, gone.elements, gone.flushed, gone.chains
        )
    except OSError:
        refused = None
    if refused == 0:
        _contexts.commits = commits() + 1  # counted as a transaction through libnftables is
        return
    (nft if nft is not None else NftablesBackend()).finish_port_guard_removal(sandbox_id, answered=refused is not None)


def in_chain(network: str) -> str:
    return f"nw-{network}-in"


def out_chain(network: str) -> str:
    return f"nw-{network}-out"


@dataclass
class _Listing:
    """nsrun's rules of one network as found in the ruleset: rule handles by chain."""

    table_exists: bool = False
    chains: set[str] = field(default_factory=set)
    rules: dict[str, list[int]] = field(default_factory=dict)
    other_networks: bool = False


class NftablesBackend:
    name = "nftables"

    def __init__(self, nft: Any | None = None) -> None:
        self._nft = nft if nft is not None else open_nftables()

    # -- nsrun's own table ----------------------------------------------------------------------

    def ensure_network(self, rules: NetworkRules) -> bool:
        listing = self._listing(rules)
        if self._complete(listing, rules):
            return False
        inside, outside = in_chain(rules.network), out_chain(rules.network)
        commands: list[dict[str, Any]] = [
            {"add": {"table": {"family": FAMILY, "name": TABLE}}},
            _base_chain(FORWARD, "filter", "forward", _FILTER_PRIORITY),
            _base_chain(POSTROUTING, "nat", "postrouting", _SRCNAT_PRIORITY),
            _base_chain(GUARD, "filter", "prerouting", _RAW_PRIORITY),
            _base_chain(INPUT, "filter", "input", _FILTER_PRIORITY),
        ]
        commands += [
            _delete_rule(FAMILY, TABLE, chain, h)
            for chain in _NETWORK_BASE_CHAINS
            for h in listing.rules.get(chain, [])
        ]
        for chain, members in ((inside, rules.inbound), (outside, rules.outbound)):
            commands += [{"add": {"chain": {**_T, "name": chain}}}, {"flush": {"chain": {**_T, "name": chain}}}]
            commands += [_add_rule(chain, render(rule), rule.comment) for rule in members]
        commands.append(
            _insert_rule(FAMILY, TABLE, FORWARD, [_iface("oifname", rules.bridge), _jump(inside)], rules.comment)
        )
        commands.append(_add_rule(FORWARD, [_iface("iifname", rules.bridge), _jump(outside)], rules.comment))
        commands += [_add_rule(POSTROUTING, render(rule), rule.comment) for rule in rules.nat]
        commands += [_add_rule(GUARD, render(rule), rule.comment) for rule in rules.guard]
        commands += [_add_rule(INPUT, render(rule), rule.comment) for rule in rules.host]
        self._run(commands, f"installing nftables rules of network {rules.network!r}")
        return True

    # -- one sandbox's published ports -------------------------------------------------------------

    def add_ports(self, ports: PortRules) -> None:
        items = self._list({"list": {"table": {"family": FAMILY, "name": TABLE}}}, "reading table inet nsrun")
        chains = {item["chain"]["name"] for item in items if "chain" in item}
        commands: list[dict[str, Any]] = []
        if PORTS not in chains:
            local = {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}
            commands += [
                {"add": {"chain": {**_T, "name": PORTS}}},
                _base_chain(PREROUTING_NAT, "nat", "prerouting", _DSTNAT_PRIORITY),
                _base_chain(OUTPUT_NAT, "nat", "output", _DSTNAT_PRIORITY),
                _add_rule(PREROUTING_NAT, [local, _jump(PORTS)], PORTS_COMMENT),
                _add_rule(OUTPUT_NAT, [local, _jump(PORTS)], PORTS_COMMENT),
            ]
        commands += [_add_rule(PORTS, _dnat(ports, mapping), ports.comment) for mapping in ports.mappings]
        self._run(commands, "publishing ports")

    def remove_ports(self, sandbox_id: str) -> None:
        comment = SANDBOX_COMMENT_PREFIX + sandbox_id
        items = self._list(
            {"list": {"table": {"family": FAMILY, "name": TABLE}}}, "reading table inet nsrun", missing_ok=True
        )
        commands = [
            _delete_rule(FAMILY, TABLE, r["chain"], r["handle"])
            for item in items
            if (r := item.get("rule")) and r.get("comment") == comment
        ]
        if commands:
            self._run(commands, "removing published ports")

    # -- one sandbox's bridge port (table bridge nsrun) -----------------------------------------

    def add_port_guard(self, guard: PortGuard) -> None:
        """The sandbox's chain and map entry; the table and its dispatch too where missing (the
        first sandbox, or after a flush)."""
        rc, _, error = self._write(guard.script())
        if rc != 0:
            rc, _, error = self._write(guard.script(with_table=True))
        if rc != 0:
            raise NsrunError(
                f"filtering what sandbox {guard.sandbox_id} sends on its bridge",
                _first_line(error),
                "run `nsrun doctor` to check nf_tables support",
            )

    def remove_port_guard(self, sandbox_id: str) -> None:
        """See the module's `remove_port_guard`."""
        remove_port_guard(sandbox_id, self)

    def finish_port_guard_removal(self, sandbox_id: str, *, answered: bool) -> None:
        """Where the transaction through netlink was refused (`answered`), or not answered (then it
        goes through libnftables first): what the listing shows of the filter goes."""
        if answered or self._write(removal_script(sandbox_id))[0] != 0:
            self._remove_listed_port_guard(sandbox_id)

    def _remove_listed_port_guard(self, sandbox_id: str) -> None:
        comment = SANDBOX_COMMENT_PREFIX + sandbox_id
        items = self._list(
            {"list": {"table": {"family": BRIDGE_FAMILY, "name": BRIDGE_TABLE}}},
            "reading table bridge nsrun",
            missing_ok=True,
        )
        chain = f"sb-{sandbox_id}"
        rules = [r for item in items if (r := item.get("rule"))]
        chains = {item["chain"]["name"] for item in items if "chain" in item}
        bridge = {"family": BRIDGE_FAMILY, "table": BRIDGE_TABLE}
        commands: list[dict[str, Any]] = [
            {"delete": {"rule": {**bridge, "chain": r["chain"], "handle": r["handle"]}}}
            for r in rules
            if r.get("comment") == comment
        ]
        if chain in chains:
            commands += [
                {"flush": {"chain": {**bridge, "name": chain}}},
                {"delete": {"chain": {**bridge, "name": chain}}},
            ]
        if chains and chains <= {PORTGUARD_PREROUTING, chain}:
            # nsrun 0.2's layout, its last sandbox: no table of nsrun's is left behind
            commands = [{"delete": {"table": {"family": BRIDGE_FAMILY, "name": BRIDGE_TABLE}}}]
        if commands:
            self._run(commands, f"removing the bridge-port filter of sandbox {sandbox_id}")

    def remove_port_guards(self) -> None:
        """The whole bridge table: it lives as long as nsrun's networks do (a sandbox's teardown
        removes only its own chain and map entry), and goes with the last one."""
        self._run_missing_ok(
            [{"delete": {"table": {"family": BRIDGE_FAMILY, "name": BRIDGE_TABLE}}}], "removing table bridge nsrun"
        )

    def rehearse(self) -> None:
        """Read what a launch's set-up and teardown read (nothing is changed): in a process
        forked from one that never did, the first pass over these paths costs milliseconds."""
        bridge = {"family": BRIDGE_FAMILY, "table": BRIDGE_TABLE}
        self._list({"list": {"map": {**bridge, "name": PORTS_MAP}}}, "reading map bridge nsrun ports", missing_ok=True)
        self._list({"list": {"table": {"family": FAMILY, "name": TABLE}}}, "reading table inet nsrun", missing_ok=True)

    def guarded_addresses(self) -> dict[str, str]:
        """Sandbox id -> the IPv4 address its bridge-port filter admits: what running sandboxes
        hold, as the kernel knows it even when nsrun's state under /run was lost."""
        items = self._list(
            {"list": {"table": {"family": BRIDGE_FAMILY, "name": BRIDGE_TABLE}}},
            "reading table bridge nsrun",
            missing_ok=True,
        )
        found: dict[str, str] = {}
        for item in items:
            rule = item.get("rule")
            chain = str(rule.get("chain", "")) if rule else ""
            if not rule or not chain.startswith("sb-"):
                continue
            for expr in rule.get("expr", []):
                match = expr.get("match", {})
                left = match.get("left", {}).get("payload", {})
                if left == {"protocol": "ip", "field": "saddr"} and match.get("op") == "!=":
                    found[chain.removeprefix("sb-")] = str(match.get("right"))
        return found

    def published(self) -> set[str]:
        """The sandbox ids with published-port rules here."""
        items = self._list(
            {"list": {"table": {"family": FAMILY, "name": TABLE}}}, "reading table inet nsrun", missing_ok=True
        )
        return {
            str(r["comment"])[len(SANDBOX_COMMENT_PREFIX) :]
            for item in items
            if (r := item.get("rule")) and str(r.get("comment", "")).startswith(SANDBOX_COMMENT_PREFIX)
        }

    def port_guards(self) -> set[str]:
        """The sandbox ids with a bridge-port filter in place: an entry in the map that jumps to
        their chain (or nsrun 0.2's jump rule)."""
        items = self._list(
            {"list": {"table": {"family": BRIDGE_FAMILY, "name": BRIDGE_TABLE}}},
            "reading table bridge nsrun",
            missing_ok=True,
        )
        chains = {item["chain"]["name"] for item in items if "chain" in item}
        found = {
            str(r["comment"])[len(SANDBOX_COMMENT_PREFIX) :]
            for item in items
            if (r := item.get("rule")) and str(r.get("comment", "")).startswith(SANDBOX_COMMENT_PREFIX)
        }
        dispatching = any(
            (r := item.get("rule")) and r.get("chain") == DISPATCH and f"@{PORTS_MAP}" in json.dumps(r.get("expr"))
            for item in items
        )
        for item in items:
            entry = item.get("map")
            if not dispatching or not entry or entry.get("name") != PORTS_MAP:
                continue
            for key, verdict in entry.get("elem", []):
                target = verdict.get("jump", {}).get("target", "") if isinstance(verdict, dict) else ""
                if target in chains and key == f"nsv{target.removeprefix('sb-')}":
                    found.add(target.removeprefix("sb-"))
        return found

    def teardown_network(self, rules: NetworkRules) -> None:
        listing = self._listing(rules)
        commands = [_delete_rule(FAMILY, TABLE, c, h) for c in _NETWORK_BASE_CHAINS for h in listing.rules.get(c, [])]
        for chain in (in_chain(rules.network), out_chain(rules.network)):
            if chain in listing.chains:
                commands += [{"flush": {"chain": {**_T, "name": chain}}}, {"delete": {"chain": {**_T, "name": chain}}}]
        if listing.table_exists and not listing.other_networks:
            # the last network on this backend is gone: leave no table of it behind (the bridge-port
            # filters' table goes with nsrun's last network, whatever its backend: the manager's)
            commands = [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
        if commands:
            self._run(commands, f"removing nftables rules of network {rules.network!r}")

    def network_present(self, rules: NetworkRules) -> bool:
        return self._complete(self._listing(rules), rules)

    def guard_present(self, rules: NetworkRules) -> bool:
        return len(self._listing(rules).rules.get(GUARD, [])) == len(rules.guard)

    # -- other tools' forward chains ------------------------------------------------------------

    def foreign_drops(self) -> list[ForeignChain]:
        """Base chains of other tables on the forward hook whose policy is drop. Chains only: no
        rule is read (nor the whole ruleset, which `list tables` would fetch), at every launch."""
        items = self._list({"list": {"chains": None}}, "listing nftables chains")
        chains = [item["chain"] for item in items if "chain" in item]
        found = []
        for chain in chains:
            if chain.get("hook") != "forward" or chain.get("policy") != "drop":
                continue
            if (chain["family"], chain["table"]) == (FAMILY, TABLE):
                continue
            siblings = {c["name"] for c in chains if (c["family"], c["table"]) == (chain["family"], chain["table"])}
            user = DOCKER_USER if DOCKER_USER in siblings else None
            found.append(ForeignChain(chain["family"], chain["table"], chain["name"], user))
        return found

    def accepts_in_place(self, rules: NetworkRules, chain: ForeignChain) -> bool:
        return len(self._foreign_rules(rules, chain)) == len(rules.accepts)

    def ensure_accepts(self, rules: NetworkRules, chain: ForeignChain) -> bool:
        handles = self._foreign_rules(rules, chain)
        if len(handles) == len(rules.accepts):
            return False
        target = accept_target(chain)
        commands = [_delete_rule(chain.family, chain.table, target, h) for h in handles]
        commands += [
            _insert_rule(chain.family, chain.table, target, render(r), r.comment) for r in reversed(rules.accepts)
        ]
        self._run(commands, f"adding nsrun's accepts to {chain.describe()}")
        return True

    def remove_accepts(self, rules: NetworkRules) -> None:
        """Delete exactly the rules nsrun added to other tools' chains for this network."""
        items = self._list({"list": {"ruleset": None}}, "reading the nftables ruleset")
        commands = [
            _delete_rule(r["family"], r["table"], r["chain"], r["handle"])
            for item in items
            if (r := item.get("rule"))
            and r.get("comment") == rules.comment
            and (r["family"], r["table"]) != (FAMILY, TABLE)
        ]
        if commands:
            self._run(commands, f"removing nsrun's accepts of network {rules.network!r}")

    def orphans(self, known: set[str]) -> list[tuple[str, str]]:
        """(network, exact fix) for every network with rules here but no definition."""
        items = self._list({"list": {"ruleset": None}}, "reading the nftables ruleset")
        fixes: dict[str, list[str]] = {}
        for item in items:
            rule = item.get("rule")
            comment = str(rule.get("comment", "")) if rule else ""
            if not rule or not comment.startswith(COMMENT_PREFIX) or comment == _LEGACY_PORTS_COMMENT:
                continue
            network = rule["comment"][len(COMMENT_PREFIX) :]
            if network in known or rule["chain"] in (in_chain(network), out_chain(network)):
                continue
            where = f"{rule['family']} {rule['table']} {rule['chain']}"
            fixes.setdefault(network, []).append(f"nft delete rule {where} handle {rule['handle']}")
        for item in items:
            chain = item.get("chain")
            if not chain or (chain["family"], chain["table"]) != (FAMILY, TABLE):
                continue
            match = re.fullmatch(r"nw-(.+)-(in|out)", chain["name"])
            if match and match.group(1) not in known:
                where = f"{FAMILY} {TABLE} {chain['name']}"
                fixes.setdefault(match.group(1), []).append(f"nft flush chain {where}; nft delete chain {where}")
        return [(network, "; ".join(commands)) for network, commands in sorted(fixes.items())]

    def tables(self) -> list[tuple[str, str]]:
        items = self._list({"list": {"tables": None}}, "listing nftables tables")
        return [(item["table"]["family"], item["table"]["name"]) for item in items if "table" in item]

    # -- helpers --------------------------------------------------------------------------------

    def _foreign_rules(self, rules: NetworkRules, chain: ForeignChain) -> list[int]:
        target = accept_target(chain)
        query = {"list": {"chain": {"family": chain.family, "table": chain.table, "name": target}}}
        items = self._list(query, f"reading {chain.describe()}")
        return [r["handle"] for item in items if (r := item.get("rule")) and r.get("comment") == rules.comment]

    def _listing(self, rules: NetworkRules) -> _Listing:
        listing = _Listing()
        items = self._list(
            {"list": {"table": {"family": FAMILY, "name": TABLE}}}, "reading table inet nsrun", missing_ok=True
        )
        ours = {in_chain(rules.network), out_chain(rules.network)}
        for item in items:
            listing.table_exists = listing.table_exists or "table" in item
            if "chain" in item and item["chain"]["name"] in ours:
                listing.chains.add(item["chain"]["name"])
            rule = item.get("rule")
            if not rule:
                continue
            if rule.get("comment") == rules.comment:
                listing.rules.setdefault(rule["chain"], []).append(rule["handle"])
            elif rule["chain"] in _NETWORK_BASE_CHAINS:
                listing.other_networks = True
        return listing

    @staticmethod
    def _complete(listing: _Listing, rules: NetworkRules) -> bool:
        expected = {
            in_chain(rules.network): len(rules.inbound),
            out_chain(rules.network): len(rules.outbound),
            FORWARD: 2,
            POSTROUTING: len(rules.nat),
            GUARD: len(rules.guard),
            INPUT: len(rules.host),
        }
        return all(len(listing.rules.get(chain, [])) == count for chain, count in expected.items())

    def _list(self, command: dict[str, Any], action: str, *, missing_ok: bool = False) -> list[dict[str, Any]]:
        rc, output, error = self._nft.json_cmd({"nftables": [command]})
        if rc != 0:
            if missing_ok and "No such file or directory" in error:
                return []
            raise NsrunError(action, _first_line(error), "run `nsrun doctor`")
        items: list[dict[str, Any]] = output.get("nftables", []) if isinstance(output, dict) else []
        return items

    def _write(self, script: str | dict[str, Any]) -> tuple[int, Any, str]:
        """One transaction; a committed one is counted (`commits`)."""
        rc, output, error = self._nft.json_cmd(script) if isinstance(script, dict) else self._nft.cmd(script)
        if rc == 0:
            _contexts.commits = commits() + 1
        return rc, output, error

    def _run_missing_ok(self, commands: list[dict[str, Any]], action: str) -> None:
        rc, _, error = self._write({"nftables": commands})
        if rc != 0 and "No such file or directory" not in error:
            raise NsrunError(action, _first_line(error), "run `nsrun doctor`")

    def _run(self, commands: list[dict[str, Any]], action: str) -> None:
        rc, _, error = self._write({"nftables": commands})
        if rc != 0:
            raise NsrunError(action, _first_line(error), "run `nsrun doctor` to check nf_tables support")


def _first_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[0] if lines else "libnftables failed"


def _base_chain(name: str, kind: str, hook: str, priority: int) -> dict[str, Any]:
    chain = {**_T, "name": name, "type": kind, "hook": hook, "prio": priority, "policy": "accept"}
    return {"add": {"chain": chain}}


def _add_rule(chain: str, expr: list[dict[str, Any]], comment: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {**_T, "chain": chain, "expr": expr}
    if comment:
        rule["comment"] = comment
    return {"add": {"rule": rule}}


def _insert_rule(family: str, table: str, chain: str, expr: list[dict[str, Any]], comment: str) -> dict[str, Any]:
    return {"insert": {"rule": {"family": family, "table": table, "chain": chain, "expr": expr, "comment": comment}}}


def _delete_rule(family: str, table: str, chain: str, handle: int) -> dict[str, Any]:
    return {"delete": {"rule": {"family": family, "table": table, "chain": chain, "handle": handle}}}


def _iface(key: str, name: str, *, negated: bool = False) -> dict[str, Any]:
    return {"match": {"op": "!=" if negated else "==", "left": {"meta": {"key": key}}, "right": name}}


def _dnat(ports: PortRules, mapping: PortMapping) -> list[dict[str, Any]]:
    expr: list[dict[str, Any]] = [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}}]
    if mapping.host_ip is not None:
        expr.append(_prefix("daddr", ipaddress.IPv4Network(mapping.host_ip), "=="))
    dport = {"payload": {"protocol": mapping.proto, "field": "dport"}}
    expr.append({"match": {"op": "==", "left": dport, "right": mapping.host_port}})
    expr.append({"dnat": {"family": "ip", "addr": str(ports.address), "port": mapping.port}})
    return expr


def _jump(chain: str) -> dict[str, Any]:
    return {"jump": {"target": chain}}


def _prefix(field_name: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network, op: str) -> dict[str, Any]:
    protocol = "ip" if network.version == 4 else "ip6"  # noqa: PLR2004
    right = {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}
    return {"match": {"op": op, "left": {"payload": {"protocol": protocol, "field": field_name}}, "right": right}}


def render(rule: Rule) -> list[dict[str, Any]]:
    """One abstract rule as nftables JSON expressions, comment excluded."""
    expr: list[dict[str, Any]] = []
    if rule.nfproto:
        expr.append({"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": rule.nfproto}})
    if rule.in_iface:
        expr.append(_iface("iifname", rule.in_iface, negated=rule.in_iface_negated))
    if rule.out_iface:
        expr.append(_iface("oifname", rule.out_iface, negated=rule.out_iface_negated))
    if rule.source:
        expr.append(_prefix("saddr", rule.source, "!=" if rule.source_negated else "=="))
    if rule.destination:
        expr.append(_prefix("daddr", rule.destination, "=="))
    if rule.dest_negated:
        expr.append(_prefix("daddr", rule.dest_negated, "!="))
    states = sorted(s.lower() for s in rule.ctstates if s in _CT_STATES)
    if states:
        expr.append({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": states}})
    statuses = sorted(s.lower() for s in rule.ctstates if s in _CT_STATUSES)
    if statuses:
        expr.append({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": statuses}})
    verdicts = {
        Verdict.ACCEPT: {"accept": None},
        Verdict.DROP: {"drop": None},
        Verdict.MASQUERADE: {"masquerade": None},
    }
    expr.append(verdicts[rule.verdict])
    return expr
