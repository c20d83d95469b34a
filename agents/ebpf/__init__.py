"""Live capture on the node: a CO-RE BPF program on syscall tracepoints (agents/bpf/svctrace.bpf.c),
loaded through libbpf1 via ctypes, its ring buffer decoded into `SyscallEvent`s.

Entry points: `loader.EbpfCapture` / `loader.CaptureConfig`, `records.Normalizer`,
`python -m svctrace.agents.ebpf.build`.
"""
