/*
 * The C twin of adopter/pamwire.py: the line format between pam_callerid.so and the
 * adopter daemon (the format is defined there; tests check both sides agree).
 * No allocation, no globals: the reply is parsed in place.
 */
#ifndef CALLERID_WIRELINE_H
#define CALLERID_WIRELINE_H

#include <stddef.h>

#define WL_MAX_LINE 16384   /* adopter/pamwire.py MAX_LINE */
#define WL_MAX_TOKENS 256   /* adopter/pamwire.py MAX_TOKENS */
#define WL_MAX_ENV 64       /* environment variables a reply may carry */

struct wl_reply {
    const char *verdict;   /* adopt | allow | deny | ignore */
    const char *reason;    /* "" if absent */
    const char *msg;       /* "" if absent */
    const char *job;       /* a decimal job id or a SLUID ([0-9A-Za-z_.-]{1,64}), or NULL */
    const char *ns;        /* "" if absent */
    const char *gid;       /* decimal digits (1 .. 2^32-2), or NULL */
    size_t nenv;
    const char *env_name[WL_MAX_ENV];
    const char *env_value[WL_MAX_ENV];
};

/* Append "KEY=VALUE" tokens of the request to out (cap bytes, NUL-terminated):
 * v=1 user=U service=S [left_ms=N, if left_ms >= 0] opt.NAME=VALUE for each of argv's
 * "NAME=VALUE" (or bare "NAME"),
 * skipping names listed in `local` (NULL-terminated) and all but the last of a repeated
 * name. Returns the line's length including its newline, or -1 if it does not fit. */
long wl_request(char *out, size_t cap, const char *user, const char *service, long left_ms,
                int argc, const char **argv, const char *const *local);

/* s percent-encoded as on the wire, truncated to fit out (cap bytes, NUL-terminated):
 * safe to log, whatever s holds. Returns out. */
char *wl_escape(char *out, size_t cap, const char *s);

/* Parse the reply line line[0..len) in place; it must end with '\n', and line[len]
 * must be writable (it becomes a NUL). Returns 0, or -1 if the line is malformed
 * (then *r is unspecified). */
int wl_parse_reply(char *line, size_t len, struct wl_reply *r);

#endif
