/* callerid_ck.bpf.c - the cookie backend: one slot write per outgoing connection.
 *
 * The owner is kept by socket cookie (unique for the life of the kernel, never
 * reused), by programs on the cgroup v2 root:
 *   cgroup connect4/connect6, in the caller's own context, for TCP sockets of
 *   the tracer's network namespace: the record goes to slot cookie % SLOTS of a
 *   direct-mapped array (claimed with one compare-and-swap); if that slot is
 *   busy (an open record, or a closed one within its grace) it goes to the spill
 *   hash instead and the slot's spill count says so
 *   cgroup sock_release (the owner's close(), process context):
 *       the slot does not hold this cookie and its spill count is 0 -> return
 *           (accepted sockets, other namespaces', older than the probe: one
 *           array read, no hash lookup)
 *       never established or already reset (state SYN_SENT/CLOSE) -> forget it
 *       else, within its uid's share and the global budget -> closed_ns = now,
 *           in place; past either -> forget it (counted over_share)
 * Why a direct-mapped array first: cookies are handed out in sequence, so the
 * slots of the sockets being opened and closed now share warm cache lines and
 * pages, where a hash map's buckets are spread at random over megabytes (each
 * insert or lookup a cache and TLB miss: ~300 ns measured, docs/BENCHMARKS.md).
 * No sock_ops program, no tuple in the kernel: the tracer asks sock_diag for the
 * tuple (one exact lookup, in its own namespace), which answers with the
 * socket's cookie, then reads the slot (and the spill hash on a slot miss). A
 * closed record is found for as long as the kernel keeps a socket for the tuple
 * (TIME_WAIT after the owner's close, FIN_WAIT orphans). Kernel struct fields
 * are never read: only the BPF contexts (stable uapi) and helpers.
 *
 * Capacity: the spill hash (its entries allocated as records spill) holds
 * CALLERID_MAX_OWNERS = max_connections + max_closed_connections; the slots come
 * on top. Closed records are bounded per
 * uid (CALLERID_CLOSED_SHARE per grace window) and in total
 * (CALLERID_CLOSED_BUDGET per grace window, a third of max_closed_connections: a
 * record lives less than two windows, so it meets at most three). A full spill
 * hash refuses the insert (counted update_failed); that connection is answered
 * by the /proc fallback.
 *
 * Compile-time flags (set by tracer/probes.py):
 *   CALLERID_SLOTS (a power of two), CALLERID_MAX_OWNERS, CALLERID_MAX_UIDS,
 *   CALLERID_CLOSED_SHARE, CALLERID_CLOSED_BUDGET, CALLERID_GRACE_NS,
 *   CALLERID_NETNS, CALLERID_PIN_SLOTS, CALLERID_PIN_SPILL
 */
#include <uapi/linux/bpf.h>
#include "callerid.h"
#include "current_owner.h"

#define IPPROTO_TCP_  6
#define TCP_SYN_SENT_ 2
#define TCP_CLOSE_    7

BPF_TABLE_PINNED("array", u32, struct callerid_ck_slot, slots, CALLERID_SLOTS, CALLERID_PIN_SLOTS);
BPF_TABLE_PINNED("hash", u64, struct callerid_owner, spill, CALLERID_MAX_OWNERS, CALLERID_PIN_SPILL);
/* LRU: a uid pushed out merely starts a fresh window; nobody can create uids. */
BPF_TABLE("lru_hash", u32, struct callerid_share, shares, CALLERID_MAX_UIDS);
static __always_inline struct callerid_share *shares_lookup(u32 *uid) { return shares.lookup(uid); }
static __always_inline void shares_update(u32 *uid, struct callerid_share *fresh) { shares.update(uid, fresh); }
#include "closed_share.h"
BPF_ARRAY(budget, struct callerid_share, 1);
BPF_PERCPU_ARRAY(stats, u64, CALLERID_STAT_COUNT);

static __always_inline void count(int idx)
{
    u64 *v = stats.lookup(&idx);
    if (v)
        (*v)++;
}

/* The slot a cookie maps to: cookie % SLOTS (a power of two). Never NULL for an index
 * in range, but the verifier wants the check. */
static __always_inline struct callerid_ck_slot *slot_of(u64 cookie)
{
    u32 idx = cookie & (CALLERID_SLOTS - 1);
    return slots.lookup(&idx);
}

/* A slot is free for cookie: empty, already its own, or a closed record past its grace. */
static __always_inline int slot_free(struct callerid_ck_slot *s, u64 seen, u64 cookie, u64 now)
{
    if (seen == 0 || seen == cookie)
        return 1;
    u64 closed = s->owner.closed_ns;
    return closed && now - closed > CALLERID_GRACE_NS;
}

static __always_inline int capture(struct bpf_sock_addr *ctx)
{
    if (ctx->protocol != IPPROTO_TCP_)
        return 1;
    /* Our namespace only: the tracer's sock_diag can find no other's sockets. */
    if (bpf_get_netns_cookie(ctx) != CALLERID_NETNS)
        return 1;
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct callerid_ck_slot *s = slot_of(cookie);
    if (!s)
        return 1;
    struct callerid_owner o = {};
    fill_current_owner(&o);
    u64 seen = s->cookie;
    if (slot_free(s, seen, cookie, o.birth_ns) && __sync_val_compare_and_swap(&s->cookie, seen, cookie) == seen) {
        s->owner = o;   /* nobody asks for this cookie before connect() returns */
        count(CALLERID_STAT_CONNECT);
        return 1;
    }
    if (spill.update(&cookie, &o) != 0) {
        count(CALLERID_STAT_UPDATE_FAILED);   /* full: the /proc fallback answers */
        return 1;
    }
    __sync_fetch_and_add(&s->spill, 1);
    count(CALLERID_STAT_SPILLED);
    count(CALLERID_STAT_CONNECT);
    return 1;   /* 1 = let the connect proceed, always */
}

int callerid_connect4(struct bpf_sock_addr *ctx) { return capture(ctx); }
int callerid_connect6(struct bpf_sock_addr *ctx) { return capture(ctx); }

int callerid_release(struct bpf_sock *ctx)
{
    if (ctx->protocol != IPPROTO_TCP_)
        return 1;
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct callerid_ck_slot *s = slot_of(cookie);
    if (!s)
        return 1;
    struct callerid_owner *o;
    int spilled = 0;
    if (s->cookie == cookie) {
        o = &s->owner;
    } else if (s->spill) {
        o = spill.lookup(&cookie);
        if (!o)
            return 1;
        spilled = 1;
        __sync_fetch_and_add(&s->spill, -1);   /* counts open spilled records only */
    } else {
        return 1;   /* not ours: accepted, another namespace's, or older than the probe */
    }
    u32 state = ctx->state;
    int keep = 1;
    if (state == TCP_SYN_SENT_ || state == TCP_CLOSE_) {
        keep = 0;   /* never established, or reset: no socket will carry the tuple */
        count(CALLERID_STAT_CONNECT_FAILED);
    } else {
        u64 now = bpf_ktime_get_boot_ns();
        int zero = 0;
        struct callerid_share *all = budget.lookup(&zero);
        if (within_share(o->uid, now) && (!all || share_take(all, now, CALLERID_CLOSED_BUDGET))) {
            o->closed_ns = now;
            count(CALLERID_STAT_CLOSED);
            return 1;
        }
        keep = 0;
        count(CALLERID_STAT_OVER_SHARE);
    }
    if (!keep) {
        if (spilled)
            spill.delete(&cookie);
        else
            __sync_val_compare_and_swap(&s->cookie, cookie, 0);
    }
    return 1;
}
