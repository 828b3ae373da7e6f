// SPDX-License-Identifier: Apache-2.0
// TCP connection lifecycles from stable tracepoints only (no kprobes): the TCP state machine
// (sock:inet_sock_set_state), resets (raw tcp_receive_reset, tcp_send_reset) and, where the
// kernel has them (6.3+), per-call byte counts in the owner's process context (sock:sock_*_length).
// One record per connection, at TCP_CLOSE, into a ring buffer; losses counted in `stats`.
//
// Options come as -D defines from agent/tcp_source.py:
//   BS_MAX_CONNS, BS_RINGBUF_PAGES              sizes
//   BS_OFF_SRTT_US, BS_OFF_BYTES_RECEIVED,       byte offsets into struct tcp_sock / struct sock,
//   BS_OFF_BYTES_ACKED, BS_OFF_TOTAL_RETRANS,    read from the running kernel's BTF (the headers
//   BS_OFF_SK_ERR                                bcc compiles against may be another kernel's)
//   BS_HAVE_SOCK_LENGTH                          attach the sock_*_length tracepoints
#include <uapi/linux/ptrace.h>
#include <linux/tcp.h>
#include <net/sock.h>
#include "tcp_event.h"

#ifndef BS_OFF_SRTT_US /* no BTF: trust the headers (right only if they match the kernel) */
#define BS_OFF_SRTT_US offsetof(struct tcp_sock, srtt_us)
#define BS_OFF_BYTES_RECEIVED offsetof(struct tcp_sock, bytes_received)
#define BS_OFF_BYTES_ACKED offsetof(struct tcp_sock, bytes_acked)
#define BS_OFF_TOTAL_RETRANS offsetof(struct tcp_sock, total_retrans)
#define BS_OFF_SK_ERR offsetof(struct sock, sk_err)
#endif

// TCP states (include/net/tcp_states.h): stable UAPI-visible numbers.
#define S_ESTABLISHED 1
#define S_SYN_SENT 2
#define S_SYN_RECV 3
#define S_FIN_WAIT1 4
#define S_CLOSE 7
#define S_LAST_ACK 9
#define S_LISTEN 10

struct conn {
	__u64 start_ns;
	__u64 established_ns;
	__u64 bytes_sent;     // so far, from sock_send_length (open-connection snapshots)
	__u64 bytes_received; // so far, from sock_recv_length
	__u32 pid;
	__u32 flags;
	__u8 role;
	__u8 _pad[7];
	char comm[BS_COMM_LEN];
};

struct owner {
	__u32 pid;
	__u32 _pad;
	char comm[BS_COMM_LEN];
};

BPF_HASH(conns, __u64, struct conn, BS_MAX_CONNS);  // sk -> open connection
BPF_HASH(listeners, __u16, struct owner, 4096);     // local port -> owner of the listening socket
BPF_PERCPU_ARRAY(stats, __u64, BS_STAT_N);
BPF_RINGBUF_OUTPUT(events, BS_RINGBUF_PAGES);

static __always_inline void count(int slot)
{
	__u64 *v = stats.lookup(&slot);
	if (v)
		(*v)++;
}

static __always_inline void set_owner_from_current(struct conn *c)
{
	c->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&c->comm, sizeof(c->comm));
	c->flags = (c->flags & ~BS_F_OWNER_LISTENER) | BS_F_OWNER_EXACT;
}

// The tracepoint's own fields: bcc declares its args struct only just before each probe.
// Addresses are copied out: the verifier refuses ctx pointers carried with an offset.
struct sk_tuple {
	__u8 saddr[16], daddr[16]; // network order; IPv4 in the first 4 bytes, rest zero
	__u16 sport, dport, family;
	__u8 old_state;
};

static __always_inline void emit_closed(const struct sk_tuple *t, const struct sock *sk, struct conn *c)
{
	struct tcp_event *e = events.ringbuf_reserve(sizeof(struct tcp_event));
	if (!e) {
		count(BS_STAT_LOST_RINGBUF);
		return;
	}
	e->kind = BS_TCP_CLOSED;
	e->sk = (__u64)sk;
	e->start_ns = c->start_ns;
	e->established_ns = c->established_ns;
	e->end_ns = bpf_ktime_get_ns();
	e->app_bytes_sent = c->bytes_sent;
	e->app_bytes_received = c->bytes_received;
	e->pid = c->pid;
	e->flags = c->flags;
	e->role = c->role;
	e->old_state = t->old_state;
	e->sport = t->sport;
	e->dport = t->dport;
	e->family = t->family;
	__builtin_memcpy(e->comm, c->comm, BS_COMM_LEN);
	__builtin_memcpy(e->saddr, t->saddr, 16);
	__builtin_memcpy(e->daddr, t->daddr, 16);
	// Counters live in struct tcp_sock, which stays allocated until after TCP_CLOSE.
	__u32 srtt8 = 0;
	bpf_probe_read_kernel(&srtt8, sizeof(srtt8), (const char *)sk + BS_OFF_SRTT_US);
	e->srtt_us = srtt8 >> 3; // the kernel keeps srtt scaled by 8
	bpf_probe_read_kernel(&e->bytes_acked, sizeof(e->bytes_acked), (const char *)sk + BS_OFF_BYTES_ACKED);
	bpf_probe_read_kernel(&e->bytes_received, sizeof(e->bytes_received),
			      (const char *)sk + BS_OFF_BYTES_RECEIVED);
	bpf_probe_read_kernel(&e->retransmits, sizeof(e->retransmits), (const char *)sk + BS_OFF_TOTAL_RETRANS);
	bpf_probe_read_kernel(&e->sk_err, sizeof(e->sk_err), (const char *)sk + BS_OFF_SK_ERR);
	events.ringbuf_submit(e, 0);
	count(BS_STAT_EMITTED);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	if (args->protocol != IPPROTO_TCP)
		return 0;
	__u64 sk = (__u64)args->skaddr;
	int ns = args->newstate, os = args->oldstate;
	struct conn zero = {};

	if (ns == S_LISTEN) { // listen(): process context, so current is the owner
		__u16 port = args->sport;
		struct owner o = {.pid = bpf_get_current_pid_tgid() >> 32};
		bpf_get_current_comm(&o.comm, sizeof(o.comm));
		listeners.update(&port, &o);
		return 0;
	}
	if (os == S_LISTEN && ns == S_CLOSE) { // listener closed; it was never a connection
		__u16 port = args->sport;
		listeners.delete(&port);
		return 0;
	}
	if (ns == S_SYN_SENT) { // connect(): process context
		zero.start_ns = bpf_ktime_get_ns();
		zero.role = BS_ROLE_CLIENT;
		set_owner_from_current(&zero);
		if (conns.update(&sk, &zero))
			count(BS_STAT_LOST_MAP_FULL);
		return 0;
	}
	if (ns == S_SYN_RECV) { // child cloned from the listener (LISTEN->SYN_RECV) in softirq: current is not the owner
		zero.start_ns = bpf_ktime_get_ns();
		zero.role = BS_ROLE_SERVER;
		__u16 port = args->sport;
		struct owner *o = listeners.lookup(&port);
		if (o) {
			zero.pid = o->pid;
			__builtin_memcpy(zero.comm, o->comm, BS_COMM_LEN);
			zero.flags |= BS_F_OWNER_LISTENER;
		}
		if (conns.update(&sk, &zero))
			count(BS_STAT_LOST_MAP_FULL);
		return 0;
	}

	struct sk_tuple t = {
		.sport = args->sport, .dport = args->dport, .family = args->family, .old_state = os,
	};
	if (args->family == AF_INET) {
		__builtin_memcpy(t.saddr, args->saddr, 4);
		__builtin_memcpy(t.daddr, args->daddr, 4);
	} else {
		__builtin_memcpy(t.saddr, args->saddr_v6, 16);
		__builtin_memcpy(t.daddr, args->daddr_v6, 16);
	}
	struct conn *c = conns.lookup(&sk);
	if (!c) { // first seen mid-life: the connection predates the agent
		zero.flags = BS_F_PREEXISTING;
		if (ns == S_CLOSE) {
			emit_closed(&t, (const struct sock *)sk, &zero);
			return 0;
		}
		if (conns.update(&sk, &zero)) {
			count(BS_STAT_LOST_MAP_FULL);
			return 0;
		}
		c = conns.lookup(&sk);
		if (!c)
			return 0;
	}
	if (ns == S_ESTABLISHED) {
		c->established_ns = bpf_ktime_get_ns();
		c->flags |= BS_F_ESTABLISHED;
	} else if (ns == S_FIN_WAIT1 || ns == S_LAST_ACK) {
		// close()/shutdown() by the owner: process context. Refines a listener-derived owner.
		if (!(c->flags & BS_F_OWNER_EXACT))
			set_owner_from_current(c);
	} else if (ns == S_CLOSE) {
		emit_closed(&t, (const struct sock *)sk, c);
		conns.delete(&sk);
	}
	return 0;
}

// Resets as raw tracepoints: argument 0 is the socket on every kernel version, and no generated
// args struct is needed (tcp_send_reset's names enum sk_rst_reason, unknown to older headers).
static __always_inline void flag_conn(__u64 sk, __u32 flag)
{
	if (!sk)
		return;
	struct conn *c = conns.lookup(&sk);
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

#ifdef BS_HAVE_SOCK_LENGTH
// sendmsg/recvmsg return paths run in the caller's context: the exact owner of an accepted
// socket, and running byte counts for open-connection snapshots.
static __always_inline void on_sock_io(__u64 sk, __u16 protocol, int ret, int sending)
{
	if (protocol != IPPROTO_TCP)
		return;
	struct conn *c = conns.lookup(&sk);
	if (!c)
		return;
	if (!(c->flags & BS_F_OWNER_EXACT))
		set_owner_from_current(c);
	if (ret > 0) {
		if (sending)
			__sync_fetch_and_add(&c->bytes_sent, ret);
		else
			__sync_fetch_and_add(&c->bytes_received, ret);
	}
}

TRACEPOINT_PROBE(sock, sock_send_length)
{
	on_sock_io((__u64)args->sk, args->protocol, args->ret, 1);
	return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length)
{
	on_sock_io((__u64)args->sk, args->protocol, args->ret, 0);
	return 0;
}
#endif
