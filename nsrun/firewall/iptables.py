"""The python-iptables (libiptc, legacy x_tables) backend; the only module that imports iptc.

Layout: nsrun's own chains, each entered by one jump at the top of its built-in chain:
filter NSRUN-FORWARD (from FORWARD) and nat NSRUN-POSTROUTING (from POSTROUTING). Each rule
carries the comment `nsrun:<network>`, which is how a network's rules are found and removed.
libiptc rewrites a whole table per commit and takes no lock of its own: every change happens
under the xtables lock, in one commit per table, followed by refresh() (a committed handle is
stale and a second commit on it fails with EAGAIN).
"""

from __future__ import annotations

import contextlib
import os
import sysconfig
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nsrun.errors import NsrunError
from nsrun.firewall.rules import (
    COMMENT_PREFIX,
    DOCKER_USER,
    IPV6,
    SANDBOX_COMMENT_PREFIX,
    ForeignChain,
    Hook,
    accept_target,
)
from nsrun.firewall.xtables_lock import xtables_lock

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

    from nsrun.firewall.rules import NetworkRules, PortRules, Rule

__all__ = ["FORWARD_CHAIN", "POSTROUTING_CHAIN", "IptablesBackend", "legacy_filter_in_use", "legacy_table_in_use"]

FORWARD_CHAIN: Final = "NSRUN-FORWARD"
POSTROUTING_CHAIN: Final = "NSRUN-POSTROUTING"
GUARD_CHAIN: Final = "NSRUN-PREROUTING"  # raw table
INPUT_CHAIN: Final = "NSRUN-INPUT"  # filter table: what sandboxes may open on the host (--no-host-access)
PORTS_CHAIN: Final = "NSRUN-PORTS"  # nat table, entered from PREROUTING and OUTPUT for local destinations
PORTS_COMMENT: Final = "nsrun-ports"  # not a network's tag (`nsrun:NAME`)
_LEGACY_PORTS_COMMENT: Final = "nsrun:ports"
JUMP_COMMENT: Final = "nsrun"
_FILTER: Final = "filter"
_NAT: Final = "nat"
_RAW: Final = "raw"


def legacy_table_in_use(table: str) -> bool:
    """Whether this namespace has that legacy table; asking iptc would create it."""
    try:
        return table in Path("/proc/net/ip_tables_names").read_text().split()
    except OSError:
        return False


def legacy_filter_in_use() -> bool:
    return legacy_table_in_use(_FILTER)


def _xtables_libdir() -> str | None:
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for candidate in (f"/usr/lib/{multiarch}/xtables", "/usr/lib64/xtables", "/usr/lib/xtables"):
        if Path(candidate).is_dir():
            return candidate
    return None


@contextlib.contextmanager
def _fast_import_environment() -> Iterator[None]:
    """iptc probes for its libraries with ldconfig and gcc unless told where they are; and under
    setuptools' distutils shim its `import distutils` pulls in all of setuptools (~0.4 s). The
    variables are set for the import only: the sandboxed command must not inherit them."""
    saved = {key: os.environ.get(key) for key in ("XTABLES_LIBDIR",)}
    libdir = _xtables_libdir()
    if libdir and not saved["XTABLES_LIBDIR"]:
        os.environ["XTABLES_LIBDIR"] = libdir
    with contextlib.suppress(ImportError):
        import _distutils_hack

        _distutils_hack.remove_shim()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _load_iptc() -> ModuleType:
    with _fast_import_environment():
        try:
            import iptc
            import iptc.easy
        except Exception as err:  # iptc raises plain exceptions when a library or kernel table is missing
            raise NsrunError(
                "loading python-iptables",
                str(err),
                "install the iptables package, or set NSRUN_FIREWALL=nftables",
            ) from err
    module: ModuleType = iptc
    if getattr(iptc.ip4tc.IPTCModule, "_get_saved_buf", None) is not _saved_buf:
        iptc.ip4tc.IPTCModule._get_saved_buf = _saved_buf  # noqa: SLF001  # see _saved_buf
    return module


def _saved_buf(module: Any, ip: Any) -> bytes | None:
    """What libxtables' save() of a match or target prints: its parameters (a rule's comment is
    read so). python-iptables gets it by pointing file descriptor 1 at a pipe meanwhile: for the
    whole process, so a caller's thread printing then writes into the pipe or fails with EPIPE
    (seen in a program whose Pool made sandboxes in the background). Captured from the C
    library's `stdout` stream instead: descriptor 1 is never touched."""
    from nsrun.process import libc

    if not module._module or not module._module.save:  # noqa: SLF001  # python-iptables' own fields
        return None
    try:
        return libc.capture_c_stdout(lambda: module._xt.save(module._module, ip, module._ptr))  # noqa: SLF001
    except OSError as err:
        raise NsrunError("reading an iptables rule", str(err), "retry") from err


def _v4(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    return tuple(rule for rule in rules if rule.family != IPV6)


class IptablesBackend:
    name = "iptables"

    def __init__(self) -> None:
        self._iptc = _load_iptc()

    def ensure_network(self, rules: NetworkRules) -> bool:
        with self._errors(f"installing iptables rules of network {rules.network!r}"), xtables_lock():
            changed = False
            for table, hook, chain, (head, tail) in self._layout(rules):
                if chain == INPUT_CHAIN and not (head + tail):
                    continue  # a network without --no-host-access needs no input chain
                changed = self._ensure(table, hook, chain, rules, (head, tail)) or changed
            return changed

    def teardown_network(self, rules: NetworkRules) -> None:
        with self._errors(f"removing iptables rules of network {rules.network!r}"), xtables_lock():
            for table, hook, chain, _ in self._layout(rules):
                self._teardown(table, hook, chain, rules)

    def network_present(self, rules: NetworkRules) -> bool:
        with self._errors(f"reading iptables rules of network {rules.network!r}"):
            for table_name, hook, chain, (head, tail) in self._layout(rules):
                if chain == INPUT_CHAIN and not (head + tail):
                    continue
                if not self._in_place(self._table(table_name), hook, chain, head + tail, rules):
                    return False
            return True

    def guard_present(self, rules: NetworkRules) -> bool:
        with self._errors(f"reading iptables rules of network {rules.network!r}"):
            return self._in_place(self._table(_RAW), Hook.PREROUTING, GUARD_CHAIN, _v4(rules.guard), rules)

    @staticmethod
    def _layout(rules: NetworkRules) -> list[tuple[str, Hook, str, tuple[tuple[Rule, ...], tuple[Rule, ...]]]]:
        """(table, hook, nsrun's chain, (rules at its head, rules at its tail)): IPv4 only, as
        python-iptables drives one address family per process."""
        return [
            (_FILTER, Hook.FORWARD, FORWARD_CHAIN, (_v4(rules.inbound), _v4(rules.outbound))),
            (_NAT, Hook.POSTROUTING, POSTROUTING_CHAIN, ((), _v4(rules.nat))),
            (_RAW, Hook.PREROUTING, GUARD_CHAIN, ((), _v4(rules.guard))),
            (_FILTER, Hook.INPUT, INPUT_CHAIN, ((), _v4(rules.host))),
        ]

    # -- one sandbox's published ports ---------------------------------------------------------

    def add_ports(self, ports: PortRules) -> None:
        with self._errors("publishing ports"), xtables_lock():
            table = self._table(_NAT)
            if not table.is_chain(PORTS_CHAIN):
                table.create_chain(PORTS_CHAIN)
            for hook in ("PREROUTING", "OUTPUT"):
                if not self._has_jump(table, hook, PORTS_CHAIN):
                    jump = self._iptc.Rule()
                    jump.create_match("addrtype").dst_type = "LOCAL"
                    jump.create_match("comment").comment = PORTS_COMMENT
                    jump.target = self._iptc.Target(jump, PORTS_CHAIN)
                    self._iptc.Chain(table, hook).insert_rule(jump, 0)
            chain = self._iptc.Chain(table, PORTS_CHAIN)
            for mapping in ports.mappings:
                rule = self._iptc.Rule()
                rule.protocol = mapping.proto
                if mapping.host_ip is not None:
                    rule.dst = str(mapping.host_ip)
                rule.create_match(mapping.proto).dport = str(mapping.host_port)
                rule.create_match("comment").comment = ports.comment
                rule.target = self._iptc.Target(rule, "DNAT")
                rule.target.to_destination = f"{ports.address}:{mapping.port}"
                chain.append_rule(rule)
            self._commit(table)

    def remove_ports(self, sandbox_id: str) -> None:
        with self._errors("removing published ports"), xtables_lock():
            table = self._table(_NAT)
            if not table.is_chain(PORTS_CHAIN):
                return
            chain = self._iptc.Chain(table, PORTS_CHAIN)
            for rule in self._ours(chain, SANDBOX_COMMENT_PREFIX + sandbox_id):
                chain.delete_rule(rule)
            if len(chain.rules) == 0:
                for hook in ("PREROUTING", "OUTPUT"):
                    builtin = self._iptc.Chain(table, hook)
                    for rule in self._ours(builtin, PORTS_COMMENT):
                        builtin.delete_rule(rule)
                table.delete_chain(PORTS_CHAIN)
            self._commit(table)

    def published(self) -> set[str]:
        """The sandbox ids with published-port rules here."""
        with self._errors("reading published ports"):
            table = self._table(_NAT)
            if not table.is_chain(PORTS_CHAIN):
                return set()
            found = set()
            for rule in self._iptc.Chain(table, PORTS_CHAIN).rules:
                for match in rule.matches:
                    if match.name == "comment" and match.comment.startswith(SANDBOX_COMMENT_PREFIX):
                        found.add(match.comment[len(SANDBOX_COMMENT_PREFIX) :])
            return found

    # -- another tool's FORWARD policy DROP in the legacy tables --------------------------------

    def foreign_drops(self) -> list[ForeignChain]:
        with self._errors("reading the legacy FORWARD chain"):
            table = self._table(_FILTER)
            if table.get_policy(Hook.FORWARD.value)[0].name != "DROP":
                return []
            user = DOCKER_USER if table.is_chain(DOCKER_USER) else None
            return [ForeignChain("legacy", _FILTER, Hook.FORWARD.value, user)]

    def accepts_in_place(self, rules: NetworkRules, chain: ForeignChain) -> bool:
        with self._errors(f"reading {chain.describe()}"):
            table = self._table(_FILTER)
            target = self._iptc.Chain(table, accept_target(chain))
            return len(self._ours(target, rules.comment)) == len(rules.accepts)

    def ensure_accepts(self, rules: NetworkRules, chain: ForeignChain) -> bool:
        with self._errors(f"adding nsrun's accepts to {chain.describe()}"), xtables_lock():
            table = self._table(_FILTER)
            target = self._iptc.Chain(table, accept_target(chain))
            present = self._ours(target, rules.comment)
            if len(present) == len(rules.accepts):
                return False
            for rule in present:
                target.delete_rule(rule)
            for rule in reversed(rules.accepts):
                target.insert_rule(self._render(rule), 0)
            self._commit(table)
            return True

    def remove_accepts(self, rules: NetworkRules) -> None:
        with self._errors(f"removing nsrun's legacy accepts of network {rules.network!r}"), xtables_lock():
            table = self._table(_FILTER)
            found = False
            for name in (Hook.FORWARD.value, DOCKER_USER):
                if not table.is_chain(name):
                    continue
                chain = self._iptc.Chain(table, name)
                for rule in self._ours(chain, rules.comment):
                    chain.delete_rule(rule)
                    found = True
            if found:
                self._commit(table)

    def orphans(self, known: set[str]) -> list[tuple[str, str]]:
        """(network, exact fix) for every network with legacy rules here but no definition."""
        places = (
            (_FILTER, (FORWARD_CHAIN, Hook.FORWARD.value, DOCKER_USER)),
            (_NAT, (POSTROUTING_CHAIN,)),
            (_RAW, (GUARD_CHAIN,)),
            (_FILTER, (INPUT_CHAIN,)),
        )
        fixes: dict[str, list[str]] = {}
        with self._errors("reading the legacy rules"):
            for table_name, chains in places:
                table = self._table(table_name)
                for chain_name in chains:
                    if not table.is_chain(chain_name):
                        continue
                    for rule in self._iptc.Chain(table, chain_name).rules:
                        comment = next((m.comment for m in rule.matches if m.name == "comment"), "")
                        network = comment[len(COMMENT_PREFIX) :] if comment.startswith(COMMENT_PREFIX) else None
                        if comment == _LEGACY_PORTS_COMMENT:
                            network = None
                        if network is None or network in known:
                            continue
                        fix = (
                            f"iptables-legacy -t {table_name} -S {chain_name} | grep -F '\"{comment}\"' "
                            f"| sed 's/^-A/-D/' | xargs -L1 iptables-legacy -t {table_name}"
                        )
                        if fix not in fixes.setdefault(network, []):
                            fixes[network].append(fix)
        return [(network, "; ".join(commands)) for network, commands in sorted(fixes.items())]

    # -- one table ------------------------------------------------------------------------------

    def _ensure(
        self, table_name: str, hook: Hook, chain_name: str, rules: NetworkRules, placed: tuple[tuple[Rule, ...], ...]
    ) -> bool:
        """`placed` is (head, tail): head rules go to the top of nsrun's chain, tail rules to its end."""
        head, tail = placed
        table = self._table(table_name)
        if self._in_place(table, hook, chain_name, head + tail, rules):
            return False
        iptc = self._iptc
        if not table.is_chain(chain_name):
            table.create_chain(chain_name)
        if not self._has_jump(table, hook.value, chain_name):
            iptc.Chain(table, hook.value).insert_rule(self._jump(chain_name), 0)
        chain = iptc.Chain(table, chain_name)
        for rule in self._ours(chain, rules.comment):
            chain.delete_rule(rule)
        for rule in reversed(head):
            chain.insert_rule(self._render(rule), 0)
        for rule in tail:
            chain.append_rule(self._render(rule))
        self._commit(table)
        return True

    def _teardown(self, table_name: str, hook: Hook, chain_name: str, rules: NetworkRules) -> None:
        table = self._table(table_name)
        if not table.is_chain(chain_name):
            return
        chain = self._iptc.Chain(table, chain_name)
        ours = self._ours(chain, rules.comment)
        for rule in ours:
            chain.delete_rule(rule)
        if len(chain.rules) == 0:
            # the last nsrun network is gone: leave nothing of nsrun in the table
            if self._has_jump(table, hook.value, chain_name):
                self._iptc.Chain(table, hook.value).delete_rule(self._jump(chain_name))
            table.delete_chain(chain_name)
        elif not ours:
            return
        self._commit(table)

    def _in_place(
        self, table: Any, hook: Hook, chain_name: str, expected: tuple[Rule, ...], rules: NetworkRules
    ) -> bool:
        if not table.is_chain(chain_name) or not self._has_jump(table, hook.value, chain_name):
            return False
        current = self._ours(self._iptc.Chain(table, chain_name), rules.comment)
        return [self._canonical(r) for r in current] == [self._canonical(self._render(r)) for r in expected]

    # -- helpers --------------------------------------------------------------------------------

    def _table(self, name: str) -> Any:
        table = self._iptc.Table(name)
        table.autocommit = False
        table.refresh()
        return table

    @staticmethod
    def _commit(table: Any) -> None:
        table.commit()
        table.refresh()

    @staticmethod
    def _has_jump(table: Any, builtin: str, chain_name: str) -> bool:
        # walks raw entries in C: decoding a busy host's built-in chain into Rule objects is slow
        entry = table.first_rule(builtin)
        while entry:
            target = table.get_target(entry)
            if target and target.decode() == chain_name:
                return True
            entry = table.next_rule(entry)
        return False

    def _canonical(self, rule: Any) -> dict[str, Any]:
        # iptc's Rule.__eq__ does not match a decoded rule against a freshly built one
        decoded: dict[str, Any] = self._iptc.easy.decode_iptc_rule(rule)
        decoded.pop("counters", None)
        return decoded

    def _jump(self, chain_name: str) -> Any:
        rule = self._iptc.Rule()
        rule.create_match("comment").comment = JUMP_COMMENT
        rule.target = self._iptc.Target(rule, chain_name)
        return rule

    @staticmethod
    def _ours(chain: Any, comment: str) -> list[Any]:
        return [rule for rule in chain.rules if any(m.name == "comment" and m.comment == comment for m in rule.matches)]

    def _render(self, rule: Rule) -> Any:
        out = self._iptc.Rule()
        if rule.in_iface:
            out.in_interface = ("!" if rule.in_iface_negated else "") + rule.in_iface
        if rule.out_iface:
            out.out_interface = ("!" if rule.out_iface_negated else "") + rule.out_iface
        if rule.source:
            out.src = ("!" if rule.source_negated else "") + str(rule.source)
        if rule.destination:
            out.dst = str(rule.destination)
        if rule.dest_negated:
            out.dst = f"!{rule.dest_negated}"
        if rule.ctstates:
            out.create_match("conntrack").ctstate = ",".join(rule.ctstates)
        out.create_match("comment").comment = rule.comment
        out.target = self._iptc.Target(out, rule.verdict.value)
        return out

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (self._iptc.IPTCError, self._iptc.XTablesError) as err:
            raise NsrunError(action, str(err), "run `nsrun doctor` to check the kernel's ip_tables support") from err
