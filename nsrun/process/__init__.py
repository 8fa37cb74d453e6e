"""Processes: namespaces through libc, the supervised command, and who is still alive."""
