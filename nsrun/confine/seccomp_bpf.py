"""Compiles the seccomp policy to a BPF program with libseccomp; the only module importing it.

The program is built once per process (libseccomp's own generator, never hand-assembled) and
handed to the sandbox's processes as bytes, which load it with one prctl: they need no libseccomp.
"""

from __future__ import annotations

import functools
import os

from nsrun.confine.seccomp_policy import SyscallRule, sandbox_rules
from nsrun.errors import NsrunError

__all__ = ["sandbox_filter"]


def _compile(rules: tuple[SyscallRule, ...]) -> bytes:
    try:
        import seccomp
    except ImportError as err:
        raise NsrunError(
            "loading libseccomp's Python binding",
            str(err),
            "install the python3-seccomp package (scripts/setup.sh does), or pass --security-opt seccomp=unconfined",
        ) from err
    program = seccomp.SyscallFilter(seccomp.ALLOW)
    for rule in rules:
        try:
            number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, rule.syscall)
        except (ValueError, RuntimeError):
            continue  # not a system call of this architecture: nothing to refuse
        if number < 0:
            continue
        args = []
        if rule.arg is not None:
            args.append(seccomp.Arg(rule.arg.index, seccomp.MASKED_EQ, rule.arg.mask, rule.arg.value))
        program.add_rule(seccomp.ERRNO(rule.errno), rule.syscall, *args)
    fd = os.memfd_create("nsrun-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as sink:
        program.export_bpf(sink)
        sink.seek(0)
        return sink.read()


@functools.cache
def sandbox_filter() -> bytes:
    """The BPF program of the default policy."""
    return _compile(sandbox_rules())
