/* SPDX-License-Identifier: Apache-2.0
 * struct tcp_event: one TCP connection, sent from bpf/tcp_lifecycle.c to agent/tcp_source.py.
 * User space mirrors it in agent/_tcp_event.py; tests/test_bpf_layout.py checks the two agree.
 */
#ifndef BLINDSPOT_TCP_EVENT_H
#define BLINDSPOT_TCP_EVENT_H

#define BS_COMM_LEN 16

/* tcp_event.kind */
#define BS_TCP_CLOSED 1 /* the connection reached TCP_CLOSE: its one and only final record */

/* tcp_event.role */
#define BS_ROLE_UNKNOWN 0 /* first seen mid-life (started before the agent) */
#define BS_ROLE_CLIENT 1  /* we sent the SYN (connect) */
#define BS_ROLE_SERVER 2  /* we answered a SYN (accept) */

/* tcp_event.flags */
#define BS_F_RST_RECEIVED (1u << 0)   /* tcp:tcp_receive_reset seen on this socket */
#define BS_F_RST_SENT (1u << 1)       /* tcp:tcp_send_reset seen on this socket */
#define BS_F_PREEXISTING (1u << 2)    /* first seen after its handshake: start time unknown */
#define BS_F_ESTABLISHED (1u << 3)    /* reached TCP_ESTABLISHED */
#define BS_F_OWNER_EXACT (1u << 4)    /* pid/comm seen in the owner's process context */
#define BS_F_OWNER_LISTENER (1u << 5) /* pid/comm taken from the listening socket's owner */

/* stats array slots (per-CPU u64 counters, read by the agent) */
#define BS_STAT_EMITTED 0       /* records submitted to the ring buffer */
#define BS_STAT_LOST_RINGBUF 1  /* ring buffer full: a record was lost */
#define BS_STAT_LOST_MAP_FULL 2 /* connection table full: a connection is not tracked */
#define BS_STAT_N 4

struct tcp_event {
	__u64 sk;             /* kernel address of struct sock: identity while open */
	__u64 start_ns;       /* CLOCK_MONOTONIC ns at SYN_SENT/SYN_RECV; 0 if PREEXISTING */
	__u64 established_ns; /* CLOCK_MONOTONIC ns at ESTABLISHED; 0 if never */
	__u64 end_ns;         /* CLOCK_MONOTONIC ns at CLOSE */
	__u64 bytes_acked;    /* bytes we sent that the peer acknowledged (tcp_sock.bytes_acked) */
	__u64 bytes_received; /* bytes received in order (tcp_sock.bytes_received) */
	/* The two above count sequence space, so a SYN or FIN can add 1. The two below count payload
	 * as the owner's send/recv calls returned it (sock:sock_*_length, kernel 6.3+); 0 without. */
	__u64 app_bytes_sent;     /* bytes, sum of sendmsg returns */
	__u64 app_bytes_received; /* bytes, sum of recvmsg returns */
	__u8 saddr[16];       /* local address, network order; IPv4 in the first 4 bytes */
	__u8 daddr[16];       /* remote address, network order; IPv4 in the first 4 bytes */
	__u32 pid;            /* owning process (tgid); 0 if unknown */
	__u32 srtt_us;        /* smoothed RTT at close, microseconds */
	__u32 retransmits;    /* segments retransmitted (tcp_sock.total_retrans) */
	__u32 flags;          /* BS_F_* */
	__s32 sk_err;         /* sock.sk_err at close: errno (ECONNREFUSED, ETIMEDOUT, ...) or 0 */
	__u16 sport;          /* local port, host order */
	__u16 dport;          /* remote port, host order */
	__u16 family;         /* AF_INET (2) or AF_INET6 (10) */
	__u8 role;            /* BS_ROLE_* */
	__u8 old_state;       /* TCP state just before CLOSE (TCP_SYN_SENT, TCP_FIN_WAIT1, ...) */
	__u8 kind;            /* BS_TCP_* */
	__u8 _pad[3];
	char comm[BS_COMM_LEN]; /* owner's task comm */
};

_Static_assert(sizeof(struct tcp_event) == 144, "struct tcp_event layout is shared with user space");

#endif /* BLINDSPOT_TCP_EVENT_H */
