/* Helpers both BPF programs (http_trace.c, go_tls.c) use. */
#ifndef BS_BPF_COMMON_H
#define BS_BPF_COMMON_H

/* Clamp a length so the verifier can see the bound: the empty asm keeps clang from folding the check
 * into an earlier comparison on another register. */
#define BOUND(n, max)                             \
	do {                                      \
		asm volatile("" : "+r"(n));       \
		if ((n) > (max))                  \
			(n) = (max);              \
	} while (0)

#endif
