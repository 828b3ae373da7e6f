// SPDX-License-Identifier: Apache-2.0
// The plaintext of Go's crypto/tls connections (agent/go_tls_source.py): an entry uprobe on
// crypto/tls.(*Conn).Write (the bytes to encrypt are the arguments), an entry uprobe on (*Conn).Read
// (remembers the buffer, per goroutine) and uprobes on each RET instruction of (*Conn).Read (the
// buffer now holds RAX bytes of plaintext). No uretprobes: Go moves goroutine stacks, and a
// uretprobe's return-address trampoline crashes the runtime. One record per call goes to user space,
// which rebuilds HTTP/1 exchanges from them. Every hit costs a uprobe (~19 us here): off by default.
//
// Options (-D from agent/go_tls_source.py): BS_TLS_RINGBUF_PAGES, BS_TLS_DATA_MAX, the kernel offsets
// of the fd -> socket walk (BS_OFF_*, from BTF) and BS_SOCKET_FILE_OPS, as bpf/http_trace.c takes them.
#include <uapi/linux/ptrace.h>
#include "go_tls_event.h"
#include "bound.h"
#include "sock_addrs.h"

struct tls_proc {
	__s16 tcpconn_fd, netfd_sysfd; // Go struct field offsets of this process's binary; -1 unknown
	// gRPC linking (agent/grpc_link_binary.py, from DWARF); g_goid -1: not linked
	__s16 g_goid, stream_id, stream_ct, h2s_conn, h2c_conn;
	__s16 _pad;
};

struct grpc_g_key {
	__u32 pid;
	__u32 _pad;
	__u64 goid;
};

struct grpc_inbound {
	__u64 conn;
	__u32 sid;
	__u32 _pad;
};

struct read_key {
	__u32 pid;
	__u32 plain; // 0: crypto/tls Read, 1: net.(*conn).Read (tls's Read calls it on the same goroutine)
	__u64 goroutine;
};

struct conn_key {
	__u32 pid;
	__u32 _pad;
	__u64 conn;
};

struct read_arg {
	__u64 conn;
	__u64 buf;
};

BPF_HASH(tls_pids, __u32, struct tls_proc, 4096);             // traced tgids (user space fills)
BPF_HASH(tls_reads, struct read_key, struct read_arg, 16384);  // Read in progress, per goroutine
BPF_TABLE("lru_hash", struct conn_key, __u8, h2c_conns, 16384); // cleartext conns that sent the preface
BPF_TABLE("lru_hash", struct conn_key, __u8, h2_tls_conns, 16384); // TLS conns whose plaintext began with it
BPF_TABLE("lru_hash", struct grpc_g_key, struct grpc_inbound, grpc_inbound, 16384); // handler goroutine -> stream
BPF_PERCPU_ARRAY(tls_scratch, struct tls_event, 1);
BPF_PERCPU_ARRAY(tls_stats, __u64, BS_TLS_STAT_N);
BPF_RINGBUF_OUTPUT(tls_events, BS_TLS_RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(tls_procs, 16);


static __always_inline void count(int slot)
{
	__u64 *v = tls_stats.lookup(&slot);
	if (v)
		(*v)++;
}

// *tls.Conn -> its net.Conn (interface at offset 0: the data word is a *net.TCPConn) -> fd; a
// *net.conn (plain) is the TCPConn's first field already.
static __always_inline int conn_fd(const struct tls_proc *tp, void *conn, int plain)
{
	void *tcpconn = conn, *netfd = 0;
	long sysfd = -1;
	if (tp->tcpconn_fd < 0 || tp->netfd_sysfd < 0)
		return -1;
	if (!plain)
		bpf_probe_read_user(&tcpconn, sizeof(tcpconn), (char *)conn + 8);
	if (!tcpconn)
		return -1;
	bpf_probe_read_user(&netfd, sizeof(netfd), (char *)tcpconn + tp->tcpconn_fd);
	if (!netfd)
		return -1;
	bpf_probe_read_user(&sysfd, sizeof(sysfd), (char *)netfd + tp->netfd_sysfd);
	return (int)sysfd;
}

// fd -> struct file -> struct socket -> struct sock: the connection's addresses (offsets from BTF).
static __always_inline void read_addrs(struct tls_event *e, int fd)
{
	struct bs_sock_addrs a = {};
	if (!bs_fd_addrs(fd, e->saddr, e->daddr, &a))
		return;
	e->family = a.family;
	e->sport = a.sport;
	e->dport = a.dport;
	e->flags |= BS_TLS_F_ADDR;
}

// One data record into the ring. Refused: full, or rarely with room to spare (seen on 6.18, see
// bpf/tcp_lifecycle.c); a second try saves the record then.
static __always_inline void output(void *e, __u64 size)
{
	long err = tls_events.ringbuf_output(e, size, 0);
	if (err) {
		err = tls_events.ringbuf_output(e, size, 0);
		if (!err)
			count(BS_TLS_STAT_RINGBUF_RETRIED);
	}
	count(err ? BS_TLS_STAT_LOST_RINGBUF : BS_TLS_STAT_EMITTED);
}

static __always_inline void send(struct pt_regs *ctx, const struct tls_proc *tp, __u64 conn, const void *buf,
				 __u64 len, __u8 dir, int plain)
{
	int z = 0;
	struct tls_event *e = tls_scratch.lookup(&z);
	if (!e)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	e->kind = BS_TLS_DATA;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->ts_ns = bpf_ktime_get_ns();
	e->conn = conn;
	e->goroutine = ctx->r14;
	e->len = len > 0xffffffffULL ? 0xffffffffU : (__u32)len;
	e->dir = dir;
	e->flags = plain ? BS_TLS_F_PLAIN : 0;
	e->family = 0;
	e->sport = 0;
	e->dport = 0;
	e->fd = conn_fd(tp, (void *)conn, plain);
	read_addrs(e, e->fd);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	__u64 n = len;
	if (n > BS_TLS_DATA_MAX) {
		n = BS_TLS_DATA_MAX;
		e->flags |= BS_TLS_F_CUT;
	}
	BOUND(n, BS_TLS_DATA_MAX);
	if (bpf_probe_read_user(e->data, n, buf) != 0)
		n = 0;
	e->data_len = n;
	// HTTP/2 (h2c, or TLS whose plaintext began with the preface): a call longer than one record goes on
	// in up to BS_TLS_CHUNKS records (F_MORE / F_CONT), so that frame headers past the first 16 KiB
	// (grpc-go writes batches of frames) are seen. HTTP/1 needs only the head: one record.
	struct conn_key ck = {.pid = e->pid, .conn = conn};
	if (!plain && n >= 8 && e->data[0] == 'P' && e->data[1] == 'R' && e->data[2] == 'I' && e->data[3] == ' ' &&
	    e->data[4] == '*' && e->data[5] == ' ' && e->data[6] == 'H' && e->data[7] == 'T') {
		__u8 one = 1;
		h2_tls_conns.update(&ck, &one);
	}
	int more = len > BS_TLS_DATA_MAX && BS_TLS_CHUNKS > 1 && n == BS_TLS_DATA_MAX &&
		   (plain || h2_tls_conns.lookup(&ck));
	if (more)
		e->flags |= BS_TLS_F_MORE;
	__u64 size = BS_TLS_HEADER_SIZE + n;
	BOUND(size, sizeof(*e));
	output(e, size);
	for (int i = 1; i < BS_TLS_CHUNKS; i++) {
		if (!more)
			break;
		__u64 off = (__u64)i * BS_TLS_DATA_MAX;
		__u64 rest = len - off;
		more = rest > BS_TLS_DATA_MAX && i + 1 < BS_TLS_CHUNKS;
		e->len = rest;
		e->flags = (plain ? BS_TLS_F_PLAIN : 0) | (e->flags & BS_TLS_F_ADDR) | BS_TLS_F_CONT |
			   (more ? BS_TLS_F_MORE : 0) | (rest > BS_TLS_DATA_MAX ? BS_TLS_F_CUT : 0);
		n = rest > BS_TLS_DATA_MAX ? BS_TLS_DATA_MAX : rest;
		BOUND(n, BS_TLS_DATA_MAX);
		if (bpf_probe_read_user(e->data, n, (const char *)buf + off) != 0) {
			n = 0; // the rest of the call is a gap (len > data_len): the decoder marks what it loses
			more = 0;
			e->flags = (e->flags & ~BS_TLS_F_MORE) | BS_TLS_F_CUT;
		}
		e->data_len = n;
		size = BS_TLS_HEADER_SIZE + n;
		BOUND(size, sizeof(*e));
		output(e, size);
	}
}

// crypto/tls.(*Conn).Write(c, b []byte): RAX = c, RBX = b's data, RCX = its length (Go >= 1.17 ABI).
int uprobe_tls_write(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_proc *tp = tls_pids.lookup(&tgid);
	if (!tp)
		return 0;
	count(BS_TLS_STAT_HITS);
	if ((long)ctx->cx <= 0)
		return 0;
	send(ctx, tp, ctx->ax, (void *)ctx->bx, ctx->cx, BS_TLS_WRITE, 0);
	return 0;
}

// crypto/tls.(*Conn).Read(c, b []byte) entry: remember c and b for this goroutine's return.
// Entry of a Read (plain 0: crypto/tls.(*Conn).Read, 1: net.(*conn).Read): the buffer is remembered by
// (process, goroutine) until one of the function's RETs.
static __always_inline int read_entry(struct pt_regs *ctx, __u32 plain)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!tls_pids.lookup(&tgid))
		return 0;
	count(BS_TLS_STAT_HITS);
	struct read_key k = {.pid = tgid, .plain = plain, .goroutine = ctx->r14};
	struct read_arg a = {.conn = ctx->ax, .buf = ctx->bx};
	if (tls_reads.update(&k, &a))
		count(BS_TLS_STAT_AUX_FULL);
	return 0;
}

// At a RET of a Read: RAX = n, the buffer remembered at entry holds n bytes. Returns n (> 0: something
// to send, with *tp and *arg set), else 0.
static __always_inline long read_return(struct pt_regs *ctx, __u32 tgid, __u32 plain, struct tls_proc **tp,
					struct read_arg *arg)
{
	*tp = tls_pids.lookup(&tgid);
	if (!*tp)
		return 0;
	count(BS_TLS_STAT_HITS);
	struct read_key k = {.pid = tgid, .plain = plain, .goroutine = ctx->r14};
	struct read_arg *a = tls_reads.lookup(&k);
	if (!a) {
		count(BS_TLS_STAT_READ_LOST);
		return 0;
	}
	*arg = *a;
	tls_reads.delete(&k);
	long n = (long)ctx->ax;
	return n > 0 ? n : 0;
}

int uprobe_tls_read(struct pt_regs *ctx)
{
	return read_entry(ctx, 0);
}

// At a RET of (*Conn).Read: the plaintext.
int uprobe_tls_read_ret(struct pt_regs *ctx)
{
	struct tls_proc *tp = 0;
	struct read_arg arg = {};
	long n = read_return(ctx, bpf_get_current_pid_tgid() >> 32, 0, &tp, &arg);
	if (n > 0 && tp)
		send(ctx, tp, arg.conn, (void *)arg.buf, n, BS_TLS_READ, 0);
	return 0;
}

// Cleartext: net.(*conn).Read / Write of every connection, but only connections that began with the
// HTTP/2 client preface ("PRI * HTTP/2.0...", read by a server or written by a client) go on to
// user space; HTTP/1 stays with bpf/http_trace.c and TLS ciphertext is dropped here.
static __always_inline int h2c_conn(__u32 tgid, __u64 conn, const void *buf, long n)
{
	struct conn_key k = {.pid = tgid, .conn = conn};
	if (h2c_conns.lookup(&k))
		return 1;
	char p[8] = {};
	if (n < 8)
		return 0;
	bpf_probe_read_user(p, 8, buf);
	if (!(p[0] == 'P' && p[1] == 'R' && p[2] == 'I' && p[3] == ' ' && p[4] == '*' && p[5] == ' ' && p[6] == 'H' &&
	      p[7] == 'T')) {
		// An HTTP/2 frame header (length <= 16384, type <= 9) on a connection not seen from its start
		// (it began before the agent): not decodable (HPACK state unknown), counted. HTTP/1 text and
		// TLS records never match (their first 3 bytes as a length are far above 16384).
		__u32 flen = ((__u32)(__u8)p[0] << 16) | ((__u32)(__u8)p[1] << 8) | (__u8)p[2];
		if (n >= 9 && flen <= 16384 && (__u8)p[3] <= 9)
			count(BS_TLS_STAT_H2C_UNTRACKED);
		return 0;
	}
	__u8 one = 1;
	h2c_conns.update(&k, &one);
	count(BS_TLS_STAT_H2C_CONNS);
	return 1;
}

int uprobe_net_write(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_proc *tp = tls_pids.lookup(&tgid);
	if (!tp)
		return 0;
	count(BS_TLS_STAT_HITS);
	if ((long)ctx->cx <= 0 || !h2c_conn(tgid, ctx->ax, (void *)ctx->bx, (long)ctx->cx))
		return 0;
	send(ctx, tp, ctx->ax, (void *)ctx->bx, ctx->cx, BS_TLS_WRITE, 1);
	return 0;
}

int uprobe_net_read(struct pt_regs *ctx)
{
	return read_entry(ctx, 1);
}

int uprobe_net_read_ret(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_proc *tp = 0;
	struct read_arg arg = {};
	long n = read_return(ctx, tgid, 1, &tp, &arg);
	if (n > 0 && tp && h2c_conn(tgid, arg.conn, (void *)arg.buf, n))
		send(ctx, tp, arg.conn, (void *)arg.buf, n, BS_TLS_READ, 1);
	return 0;
}

// gRPC linking (grpc-go; offsets from DWARF, agent/grpc_link_binary.py). The entry of
// grpc.(*Server).handleStream(s, t ServerTransport, stream *Stream, ...) begins the goroutine grpc-go
// starts for each inbound stream: RCX = t's data word (*http2Server), RDI = stream. Remember its
// (connection, stream id) by (process, goroutine id); goroutine ids are never reused.
static __always_inline __u64 go_goid(const struct tls_proc *tp, struct pt_regs *ctx)
{
	__u64 goid = 0;
	bpf_probe_read_user(&goid, sizeof(goid), (char *)ctx->r14 + tp->g_goid);
	return goid;
}

int uprobe_grpc_handle(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_proc *tp = tls_pids.lookup(&tgid);
	if (!tp)
		return 0;
	count(BS_TLS_STAT_HITS);
	if (tp->g_goid < 0 || tp->h2s_conn < 0 || tp->stream_id < 0)
		return 0;
	struct grpc_g_key k = {.pid = tgid, .goid = go_goid(tp, ctx)};
	struct grpc_inbound v = {};
	bpf_probe_read_user(&v.conn, sizeof(v.conn), (char *)ctx->cx + tp->h2s_conn);
	bpf_probe_read_user(&v.sid, sizeof(v.sid), (char *)ctx->di + tp->stream_id);
	if (!k.goid || !v.conn)
		return 0;
	grpc_inbound.update(&k, &v);
	count(BS_TLS_STAT_GRPC_INBOUND);
	return 0;
}

// At a RET of transport.(*http2Client).NewStream (RAX = the new *Stream, nil on error; its id was
// assigned on this goroutine): if this goroutine began at handleStream, the outbound stream is that
// inbound stream's call. One record, in tls_events' order.
int uprobe_grpc_newstream_ret(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_proc *tp = tls_pids.lookup(&tgid);
	if (!tp)
		return 0;
	count(BS_TLS_STAT_HITS);
	if (!ctx->ax || tp->g_goid < 0 || tp->stream_ct < 0 || tp->h2c_conn < 0 || tp->stream_id < 0)
		return 0;
	struct grpc_g_key k = {.pid = tgid, .goid = go_goid(tp, ctx)};
	struct grpc_inbound *in = grpc_inbound.lookup(&k);
	if (!in) {
		count(BS_TLS_STAT_GRPC_NO_HANDLER);
		return 0;
	}
	struct grpc_link_event *r = tls_events.ringbuf_reserve(sizeof(struct grpc_link_event));
	if (!r) { // refused (seen with room to spare, 6.18): once more before it is a loss
		r = tls_events.ringbuf_reserve(sizeof(struct grpc_link_event));
		if (r)
			count(BS_TLS_STAT_RINGBUF_RETRIED);
	}
	if (!r) {
		count(BS_TLS_STAT_LOST_RINGBUF);
		return 0;
	}
	void *ct = 0;
	r->kind = BS_TLS_GRPC_LINK;
	r->pid = tgid;
	r->ts_ns = bpf_ktime_get_ns();
	r->goid = k.goid;
	r->in_conn = in->conn;
	r->in_sid = in->sid;
	r->out_conn = 0;
	r->out_sid = 0;
	bpf_probe_read_user(&r->out_sid, sizeof(r->out_sid), (char *)ctx->ax + tp->stream_id);
	bpf_probe_read_user(&ct, sizeof(ct), (char *)ctx->ax + tp->stream_ct);
	if (ct)
		bpf_probe_read_user(&r->out_conn, sizeof(r->out_conn), (char *)ct + tp->h2c_conn);
	tls_events.ringbuf_submit(r, 0);
	count(BS_TLS_STAT_GRPC_LINKS);
	return 0;
}

// Every exec: user space decides whether the new program is Go with crypto/tls.
TRACEPOINT_PROBE(sched, sched_process_exec)
{
	struct tls_proc_event *r = tls_procs.ringbuf_reserve(sizeof(struct tls_proc_event));
	if (!r) { // refused (seen with room to spare, 6.18): once more before it is a loss
		r = tls_procs.ringbuf_reserve(sizeof(struct tls_proc_event));
		if (r)
			count(BS_TLS_STAT_RINGBUF_RETRIED);
	}
	if (!r) {
		count(BS_TLS_STAT_LOST_RINGBUF);
		return 0;
	}
	r->kind = BS_TLS_PROC_EXEC;
	r->pid = bpf_get_current_pid_tgid() >> 32;
	tls_procs.ringbuf_submit(r, 0);
	return 0;
}
