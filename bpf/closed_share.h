/* closed_share.h - the budget of closed records, shared by the cookie and sockstore
 * backends: each uid may keep CALLERID_CLOSED_SHARE closed records per grace window
 * (CALLERID_GRACE_NS), so that one user's churn cannot take the grace period of
 * anyone else's connections.
 *
 * BCC rewrites map calls (shares.lookup) only in the file it compiles, not in the
 * headers that file includes, so the includer defines the per-uid map and its two
 * accessors before including this:
 *   static struct callerid_share *shares_lookup(u32 *uid);
 *   static void shares_update(u32 *uid, struct callerid_share *fresh);
 */
#ifndef CALLERID_CLOSED_SHARE_H
#define CALLERID_CLOSED_SHARE_H

#include "callerid.h"

/* May one more closed record be kept in s's current grace window (limit per window)? */
static __always_inline int share_take(struct callerid_share *s, u64 now, u64 limit)
{
    if (now - s->window_ns > CALLERID_GRACE_NS) {
        s->window_ns = now;   /* a racing CPU may reset twice: only ever more lenient */
        s->used = 0;
    }
    return __sync_fetch_and_add(&s->used, 1) < limit;
}

/* May this uid keep one more closed record in its current grace window? */
static __always_inline int within_share(u32 uid, u64 now)
{
    struct callerid_share *s = shares_lookup(&uid);
    if (!s) {
        struct callerid_share fresh = { .window_ns = now, .used = 0 };
        shares_update(&uid, &fresh);
        s = shares_lookup(&uid);
        if (!s)
            return 1;
    }
    return share_take(s, now, CALLERID_CLOSED_SHARE);
}

#endif
