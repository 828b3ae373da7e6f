// SPDX-License-Identifier: Apache-2.0
// HTTP/1 request lifecycles from the read/write syscall tracepoints of traced processes, plus two
// optional Go uprobes for what the bytes do not show (the ServeMux route, and which goroutine made an
// outbound request). The syscall path is cheap (a hash lookup per syscall of untraced processes) and
// reads only the first bytes of a request/response head; one record per exchange goes to user space,
// which parses the head. Losses are counted in `stats`.
//
// Options come as -D defines from agent/http_source.py:
//   BS_HTTP_MAX_CONNS, BS_RINGBUF_PAGES, BS_HTTP_HEAD_MAX    sizes
//   BS_OFF_TASK_FILES, BS_OFF_FILES_FDT, BS_OFF_FDT_MAX_FDS, byte offsets of kernel struct fields,
//   BS_OFF_FDT_FD, BS_OFF_FILE_PRIVATE, BS_OFF_FILE_F_OP,    from the running kernel's BTF
//   BS_OFF_SOCKET_SK, BS_OFF_SKC_*                           (fd -> struct sock -> addresses)
//   BS_SOCKET_FILE_OPS                                       &socket_file_ops (kallsyms), 0 = unchecked
//   BS_GO_UPROBES                                            compile the Go uprobe programs
//   BS_OFF_TASK_MM, BS_OFF_MM_EXE_FILE, BS_OFF_FILE_F_INODE, the executable's inode at exec (BTF)
//   BS_OFF_INODE_I_INO, BS_OFF_INODE_I_SB, BS_OFF_SB_S_DEV
//   BS_TRACE_ON_EXEC                                         trace a process from its exec (1), or only
//                                                            once user space adds it (0: a pid allow-list)
#include <uapi/linux/ptrace.h>
#include "http_event.h"
#include "bound.h"
#include "sock_addrs.h"

struct go_proc {
	// Go struct field offsets for this process's binary (DWARF or per-version table); -1 = unknown.
	__s16 response_conn, response_req, conn_rwc, req_pattern, req_pat, pattern_str;
	__s16 persistconn_conn, tcpconn_fd, netfd_sysfd;
	__u16 state; // BS_GO_*
};

// An executable file, as the kernel names it: uprobes belong to the file, and every process of one
// file shares its offsets.
struct exe_key {
	__u64 dev; // super_block s_dev
	__u64 ino;
};

struct inflight {
	__u64 buf;
	__u64 count; // bytes asked for: Go's server background read asks for exactly 1
	__s32 fd;
	__u32 is_write;
};

struct conn_state {
	struct http_event ev; // the exchange in progress; copied to the ring buffer when it ends
	__u8 active;
	__u8 addr_done;
	__u8 held;      // a 1-byte read after a response: maybe the first byte of the next head
	__u8 held_byte;
	__u32 _pad;
};

struct go_client_mark {
	__u64 goroutine;
};

BPF_HASH(pids, __u32, struct go_proc, 4096);                    // traced tgids (exec, or user space)
// Executables user space has read: Go ones with their offsets (a new process is traced from its exec,
// before it runs a single instruction), and those it does not trace. LRU: an evicted one is read again.
BPF_TABLE("lru_hash", struct exe_key, struct go_proc, exes, 4096);
// Unused since the exit probes read the syscall's arguments from its saved registers (issue 13); still
// declared (1 entry) because user space sweeps it by name (agent/http_source.py _forget_pid).
BPF_HASH(inflight_io, __u64, struct inflight, 1);
BPF_HASH(conns, __u64, struct conn_state, BS_HTTP_MAX_CONNS);   // tgid<<32|fd -> connection
BPF_HASH(client_marks, __u64, struct go_client_mark, 16384);    // tgid<<32|fd -> goroutine of roundTrip
BPF_HASH(flushed, __u64, __u64, 16384);                         // tgid<<32|fd -> start_ns user space emitted
BPF_PERCPU_ARRAY(zero_conn, struct conn_state, 1);              // template for new entries
BPF_PERCPU_ARRAY(stats, __u64, BS_HTTP_STAT_N);
BPF_RINGBUF_OUTPUT(events, BS_RINGBUF_PAGES); // struct http_event only: user space reads it at a fixed stride
BPF_RINGBUF_OUTPUT(proc_events, 256);           // struct http_proc (168 bytes: ~6,000 exec/exit records)


static __always_inline void count(int slot)
{
	__u64 *v = stats.lookup(&slot);
	if (v)
		(*v)++;
}

static __always_inline void emit(struct conn_state *st, __u8 reason)
{
	// User space emits exchanges that went idle without an end seen here (a keep-alive client
	// connection waiting for its next request); it leaves a marker so they are not sent twice.
	__u64 key = ((__u64)st->ev.pid << 32) | (__u32)st->ev.fd;
	__u64 *done = flushed.lookup(&key);
	if (done) {
		__u64 was = *done;
		flushed.delete(&key);
		if (was == st->ev.start_ns) {
			st->active = 0;
			return;
		}
	}
	st->ev.end_reason = reason;
	if (!st->ev.end_ns) // no response: it ended when the connection did (a handler panic, a reset)
		st->ev.end_ns = bpf_ktime_get_ns();
	// No wake-up: user space drains on a timer, never sleeps on this ring. Refused: full, or rarely
	// with room to spare (seen on 6.18, see bpf/tcp_lifecycle.c); a second try saves the record then.
	long err = events.ringbuf_output(&st->ev, sizeof(st->ev), BPF_RB_NO_WAKEUP);
	if (err) {
		err = events.ringbuf_output(&st->ev, sizeof(st->ev), BPF_RB_NO_WAKEUP);
		if (!err)
			count(BS_HTTP_STAT_RINGBUF_RETRIED);
	}
	count(err ? BS_HTTP_STAT_LOST_RINGBUF : BS_HTTP_STAT_EMITTED);
	st->active = 0;
}

// Request heads start with a method and a space; only the methods net/http and common clients send.
static __always_inline int is_method(const char *p)
{
	switch (p[0]) {
	case 'G': return p[1] == 'E' && p[2] == 'T' && p[3] == ' ';
	case 'P': return (p[1] == 'O' && p[2] == 'S' && p[3] == 'T') || (p[1] == 'U' && p[2] == 'T' && p[3] == ' ') ||
		         (p[1] == 'A' && p[2] == 'T' && p[3] == 'C');
	case 'H': return p[1] == 'E' && p[2] == 'A' && p[3] == 'D';
	case 'D': return p[1] == 'E' && p[2] == 'L' && p[3] == 'E';
	case 'O': return p[1] == 'P' && p[2] == 'T' && p[3] == 'I';
	case 'C': return p[1] == 'O' && p[2] == 'N' && p[3] == 'N';
	case 'T': return p[1] == 'R' && p[2] == 'A' && p[3] == 'C';
	}
	return 0;
}

static __always_inline int is_method_start(char c)
{
	return c == 'G' || c == 'P' || c == 'H' || c == 'D' || c == 'O' || c == 'C' || c == 'T';
}

static __always_inline int is_response(const char *p)
{
	return p[0] == 'H' && p[1] == 'T' && p[2] == 'T' && p[3] == 'P' && p[4] == '/' && p[5] == '1' && p[6] == '.';
}

// fd -> struct file -> struct socket -> struct sock: the connection's addresses, read once per
// connection. All offsets come from BTF.
static __always_inline void read_addrs(struct conn_state *st, int fd)
{
	struct bs_sock_addrs a = {};
	if (!bs_fd_addrs(fd, st->ev.saddr, st->ev.daddr, &a))
		return;
	st->ev.family = a.family;
	st->ev.sport = a.sport;
	st->ev.dport = a.dport;
	st->ev.flags |= BS_HTTP_F_ADDR;
}

// The arguments of the read/write/recvfrom/sendto this thread is returning from: x86-64 keeps the
// caller's registers in the task's pt_regs (fd, buf, count in rdi, rsi, rdx), and no syscall of
// these four changes them. Reading them at exit replaces a sys_enter probe and a map entry per
// syscall: a Go program's plain TCP traffic paid for both on every read and write (issue 13).
static __always_inline int exit_args(struct inflight *io, __u32 is_write)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	unsigned long r[3] = {}; // dx, si, di: adjacent in struct pt_regs, so one read
	if (!regs)
		return 0;
	_Static_assert(offsetof(struct pt_regs, di) == offsetof(struct pt_regs, dx) + 16, "pt_regs layout");
	bpf_probe_read_kernel(r, sizeof(r), &regs->dx);
	io->fd = (int)r[2];
	io->buf = r[1];
	io->count = r[0];
	io->is_write = is_write;
	return 1;
}

static __always_inline void start_exchange(struct conn_state *st, __u32 tgid, __u32 tid, int fd, long ret,
					   const void *buf, __u8 role, __u64 now)
{
	__u32 flags = st->ev.flags & BS_HTTP_F_ADDR;
	st->ev.kind = BS_HTTP_EXCHANGE;
	st->ev.pid = tgid;
	st->ev.tid = tid;
	st->ev.fd = fd;
	st->ev.start_ns = now;
	st->ev.resp_start_ns = 0;
	st->ev.end_ns = 0;
	st->ev.req_bytes = ret;
	st->ev.resp_bytes = 0;
	st->ev.goroutine = 0;
	st->ev.status_len = 0;
	st->ev.route_len = 0;
	st->ev.role = role;
	st->ev.end_reason = 0;
	st->ev.held_byte = 0;
	if (role == BS_HTTP_SERVER && st->held) {
		flags |= BS_HTTP_F_HELD_BYTE;
		st->ev.held_byte = st->held_byte;
		st->ev.req_bytes += 1;
	}
	st->held = 0;
	__u64 n = ret;
	if (n > BS_HTTP_HEAD_MAX) {
		n = BS_HTTP_HEAD_MAX;
		flags |= BS_HTTP_F_HEAD_TRUNC;
	}
	BOUND(n, BS_HTTP_HEAD_MAX);
	bpf_probe_read_user(st->ev.head, n, buf);
	st->ev.head_len = n;
	st->ev.flags = flags;
	bpf_get_current_comm(st->ev.comm, sizeof(st->ev.comm));
	if (role == BS_HTTP_CLIENT) {
		// The goroutine that called persistConn.roundTrip for this connection (Go uprobe).
		__u64 key = ((__u64)tgid << 32) | (__u32)fd;
		struct go_client_mark *m = client_marks.lookup(&key);
		if (m) {
			st->ev.goroutine = m->goroutine;
			st->ev.flags |= BS_HTTP_F_GO_CLIENT;
			client_marks.delete(&key);
		}
	}
	st->active = 1;
}

static __always_inline void io_exit(long ret, __u32 is_write)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!pids.lookup(&tgid))
		return;
	struct inflight io = {};
	if (!exit_args(&io, is_write))
		return;
	__u64 key = ((__u64)tgid << 32) | (__u32)io.fd;
	struct conn_state *st = conns.lookup(&key);
	__u64 now = bpf_ktime_get_ns();

	if (ret <= 0) {
		// A server reading for its next request (EAGAIN/EOF) after a response: that response is over.
		// Reads of exactly 1 byte are Go's background read while a handler runs: not an end.
		if (st && st->active && !io.is_write && io.count > 1 && st->ev.role == BS_HTTP_SERVER &&
		    st->ev.resp_bytes > 0)
			emit(st, BS_HTTP_END_IDLE);
		return;
	}
	char p[8] = {};
	__u64 pn = ret;
	BOUND(pn, 8);
	bpf_probe_read_user(p, pn, (void *)io.buf);

	int head = ret >= 4 && is_method(p);
	if (!head && st && st->held && !io.is_write && ret >= 3) {
		// The Go server's 1-byte background read may have taken the next head's first byte.
		char q[4] = {st->held_byte, p[0], p[1], p[2]};
		head = is_method(q);
		if (!head)
			st->held = 0;
	}
	if (head) {
		__u8 role = io.is_write ? BS_HTTP_CLIENT : BS_HTTP_SERVER;
		if (!st) {
			int z = 0;
			struct conn_state *tmpl = zero_conn.lookup(&z);
			if (!tmpl)
				return;
			tmpl->active = 0;
			tmpl->held = 0;
			tmpl->addr_done = 0;
			tmpl->ev.flags = 0;
			if (conns.insert(&key, tmpl) != 0) {
				count(BS_HTTP_STAT_LOST_MAP_FULL);
				return;
			}
			st = conns.lookup(&key);
			if (!st)
				return;
		} else if (st->active) {
			emit(st, BS_HTTP_END_NEXT);
		}
		if (!st->addr_done) {
			read_addrs(st, io.fd);
			st->addr_done = 1;
		}
		start_exchange(st, tgid, (__u32)id, io.fd, ret, (void *)io.buf, role, now);
		return;
	}
	if (!st)
		return;
	// Go's server reads 1 byte in the background while a handler runs; when the next request arrives
	// before that read is cancelled, it takes the head's first byte. Hold it for the next read.
	// The response's write may not be counted yet: its sys_exit can come after the client has read
	// the response and sent its next request (the writer preempted between the two). A method's first
	// letter is then held too; else the next request merged into this exchange and its row was lost,
	// uncounted: the likeliest way bench_http lost 2 of 160,001 rows at ~29k requests/s (issue 9).
	if (st->ev.role == BS_HTTP_SERVER && !io.is_write && io.count == 1 &&
	    (!st->active || st->ev.resp_bytes > 0 || is_method_start(p[0]))) {
		st->held = 1;
		st->held_byte = p[0];
		return;
	}
	if (!st->active)
		return;
	// Bytes moved toward the peer that answers belong to the response, the others to the request.
	int response_dir = (st->ev.role == BS_HTTP_SERVER) == (io.is_write != 0);
	if (!response_dir) {
		st->ev.req_bytes += ret;
		return;
	}
	if (st->ev.resp_bytes == 0) {
		if (!(ret >= 7 && is_response(p)))
			return;
		st->ev.resp_start_ns = now;
		__u64 n = ret;
		BOUND(n, BS_HTTP_STATUS_MAX);
		bpf_probe_read_user(st->ev.status, n, (void *)io.buf);
		st->ev.status_len = n;
	}
	st->ev.resp_bytes += ret;
	st->ev.end_ns = now;
}

TRACEPOINT_PROBE(syscalls, sys_exit_read) { io_exit(args->ret, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { io_exit(args->ret, 1); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { io_exit(args->ret, 0); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { io_exit(args->ret, 1); return 0; }

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!pids.lookup(&tgid))
		return 0;
	__u64 key = ((__u64)tgid << 32) | (__u32)args->fd;
	struct conn_state *st = conns.lookup(&key);
	if (!st)
		return 0;
	if (st->active)
		emit(st, BS_HTTP_END_CLOSE);
	conns.delete(&key);
	client_marks.delete(&key);
	flushed.delete(&key);
	return 0;
}

// A process record reserved in `proc_events` with its kind, pid and time; NULL (counted lost) when the
// ring refuses twice (refused with room to spare was seen on 6.18: the second try saves it then).
static __always_inline struct http_proc *new_proc_event(__u32 kind, __u32 pid)
{
	struct http_proc *r = proc_events.ringbuf_reserve(sizeof(struct http_proc));
	if (!r) {
		r = proc_events.ringbuf_reserve(sizeof(struct http_proc));
		if (r)
			count(BS_HTTP_STAT_RINGBUF_RETRIED);
	}
	if (!r) {
		count(BS_HTTP_STAT_LOST_RINGBUF);
		return 0;
	}
	r->kind = kind;
	r->pid = pid;
	r->ts_ns = bpf_ktime_get_ns();
	return r;
}

// Every exec. A Go executable user space has read before is traced here, from the exec on, with its
// offsets; one not read yet is traced at once too (pending: its requests are captured, user space
// reads the file and then fills the offsets or stops tracing it); one known not to be ours is not.
// The event tells user space which, with the file's identity.
TRACEPOINT_PROBE(sched, sched_process_exec)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	void *mm = 0, *file = 0, *inode = 0, *sb = 0;
	struct exe_key key = {};
	__u32 dev = 0, flags = 0;
	bpf_probe_read_kernel(&mm, sizeof(mm), (char *)task + BS_OFF_TASK_MM);
	if (mm)
		bpf_probe_read_kernel(&file, sizeof(file), (char *)mm + BS_OFF_MM_EXE_FILE);
	if (file)
		bpf_probe_read_kernel(&inode, sizeof(inode), (char *)file + BS_OFF_FILE_F_INODE);
	if (inode) {
		bpf_probe_read_kernel(&key.ino, sizeof(key.ino), (char *)inode + BS_OFF_INODE_I_INO);
		bpf_probe_read_kernel(&sb, sizeof(sb), (char *)inode + BS_OFF_INODE_I_SB);
	}
	if (sb) {
		bpf_probe_read_kernel(&dev, sizeof(dev), (char *)sb + BS_OFF_SB_S_DEV);
		key.dev = dev;
	}
	struct go_proc *known = key.ino ? exes.lookup(&key) : 0;
	if (!key.ino)
		flags |= BS_HTTP_EXEC_NO_INODE;
	if (known && known->state == BS_GO_READY) {
		struct go_proc gp = *known;
		if (pids.update(&tgid, &gp) == 0)
			flags |= BS_HTTP_EXEC_TRACED;
		else
			count(BS_HTTP_STAT_PIDS_FULL);
	} else if (!known && BS_TRACE_ON_EXEC) {
		struct go_proc gp = {-1, -1, -1, -1, -1, -1, -1, -1, -1, BS_GO_PENDING};
		if (pids.update(&tgid, &gp) == 0)
			flags |= BS_HTTP_EXEC_PENDING;
		else
			count(BS_HTTP_STAT_PIDS_FULL);
	} else {
		pids.delete(&tgid); // a traced process that exec'd another program: the old offsets are wrong
	}
	struct http_proc *r = new_proc_event(BS_HTTP_PROC_EXEC, tgid);
	if (!r)
		return 0;
	r->dev = key.dev;
	r->ino = key.ino;
	r->flags = flags;
	r->_pad = 0;
	// The path as exec'd: a process that is gone before user space reads /proc/<pid>/exe (a short
	// command) still names its file, checked against (dev, ino) before it is read.
	unsigned short loc = args->data_loc_filename & 0xFFFF;
	if (bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), (char *)args + loc) < 0)
		r->filename[0] = 0;
	proc_events.ringbuf_submit(r, 0);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if (!pids.lookup(&tgid))
		return 0;
	if ((__u32)id != tgid)
		return 0; // a thread: only the group leader's exit ends the process
	struct http_proc *r = new_proc_event(BS_HTTP_PROC_EXIT, tgid);
	if (!r)
		return 0;
	r->dev = 0;
	r->ino = 0;
	r->flags = 0;
	r->_pad = 0;
	r->filename[0] = 0;
	proc_events.ringbuf_submit(r, 0);
	return 0;
}

#if BS_GO_UPROBES
// Go register ABI (amd64, Go >= 1.17): receiver/first args in RAX, RBX, ...; R14 holds the current g.

// *net.TCPConn (the data word of a net.Conn interface) -> its file descriptor.
static __always_inline int go_conn_fd(const struct go_proc *gp, void *tcpconn)
{
	void *netfd = 0;
	long sysfd = -1;
	if (!tcpconn || gp->tcpconn_fd < 0 || gp->netfd_sysfd < 0)
		return -1;
	bpf_probe_read_user(&netfd, sizeof(netfd), (char *)tcpconn + gp->tcpconn_fd);
	if (!netfd)
		return -1;
	bpf_probe_read_user(&sysfd, sizeof(sysfd), (char *)netfd + gp->netfd_sysfd);
	return (int)sysfd;
}

// net/http.(*response).finishRequest: the handler has returned, the final flush is still to come.
// Here the request carries its ServeMux pattern, and R14 is the goroutine that ran the handler.
int uprobe_finish_request(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *gp = pids.lookup(&tgid);
	if (!gp || gp->response_conn < 0 || gp->conn_rwc < 0)
		return 0;
	count(BS_HTTP_STAT_UPROBE_HITS);
	void *w = (void *)ctx->ax, *c = 0, *tcpconn = 0, *req = 0;
	bpf_probe_read_user(&c, sizeof(c), (char *)w + gp->response_conn);
	if (!c)
		return 0;
	bpf_probe_read_user(&tcpconn, sizeof(tcpconn), (char *)c + gp->conn_rwc + 8); // iface data word
	int fd = go_conn_fd(gp, tcpconn);
	if (fd < 0)
		return 0;
	__u64 key = ((__u64)tgid << 32) | (__u32)fd;
	struct conn_state *st = conns.lookup(&key);
	if (!st || !st->active || st->ev.role != BS_HTTP_SERVER)
		return 0;
	st->ev.goroutine = ctx->r14;
	st->ev.flags |= BS_HTTP_F_GO_SERVER;
	if (gp->response_req < 0)
		return 0;
	bpf_probe_read_user(&req, sizeof(req), (char *)w + gp->response_req);
	if (!req)
		return 0;
	struct { const char *p; long n; } s = {};
	if (gp->req_pattern >= 0) { // Go 1.23+: Request.Pattern
		bpf_probe_read_user(&s, sizeof(s), (char *)req + gp->req_pattern);
	} else if (gp->req_pat >= 0 && gp->pattern_str >= 0) { // Go 1.22: Request.pat.str
		void *pat = 0;
		bpf_probe_read_user(&pat, sizeof(pat), (char *)req + gp->req_pat);
		if (pat)
			bpf_probe_read_user(&s, sizeof(s), (char *)pat + gp->pattern_str);
	}
	if (s.p && s.n > 0) {
		__u64 n = s.n;
		BOUND(n, BS_HTTP_ROUTE_MAX);
		bpf_probe_read_user(st->ev.route, n, s.p);
		st->ev.route_len = n;
	}
	return 0;
}

// net/http.(*persistConn).roundTrip: runs on the goroutine that called Client.Do, before the
// connection's write loop sends the request head. Mark the connection with that goroutine.
int uprobe_persistconn_roundtrip(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_proc *gp = pids.lookup(&tgid);
	if (!gp || gp->persistconn_conn < 0)
		return 0;
	count(BS_HTTP_STAT_UPROBE_HITS);
	void *pc = (void *)ctx->ax, *tcpconn = 0;
	bpf_probe_read_user(&tcpconn, sizeof(tcpconn), (char *)pc + gp->persistconn_conn + 8);
	int fd = go_conn_fd(gp, tcpconn);
	if (fd < 0)
		return 0;
	__u64 key = ((__u64)tgid << 32) | (__u32)fd;
	struct go_client_mark m = {.goroutine = ctx->r14};
	if (client_marks.update(&key, &m))
		count(BS_HTTP_STAT_AUX_MAP_FULL);
	return 0;
}
#endif
