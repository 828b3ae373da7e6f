// SPDX-License-Identifier: Apache-2.0
// TCP connection lifecycles from stable tracepoints only (no kprobes), every one attached raw: the TCP
// state machine (inet_sock_set_state), resets and socket destruction (tcp_receive_reset,
// tcp_send_reset, tcp_destroy_sock), packet drops (kfree_skb) and, where the kernel has them (6.3+),
// per-call byte counts in the owner's process context (sock_send_length, sock_recv_length).
//
// Why raw: the kernel runs a classic tracepoint's (or kprobe's, or uprobe's) program only if no such
// program is running on that CPU already, any program of any tool: a softirq that changes a
// socket's state while the HTTP source's syscall program runs on that CPU would be skipped. A raw
// tracepoint's program is skipped only when that same program is running there. Raw programs also
// skip the trace record the kernel fills for a classic one: they read the socket's fields themselves.
//
// Each connection lives in `conns` as a struct tcp_event from its first state change on. At TCP_CLOSE
// its counters are frozen; when the socket is destroyed (the owner closed its fd, so nothing more can
// be read) the record goes to the ring buffer, exactly once. Losses are counted in `stats`.
//
// Options come as -D defines from agent/tcp_source.py:
//   BS_MAX_CONNS, BS_RINGBUF_PAGES,             sizes
//   BS_RESCUE_RINGBUF_PAGES
//   BS_OFF_SRTT_US, BS_OFF_BYTES_RECEIVED,       byte offsets into struct tcp_sock / inet_sock /
//   BS_OFF_BYTES_ACKED, BS_OFF_TOTAL_RETRANS,    sock / sock_common, read from the running kernel's
//   BS_OFF_SK_ERR, BS_OFF_SK_PROTOCOL,           BTF (the headers bcc compiles against may be
//   BS_OFF_INET_SPORT, BS_OFF_SKC_*              another kernel's)
//   BS_HAVE_SOCK_LENGTH                          attach the sock_*_length tracepoints
//   BS_HAVE_DROP_REASON, BS_HAVE_RX_SK,          packet drops (kfree_skb): its arguments on this
//   BS_DROP_FIRST, BS_DROP_NOT_SPECIFIED,        kernel, the enum skb_drop_reason numbers that
//   BS_MAX_DROP_KEYS, BS_OFF_SKB_SK, BS_OFF_SKB_DEV, bound what a drop is (bpf/drop_event.h), and
//   BS_OFF_DEV_NET, BS_OFF_SK_NET, BS_OFF_NET_INUM   BTF offsets (agent/packet_drops.py)
#include <uapi/linux/ptrace.h>
#include <linux/tcp.h>
#include <net/sock.h>
#include "tcp_event.h"
#include "drop_event.h"

#ifndef BS_OFF_SRTT_US /* no BTF: trust the headers (right only if they match the kernel) */
#define BS_OFF_SRTT_US offsetof(struct tcp_sock, srtt_us)
#define BS_OFF_BYTES_RECEIVED offsetof(struct tcp_sock, bytes_received)
#define BS_OFF_BYTES_ACKED offsetof(struct tcp_sock, bytes_acked)
#define BS_OFF_TOTAL_RETRANS offsetof(struct tcp_sock, total_retrans)
#define BS_OFF_SK_ERR offsetof(struct sock, sk_err)
#define BS_OFF_SK_PROTOCOL offsetof(struct sock, sk_protocol)
#define BS_OFF_INET_SPORT offsetof(struct inet_sock, inet_sport)
#define BS_OFF_SKC_RCV_SADDR offsetof(struct sock_common, skc_rcv_saddr)
#define BS_OFF_SKC_V6_RCV_SADDR offsetof(struct sock_common, skc_v6_rcv_saddr)
#define BS_OFF_SKC_STATE offsetof(struct sock_common, skc_state)
#define BS_OFF_SKC_FAMILY offsetof(struct sock_common, skc_family)
#define BS_OFF_SKC_NUM offsetof(struct sock_common, skc_num)
#define BS_OFF_SKC_DPORT offsetof(struct sock_common, skc_dport)
#define BS_OFF_SKC_DADDR offsetof(struct sock_common, skc_daddr)
#define BS_OFF_SKC_V6_DADDR offsetof(struct sock_common, skc_v6_daddr)
#endif

// TCP states (include/net/tcp_states.h): stable numbers.
#define S_ESTABLISHED 1
#define S_SYN_SENT 2
#define S_SYN_RECV 3
#define S_FIN_WAIT1 4
#define S_CLOSE 7
#define S_LAST_ACK 9
#define S_LISTEN 10

struct owner {
	__u32 pid;
	__u32 _pad;
	char comm[BS_COMM_LEN];
};

BPF_HASH(conns, __u64, struct tcp_event, BS_MAX_CONNS); // sk -> the connection's record so far
BPF_HASH(listeners, __u16, struct owner, 4096);         // local port -> owner of the listening socket
BPF_PERCPU_ARRAY(stats, __u64, BS_STAT_N);
// A zeroed record, too big for the 512-byte stack: one per nesting level (see on_state_nested).
BPF_PERCPU_ARRAY(scratch, struct tcp_event, 2);
// The events each program finished on this CPU, for its twin to find (see finished / skipped_for).
struct done_key {
	__u64 obj;  // the socket or the packet
	__u64 what; // BS_DONE_* of the tracepoint, and the event's other arguments
};
#define BS_DONE_SLOTS 8 // a power of two; more than events can nest on one CPU
struct done_ring {
	__u32 next;
	__u32 _pad;
	struct done_key slot[BS_DONE_SLOTS];
};
_Static_assert(sizeof(struct done_ring) == 8 + 16 * BS_DONE_SLOTS, "done_ring layout");
BPF_PERCPU_ARRAY(done, struct done_ring, 1);
#define BS_DONE_STATE 1
#define BS_DONE_DESTROY 2
#define BS_DONE_DROP 3
BPF_RINGBUF_OUTPUT(events, BS_RINGBUF_PAGES);
// Where a record goes when `events` refuses it: a ring with a lock of its own (see emit_and_delete).
BPF_RINGBUF_OUTPUT(events_rescue, BS_RESCUE_RINGBUF_PAGES);

static __always_inline void count(int slot)
{
	__u64 *v = stats.lookup(&slot);
	if (v) // this CPU's slot, yet atomic: a nested program (on_*_nested) can interrupt the increment
		__sync_fetch_and_add(v, 1);
}

// A field of the kernel object at `base`, `off` bytes in (a BTF offset); 0 if it cannot be read.
#define KREAD(type, base, off)                                                                     \
	({                                                                                         \
		type _v = 0;                                                                       \
		bpf_probe_read_kernel(&_v, sizeof(_v), (const char *)(base) + (off));             \
		_v;                                                                                \
	})

static __always_inline int is_tcp(const char *sk)
{
	return KREAD(__u16, sk, BS_OFF_SK_PROTOCOL) == IPPROTO_TCP;
}

// Host order, from inet_sport as the classic tracepoint takes it: at TCP_CLOSE the kernel has released
// the port (skc_num is 0 by then), inet_sport stays. A child's is its listener's from the clone on.
static __always_inline __u16 local_port(const char *sk)
{
	return ntohs(KREAD(__be16, sk, BS_OFF_INET_SPORT));
}

// The head of struct sock_common holds the IPv4 peer and local address, the ports, the family and the
// state: what the classic tracepoint's record carried, in one probe read instead of one per field.
#define BS_HEAD_LEN 24
_Static_assert(BS_OFF_SKC_DADDR + 4 <= BS_HEAD_LEN && BS_OFF_SKC_RCV_SADDR + 4 <= BS_HEAD_LEN &&
	       BS_OFF_SKC_DPORT + 2 <= BS_HEAD_LEN && BS_OFF_SKC_NUM + 2 <= BS_HEAD_LEN &&
	       BS_OFF_SKC_FAMILY + 2 <= BS_HEAD_LEN && BS_OFF_SKC_STATE + 1 <= BS_HEAD_LEN,
	       "struct sock_common's head holds these fields");
#define HEAD(type, h, off) (*(type *)((const char *)(h) + (off)))

static __always_inline void set_owner_from_current(struct tcp_event *c)
{
	c->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&c->comm, sizeof(c->comm));
	c->flags = (c->flags & ~BS_F_OWNER_LISTENER) | BS_F_OWNER_EXACT;
}

// Since 6.15 a hash map's bucket locks are rqspinlocks: taking one can fail (a timeout, a suspected
// deadlock) where it used to wait. Such a refusal (any error but "no such entry") is retried once,
// and counted.
static __always_inline long delete_conn(__u64 sk)
{
	long err = conns.delete(&sk);
	if (err && err != -ENOENT) {
		count(BS_STAT_MAP_REFUSED);
		err = conns.delete(&sk);
	}
	return err;
}

// Send the record of `sk` and drop it from the map. Whoever deletes the entry emits it: user space
// sweeps closed entries whose owner never closes its fd, and must not race us into a duplicate.
static __always_inline void emit_and_delete(__u64 sk, struct tcp_event *c)
{
	if (c->flags & BS_F_SENT) { // sent before; only its delete was refused then
		delete_conn(sk);
		return;
	}
	if (!(c->flags & BS_F_CLOSED)) { // destroyed without a TCP_CLOSE we saw
		c->end_ns = bpf_ktime_get_ns();
		c->flags |= BS_F_CLOSED;
	}
	// A reservation is refused when the ring is full (user space fell behind), and was seen refused,
	// rarely, with room to spare (under churn on 6.18; the cause is not pinned down): then the record
	// goes to the rescue ring, which has its own lock and space. Both refusing is a loss.
	int rescued = 0;
	struct tcp_event *e = events.ringbuf_reserve(sizeof(struct tcp_event));
	if (!e) {
		e = events_rescue.ringbuf_reserve(sizeof(struct tcp_event));
		rescued = e != 0;
	}
	if (!e) {
		count(BS_STAT_LOST_RINGBUF);
		long err = delete_conn(sk);
		if (err && err != -ENOENT) // left in the map (counted lost): nobody may send it later
			c->flags |= BS_F_SENT;
		return;
	}
	__builtin_memcpy(e, c, sizeof(*e));
	e->kind = BS_TCP_CLOSED;
	long err = delete_conn(sk);
	if (err == -ENOENT) { // user space swept it first, and emits it
		events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
		return;
	}
	if (err) // refused twice: the entry stays, marked so that nobody sends it again
		c->flags |= BS_F_SENT;
	// No wake-up: user space reads the rings in bulk on a timer (agent/ringbuf.py), never sleeps on them.
	// (Submit and discard find a record's ring from the record itself, whichever map names them.)
	events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	count(BS_STAT_EMITTED);
	if (rescued)
		count(BS_STAT_RINGBUF_RESCUED);
}

// A new record for `sk` in the map; NULL (and counted) if the map is full.
static __always_inline struct tcp_event *new_conn(__u64 sk, __u8 role, __u32 flags, int level)
{
	// The socket connects again after a failed attempt (that attempt was a connection too), or a
	// destroyed socket's address is reused while its entry stayed (its delete was refused).
	struct tcp_event *prev = conns.lookup(&sk);
	if (prev)
		emit_and_delete(sk, prev);
	struct tcp_event *tmpl = scratch.lookup(&level);
	if (!tmpl)
		return 0;
	__builtin_memset(tmpl, 0, sizeof(*tmpl));
	tmpl->sk = sk;
	tmpl->role = role;
	tmpl->flags = flags;
	tmpl->kind = BS_TCP_OPEN;
	if (role != BS_ROLE_UNKNOWN)
		tmpl->start_ns = bpf_ktime_get_ns();
	if (conns.update(&sk, tmpl)) {
		if (conns.update(&sk, tmpl)) { // refused twice: full, as a rule
			count(BS_STAT_LOST_MAP_FULL);
			return 0;
		}
		count(BS_STAT_MAP_REFUSED);
	}
	return conns.lookup(&sk);
}

// The kernel skips a raw tracepoint's program while that program is running on the same CPU: a
// softirq changing a socket's state (an ACK, a FIN) that interrupts inet_sock_set_state's program
// mid-run in process context (connect, close) would be lost. A twin program attached to the same
// tracepoint after it (agent/tcp_source.py; a tracepoint runs its programs in the order they were
// attached) runs for every event and handles those its program did not finish: the program notes
// each event it finished in a small per-CPU ring, and the twin, running next for the same event,
// finds it there (and clears it) or else handles the event itself. This covers the instructions the
// kernel runs around a program while it counts as mid-run, which a "mid-run" flag set by the program
// itself cannot. Events nest (an interrupt runs to its end before the interrupted program goes on),
// so a note waits at most for the events nested into it; a twin skipped in turn (interrupted mid-run)
// leaves its program's note behind, overwritten later. The same for sockets' ends and packet drops.
// (Preemption is off in tracepoints: only an interrupt comes between.)
static __always_inline void finished(__u64 obj, __u64 what)
{
	int zero = 0;
	struct done_ring *d = done.lookup(&zero);
	if (!d)
		return;
	// Not atomic: an event nested here writes and clears its own note before this goes on.
	__u32 i = d->next++ & (BS_DONE_SLOTS - 1);
	d->slot[i].obj = obj;
	d->slot[i].what = what;
}

// In a twin: did its program not finish this event (the kernel skipped it)? Counted when so.
static __always_inline int skipped_for(__u64 obj, __u64 what)
{
	int zero = 0;
	struct done_ring *d = done.lookup(&zero);
	if (!d)
		return 0;
#pragma unroll
	for (int i = 0; i < BS_DONE_SLOTS; i++) {
		if (d->slot[i].obj == obj && d->slot[i].what == what) {
			d->slot[i].obj = 0;
			d->slot[i].what = 0;
			return 0;
		}
	}
	count(BS_STAT_NESTED_HANDLED);
	return 1;
}

// Raw arguments: (struct sock *sk, int oldstate, int newstate). The fields the classic tracepoint
// would have copied out (protocol, ports, family, addresses) are read from the socket, as it does.
static __always_inline int on_state(struct bpf_raw_tracepoint_args *ctx, int level)
{
	const char *k = (const char *)ctx->args[0];
	int os = (int)ctx->args[1], ns = (int)ctx->args[2];
	__u64 sk = (__u64)k;

	if (ns == S_LISTEN || ns == S_SYN_RECV || os == S_LISTEN || ns == S_SYN_SENT) {
		if (!is_tcp(k))
			return 0;
		__u16 port = local_port(k);
		if (ns == S_LISTEN) { // listen(): process context, so current is the owner
			struct owner o = {.pid = bpf_get_current_pid_tgid() >> 32};
			bpf_get_current_comm(&o.comm, sizeof(o.comm));
			if (listeners.update(&port, &o))
				count(BS_STAT_LISTENERS_FULL);
		} else if (ns == S_SYN_RECV) { // child cloned from the listener (LISTEN->SYN_RECV) in softirq
			struct tcp_event *c = new_conn(sk, BS_ROLE_SERVER, 0, level);
			struct owner *o = listeners.lookup(&port);
			if (c && o) { // current is not the owner here: the listener's, until a syscall says better
				c->pid = o->pid;
				__builtin_memcpy(c->comm, o->comm, BS_COMM_LEN);
				c->flags |= BS_F_OWNER_LISTENER;
			}
		} else if (os == S_LISTEN) { // listener closed; it was never a connection
			listeners.delete(&port);
		} else { // SYN_SENT: connect(), process context
			struct tcp_event *c = new_conn(sk, BS_ROLE_CLIENT, 0, level);
			if (c)
				set_owner_from_current(c);
		}
		return 0;
	}

	// Every other change: only TCP sockets get an entry, so one found needs no protocol check.
	struct tcp_event *c = conns.lookup(&sk);
	if (!c) {
		if (!is_tcp(k))
			return 0;
		c = new_conn(sk, BS_ROLE_UNKNOWN, BS_F_PREEXISTING, level); // first seen mid-life: older than us
		if (!c)
			return 0;
	}
	if (ns == S_ESTABLISHED || ns == S_CLOSE || (c->flags & BS_F_PREEXISTING && !c->family)) {
		// The local IPv4 address as sock_diag (ss) reports it: skc_rcv_saddr, equal to inet_saddr
		// (what the classic tracepoint reads) once the socket is connected
		__u64 head[BS_HEAD_LEN / 8] = {};
		bpf_probe_read_kernel(head, sizeof(head), k);
		c->sport = local_port(k);
		c->dport = ntohs(HEAD(__be16, head, BS_OFF_SKC_DPORT));
		c->family = HEAD(__u16, head, BS_OFF_SKC_FAMILY);
		if (c->family == AF_INET) {
			__builtin_memcpy(c->saddr, (const char *)head + BS_OFF_SKC_RCV_SADDR, 4);
			__builtin_memcpy(c->daddr, (const char *)head + BS_OFF_SKC_DADDR, 4);
		} else {
			bpf_probe_read_kernel(c->saddr, 16, k + BS_OFF_SKC_V6_RCV_SADDR);
			bpf_probe_read_kernel(c->daddr, 16, k + BS_OFF_SKC_V6_DADDR);
		}
	}
	if (ns == S_ESTABLISHED) {
		c->established_ns = bpf_ktime_get_ns();
		c->flags |= BS_F_ESTABLISHED;
		if (c->role == BS_ROLE_SERVER) {
			// Linux creates the accepted socket only when the final ACK arrives, so its own
			// SYN_RECV lasts microseconds. The handshake on the wire (SYN-ACK sent -> ACK) is the
			// kernel's first RTT sample, already in srtt_us: start the connection there.
			__u32 srtt8 = 0;
			bpf_probe_read_kernel(&srtt8, sizeof(srtt8), (const char *)sk + BS_OFF_SRTT_US);
			__u64 synack_ns = (__u64)(srtt8 >> 3) * 1000;
			if (synack_ns > c->established_ns - c->start_ns && synack_ns < c->established_ns)
				c->start_ns = c->established_ns - synack_ns;
		}
	} else if (ns == S_FIN_WAIT1 || ns == S_LAST_ACK) {
		// close()/shutdown() by the owner: process context. Refines a listener-derived owner.
		if (!(c->flags & BS_F_OWNER_EXACT))
			set_owner_from_current(c);
	} else if (ns == S_CLOSE) {
		// Freeze the kernel's counters now: struct tcp_sock is still whole.
		__u32 srtt8 = 0;
		c->end_ns = bpf_ktime_get_ns();
		c->old_state = os;
		c->flags |= BS_F_CLOSED;
		bpf_probe_read_kernel(&srtt8, sizeof(srtt8), k + BS_OFF_SRTT_US);
		c->srtt_us = srtt8 >> 3; // the kernel keeps srtt scaled by 8
		bpf_probe_read_kernel(&c->bytes_acked, sizeof(c->bytes_acked), k + BS_OFF_BYTES_ACKED);
		bpf_probe_read_kernel(&c->bytes_received, sizeof(c->bytes_received), k + BS_OFF_BYTES_RECEIVED);
		bpf_probe_read_kernel(&c->retransmits, sizeof(c->retransmits), k + BS_OFF_TOTAL_RETRANS);
		bpf_probe_read_kernel(&c->sk_err, sizeof(c->sk_err), k + BS_OFF_SK_ERR);
	}
	return 0;
}

// The event as a done_key: the socket, and the change (old state, new state).
#define STATE_DONE(ctx) (ctx)->args[0], BS_DONE_STATE | ((ctx)->args[1] & 0xff) << 8 | ((ctx)->args[2] & 0xff) << 16

RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
	on_state(ctx, 0);
	finished(STATE_DONE(ctx));
	return 0;
}

// Attached to inet_sock_set_state after the program above (agent/tcp_source.py).
int on_state_nested(struct bpf_raw_tracepoint_args *ctx)
{
	if (!skipped_for(STATE_DONE(ctx)))
		return 0; // the program above finished this event
	on_state(ctx, 1);
	return 1; // (what BPF_PROG_TEST_RUN reports: tests/test_tcp_lifecycle.py)
}

// Raw tracepoints: argument 0 is the socket on every kernel version, and no generated args struct
// is needed (tcp_send_reset's names enum sk_rst_reason, unknown to older headers).
static __always_inline void flag_conn(__u64 sk, __u32 flag)
{
	struct tcp_event *c = sk ? conns.lookup(&sk) : 0;
	if (c)
		c->flags |= flag;
}

RAW_TRACEPOINT_PROBE(tcp_receive_reset)
{
	flag_conn(ctx->args[0], BS_F_RST_RECEIVED);
	return 0;
}

RAW_TRACEPOINT_PROBE(tcp_send_reset)
{
	flag_conn(ctx->args[0], BS_F_RST_SENT);
	return 0;
}

static __always_inline void on_destroy(__u64 sk)
{
	struct tcp_event *c = conns.lookup(&sk);
	if (c)
		emit_and_delete(sk, c);
}

// A socket's end can run in process context with softirqs on (a backlog processed at release_sock),
// and a softirq's end of another socket can interrupt it: a twin, as for state changes.
RAW_TRACEPOINT_PROBE(tcp_destroy_sock)
{
	on_destroy(ctx->args[0]);
	finished(ctx->args[0], BS_DONE_DESTROY);
	return 0;
}

// Attached to tcp_destroy_sock after the program above (agent/tcp_source.py).
int on_destroy_nested(struct bpf_raw_tracepoint_args *ctx)
{
	if (!skipped_for(ctx->args[0], BS_DONE_DESTROY))
		return 0; // the program above finished this event
	on_destroy(ctx->args[0]);
	return 1; // (what BPF_PROG_TEST_RUN reports: tests/test_tcp_lifecycle.py)
}

#ifdef BS_HAVE_SOCK_LENGTH
// sendmsg/recvmsg return paths run in the caller's context: the exact owner of an accepted
// socket, and payload byte counts (also for data read after TCP_CLOSE).
// Raw arguments: (struct sock *sk, int ret, int flags).
static __always_inline void on_sock_io(__u64 sk, int ret, int sending)
{
	if (!is_tcp((const char *)sk))
		return;
	struct tcp_event *c = conns.lookup(&sk);
	if (!c)
		return;
	if (!(c->flags & BS_F_OWNER_EXACT))
		set_owner_from_current(c);
	if (ret > 0) {
		if (sending)
			__sync_fetch_and_add(&c->app_bytes_sent, ret);
		else
			__sync_fetch_and_add(&c->app_bytes_received, ret);
	}
}

RAW_TRACEPOINT_PROBE(sock_send_length)
{
	on_sock_io(ctx->args[0], (int)ctx->args[1], 1);
	return 0;
}

RAW_TRACEPOINT_PROBE(sock_recv_length)
{
	on_sock_io(ctx->args[0], (int)ctx->args[1], 0);
	return 0;
}
#endif

#ifdef BS_HAVE_DROP_REASON
BPF_PERCPU_HASH(drops, struct drop_key, struct drop_count, BS_MAX_DROP_KEYS);

// Every packet the kernel frees with a reason. Counted in maps only: a drop storm costs a hash
// update per packet, never a ring-buffer record or a wake-up of the agent.
// Raw arguments: (struct sk_buff *skb, void *location, enum skb_drop_reason reason[, struct sock *rx_sk]).
static __always_inline int on_drop(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 reason = (__u32)ctx->args[2];
	if (reason < BS_DROP_FIRST) // SKB_NOT_DROPPED_YET, SKB_CONSUMED: freed, not dropped
		return 0;
	const char *skb = (const char *)ctx->args[0];
	__u64 sk = 0;
#ifdef BS_HAVE_RX_SK
	sk = ctx->args[3]; // the receiving socket the kernel found (6.11+)
#endif
	if (!sk) // the owning socket: the sender's on the way out, early demux's on the way in
		bpf_probe_read_kernel(&sk, sizeof(sk), skb + BS_OFF_SKB_SK);

	__u32 attributed = 0;
	if (sk && reason != BS_DROP_NOT_SPECIFIED) {
		struct tcp_event *c = conns.lookup(&sk);
		if (c) {
			__sync_fetch_and_add(&c->drops, 1);
			// Majority vote (Boyer-Moore): racy across CPUs, so approximate; the count is exact.
			if (c->drop_votes == 0) {
				c->drop_reason = reason;
				c->drop_votes = 1;
			} else if (c->drop_reason == reason) {
				c->drop_votes++;
			} else {
				c->drop_votes--;
			}
			attributed = 1;
		}
	}

	struct drop_key key = {.reason = reason};
	const char *net = 0;
	if (sk) {
		bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + BS_OFF_SK_NET);
	} else {
		const char *dev = 0;
		bpf_probe_read_kernel(&dev, sizeof(dev), skb + BS_OFF_SKB_DEV);
		if (dev)
			bpf_probe_read_kernel(&net, sizeof(net), dev + BS_OFF_DEV_NET);
	}
	if (net)
		bpf_probe_read_kernel(&key.netns, sizeof(key.netns), net + BS_OFF_NET_INUM);
	struct drop_count zero = {};
	struct drop_count *v = drops.lookup_or_try_init(&key, &zero);
	if (!v) {
		count(BS_STAT_DROP_KEYS_FULL);
		return 0;
	}
	// This CPU's slot, yet atomic: a nested drop (on_drop_nested) can interrupt the increment.
	__sync_fetch_and_add(&v->drops, 1);
	__sync_fetch_and_add(&v->conn_drops, attributed);
	return 0;
}

// The event as a done_key: the packet, and the reason it is freed with.
#define DROP_DONE(ctx) (ctx)->args[0], BS_DONE_DROP | ((ctx)->args[2] & 0xffffffff) << 8

RAW_TRACEPOINT_PROBE(kfree_skb)
{
	on_drop(ctx);
	finished(DROP_DONE(ctx));
	return 0;
}

// Attached to kfree_skb after the program above (agent/tcp_source.py).
int on_drop_nested(struct bpf_raw_tracepoint_args *ctx)
{
	if (!skipped_for(DROP_DONE(ctx)))
		return 0; // the program above finished this event
	on_drop(ctx);
	return 1; // (what BPF_PROG_TEST_RUN reports: tests/test_tcp_lifecycle.py)
}
#endif

// Not attached anywhere: the agent runs it on demand (BPF_PROG_TEST_RUN) for each entry that has
// looked open for a whole snapshot interval, with args = {sk, start_ns, established_ns,
// sport << 16 | dport} as it saw the entry. The kernel can skip a socket's close and its end
// (nested events, counted in recursion_misses) and then the entry would look open forever. TCP
// sockets live in a SLAB_TYPESAFE_BY_RCU cache, so the memory at `sk` is a struct sock still, live
// or freed: if it is closed, listening, or another connection's, this connection is over. It is sent
// then, as closed at an unknown time (now, an upper bound), by the same emit-and-delete as its end.
int check_conn(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 sk = ctx->args[0];
	struct tcp_event *c = conns.lookup(&sk);
	if (!c || c->flags & (BS_F_CLOSED | BS_F_SENT) || c->start_ns != ctx->args[1] ||
	    c->established_ns != ctx->args[2] || ((__u64)c->sport << 16 | c->dport) != ctx->args[3])
		return BS_CHECK_NOT_OPEN;
	const char *k = (const char *)sk;
	__u64 head[BS_HEAD_LEN / 8] = {};
	bpf_probe_read_kernel(head, sizeof(head), k);
	__u8 state = HEAD(__u8, head, BS_OFF_SKC_STATE);
	int gone = state == S_CLOSE || state == S_LISTEN;
	if (!gone && c->family) { // ports and peer are known from ESTABLISHED on: still the same?
		__u64 peer[2] = {}, ours[2];
		if (c->family == AF_INET) // c->daddr holds an IPv4 address in its first 4 bytes, zeros after
			__builtin_memcpy(peer, (const char *)head + BS_OFF_SKC_DADDR, 4);
		else
			bpf_probe_read_kernel(peer, 16, k + BS_OFF_SKC_V6_DADDR);
		__builtin_memcpy(ours, c->daddr, sizeof(ours));
		gone = HEAD(__u16, head, BS_OFF_SKC_FAMILY) != c->family || HEAD(__u16, head, BS_OFF_SKC_NUM) != c->sport ||
		       ntohs(HEAD(__be16, head, BS_OFF_SKC_DPORT)) != c->dport || peer[0] != ours[0] || peer[1] != ours[1];
	}
	if (!gone)
		return BS_CHECK_ALIVE;
	c->flags |= BS_F_CLOSE_UNSEEN;
	emit_and_delete(sk, c);
	count(BS_STAT_CLOSE_UNSEEN);
	return BS_CHECK_GONE;
}
