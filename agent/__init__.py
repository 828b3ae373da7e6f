"""Blindspot host agent: kernel sources (eBPF via bcc) that turn socket activity into records."""
