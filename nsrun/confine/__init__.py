"""What a sandboxed command may do, decided as data: its capabilities and its seccomp policy.
The policy is pure; `seccomp_bpf` (the only libseccomp user) compiles it, and the sandbox's own
processes apply the result (`nsrun.process.confinement`)."""
