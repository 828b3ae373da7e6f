/* The connection behind a file descriptor of the current task: fd -> struct file -> struct socket ->
 * struct sock, with every offset from the running kernel's BTF (-D BS_OFF_*, agent/btf.py). Shared by
 * http_trace.c and go_tls.c. */
#ifndef BS_SOCK_ADDRS_H
#define BS_SOCK_ADDRS_H

struct bs_sock_addrs {
	__u16 family; /* AF_INET (2) or AF_INET6 (10) */
	__u16 sport;  /* host byte order */
	__u16 dport;  /* host byte order */
};

/* 1 with the addresses in saddr/daddr (4 or 16 bytes) and family and ports in *out; 0 when fd is not
 * an IPv4/IPv6 socket of this task (or any read on the way fails). */
static __always_inline int bs_fd_addrs(int fd, void *saddr, void *daddr, struct bs_sock_addrs *out)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	void *files = 0, *fdt = 0, **fdarr = 0, *file = 0, *sock = 0, *sk = 0, *fops = 0;
	unsigned int max_fds = 0;
	if (fd < 0)
		return 0;
	bpf_probe_read_kernel(&files, sizeof(files), (char *)task + BS_OFF_TASK_FILES);
	if (!files)
		return 0;
	bpf_probe_read_kernel(&fdt, sizeof(fdt), (char *)files + BS_OFF_FILES_FDT);
	if (!fdt)
		return 0;
	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (char *)fdt + BS_OFF_FDT_MAX_FDS);
	if ((unsigned int)fd >= max_fds)
		return 0;
	bpf_probe_read_kernel(&fdarr, sizeof(fdarr), (char *)fdt + BS_OFF_FDT_FD);
	bpf_probe_read_kernel(&file, sizeof(file), (char *)(fdarr + fd));
	if (!file)
		return 0;
#if BS_SOCKET_FILE_OPS
	bpf_probe_read_kernel(&fops, sizeof(fops), (char *)file + BS_OFF_FILE_F_OP);
	if ((__u64)fops != BS_SOCKET_FILE_OPS)
		return 0;
#endif
	bpf_probe_read_kernel(&sock, sizeof(sock), (char *)file + BS_OFF_FILE_PRIVATE);
	if (!sock)
		return 0;
	bpf_probe_read_kernel(&sk, sizeof(sk), (char *)sock + BS_OFF_SOCKET_SK);
	if (!sk)
		return 0;
	__u16 family = 0, dport = 0, num = 0;
	bpf_probe_read_kernel(&family, sizeof(family), (char *)sk + BS_OFF_SKC_FAMILY);
	bpf_probe_read_kernel(&dport, sizeof(dport), (char *)sk + BS_OFF_SKC_DPORT);
	bpf_probe_read_kernel(&num, sizeof(num), (char *)sk + BS_OFF_SKC_NUM);
	if (family == 2) {
		bpf_probe_read_kernel(saddr, 4, (char *)sk + BS_OFF_SKC_RCV_SADDR);
		bpf_probe_read_kernel(daddr, 4, (char *)sk + BS_OFF_SKC_DADDR);
	} else if (family == 10) {
		bpf_probe_read_kernel(saddr, 16, (char *)sk + BS_OFF_SKC_V6_RCV_SADDR);
		bpf_probe_read_kernel(daddr, 16, (char *)sk + BS_OFF_SKC_V6_DADDR);
	} else {
		return 0;
	}
	out->family = family;
	out->sport = num;
	out->dport = __builtin_bswap16(dport);
	return 1;
}

#endif
