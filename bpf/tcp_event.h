/* SPDX-License-Identifier: Apache-2.0
 * struct tcp_event: one TCP connection. It is both the value of the open-connection map `conns` (read
 * by user space for snapshots) and, once the socket is destroyed, the record sent through the ring
 * buffer. User space mirrors it in agent/_tcp_event.py; tests/test_bpf_layout.py checks they agree.
 */
#ifndef BLINDSPOT_TCP_EVENT_H
#define BLINDSPOT_TCP_EVENT_H

#define BS_COMM_LEN 16

/* tcp_event.kind */
#define BS_TCP_OPEN 0   /* still in the map */
#define BS_TCP_CLOSED 1 /* the socket was destroyed: its one and only final record */

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
#define BS_F_CLOSED (1u << 6)         /* reached TCP_CLOSE; emitted when the socket is destroyed */
#define BS_F_SENT (1u << 7)           /* its record is sent; left in the map only because its delete was refused */
#define BS_F_CLOSE_UNSEEN (1u << 8)   /* looked open, but its socket was gone: end_ns is when that was found */

/* stats array slots (per-CPU u64 counters, read by the agent) */
#define BS_STAT_EMITTED 0       /* records submitted to the ring buffer */
#define BS_STAT_LOST_RINGBUF 1  /* ring buffer full: a record was lost */
#define BS_STAT_LOST_MAP_FULL 2 /* connection table full: a connection is not tracked */
#define BS_STAT_LISTENERS_FULL 3 /* listener table full: that port's accepted connections have no owner */
#define BS_STAT_DROP_KEYS_FULL 4 /* drop table full: a packet drop of a new (reason, netns) not counted */
#define BS_STAT_RINGBUF_RESCUED 5 /* records the main ring refused and the rescue ring took: not lost */
#define BS_STAT_MAP_REFUSED 6     /* a map update or delete refused although it could be made (6.15+ locks) */
#define BS_STAT_CLOSE_UNSEEN 7    /* entries that looked open after their socket was gone, sent by check_conn */
#define BS_STAT_NESTED_HANDLED 8  /* events the kernel skipped for a program (mid-run on that CPU), handled by its *_nested twin */
#define BS_STAT_N 9

/* check_conn's answers (its return value under BPF_PROG_TEST_RUN) */
#define BS_CHECK_NOT_OPEN 0 /* no such entry any more, another connection's now, or already closed */
#define BS_CHECK_ALIVE 1    /* the socket is still this connection */
#define BS_CHECK_GONE 2     /* the socket is gone: the entry was sent as closed (BS_F_CLOSE_UNSEEN) */

struct tcp_event {
	__u64 sk;             /* kernel address of struct sock: identity while open */
	__u64 start_ns;       /* CLOCK_MONOTONIC ns at SYN_SENT/SYN_RECV; 0 if PREEXISTING */
	__u64 established_ns; /* CLOCK_MONOTONIC ns at ESTABLISHED; 0 if never */
	__u64 end_ns;         /* CLOCK_MONOTONIC ns at TCP_CLOSE; 0 while open */
	__u64 bytes_acked;    /* bytes we sent that the peer acknowledged (tcp_sock.bytes_acked) */
	__u64 bytes_received; /* bytes received in order (tcp_sock.bytes_received) */
	/* The two above count sequence space, so a SYN or FIN can add 1. The two below count payload
	 * as the owner's send/recv calls returned it (sock:sock_*_length, kernel 6.3+; 0 without),
	 * including data still read after TCP_CLOSE, until the socket is destroyed. */
	__u64 app_bytes_sent;     /* bytes, sum of sendmsg returns */
	__u64 app_bytes_received; /* bytes, sum of recvmsg returns */
	__u8 saddr[16];       /* local address, network order; IPv4 in the first 4 bytes. Set at */
	__u8 daddr[16];       /* ESTABLISHED and CLOSE (a connecting socket may have no port yet) */
	__u32 pid;            /* owning process (tgid); 0 if unknown */
	__u32 srtt_us;        /* smoothed RTT at TCP_CLOSE, microseconds */
	__u32 retransmits;    /* segments retransmitted (tcp_sock.total_retrans) at TCP_CLOSE */
	__u32 flags;          /* BS_F_* */
	__s32 sk_err;         /* sock.sk_err at close: errno (ECONNREFUSED, ETIMEDOUT, ...) or 0 */
	__u16 sport;          /* local port, host order */
	__u16 dport;          /* remote port, host order */
	__u16 family;         /* AF_INET (2) or AF_INET6 (10) */
	__u8 role;            /* BS_ROLE_* */
	__u8 old_state;       /* TCP state just before TCP_CLOSE (TCP_SYN_SENT, TCP_FIN_WAIT1, ...) */
	__u8 kind;            /* BS_TCP_* */
	__u8 _pad[3];
	char comm[BS_COMM_LEN]; /* owner's task comm */
	/* Packets of this connection the kernel dropped (skb:kfree_skb with a named reason; see
	 * bpf/drop_event.h), and the reason of most of them (majority vote, exact when one reason
	 * has more than half; the running kernel's enum skb_drop_reason number, named by user space). */
	__u32 drops;       /* packets */
	__u32 drop_reason; /* enum skb_drop_reason; 0 when drops == 0 */
	__u32 drop_votes;  /* majority-vote state behind drop_reason (not a count) */
	__u32 _pad2;
};

_Static_assert(sizeof(struct tcp_event) == 160, "struct tcp_event layout is shared with user space");

#endif /* BLINDSPOT_TCP_EVENT_H */
