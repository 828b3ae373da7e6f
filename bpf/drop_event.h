/* SPDX-License-Identifier: Apache-2.0
 * Packet drops (skb:kfree_skb with its reason, kernel 5.17+), counted in the kernel: one entry of
 * the per-CPU hash `drops` per (reason, network namespace), never one ring-buffer record per drop,
 * so a drop storm costs a map update per packet and nothing more. User space (agent/packet_drops.py)
 * reads the map every snapshot interval and writes the deltas as `packet_drops` rows. A drop whose
 * packet belongs to a tracked TCP connection is also counted on that connection (struct tcp_event).
 *
 * What counts as a drop: every kfree_skb whose reason is at least BS_DROP_FIRST (the running
 * kernel's SKB_DROP_REASON_NOT_SPECIFIED; below it are SKB_NOT_DROPPED_YET and SKB_CONSUMED, which are
 * not drops). NOT_SPECIFIED (a plain kfree_skb() with no reason, which the kernel also uses for
 * ordinary frees such as a deferred-accept ACK) is counted per host but never on a connection.
 * User space mirrors these structs in agent/_drop_event.py; tests/test_bpf_layout.py checks them.
 */
#ifndef BLINDSPOT_DROP_EVENT_H
#define BLINDSPOT_DROP_EVENT_H

struct drop_key {
	__u32 reason; /* enum skb_drop_reason of the running kernel */
	__u32 netns;  /* network namespace inode number (as in /proc/PID/ns/net); 0 if unknown */
};

struct drop_count {
	__u64 drops;      /* packets dropped, cumulative */
	__u64 conn_drops; /* of those, packets of a tracked TCP connection, cumulative */
};

_Static_assert(sizeof(struct drop_key) == 8, "struct drop_key layout is shared with user space");
_Static_assert(sizeof(struct drop_count) == 16, "struct drop_count layout is shared with user space");

#endif /* BLINDSPOT_DROP_EVENT_H */
