/* See wireline.h; the format is defined in adopter/pamwire.py. */
#include "wireline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int plain(unsigned char b)
{
    return b > 0x20 && b < 0x7f && b != '%' && b != '=';
}

struct out {
    char *p;
    size_t cap, len;
    int full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || n >= o->cap - o->len) {   /* keep room for the NUL */
        o->full = 1;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static void put_escaped(struct out *o, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        if (plain(b)) {
            put(o, (const char *)&b, 1);
        } else {
            char e[3] = {'%', hex[b >> 4], hex[b & 15]};
            put(o, e, 3);
        }
    }
}

char *wl_escape(char *out, size_t cap, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t w = 0;
    if (cap == 0)
        return out;
    for (; *s; s++) {
        unsigned char b = (unsigned char)*s;
        size_t k = plain(b) ? 1 : 3;
        if (w + k >= cap)
            break;
        if (k == 1) {
            out[w++] = (char)b;
        } else {
            out[w++] = '%';
            out[w++] = hex[b >> 4];
            out[w++] = hex[b & 15];
        }
    }
    out[w] = '\0';
    return out;
}

static void put_token(struct out *o, const char *prefix, const char *key, size_t klen, const char *value)
{
    put(o, " ", 1);
    put(o, prefix, strlen(prefix));
    put_escaped(o, key, klen);
    put(o, "=", 1);
    put_escaped(o, value, strlen(value));
}

static size_t name_len(const char *arg)
{
    const char *eq = strchr(arg, '=');
    return eq ? (size_t)(eq - arg) : strlen(arg);
}

static int is_local(const char *arg, size_t n, const char *const *local)
{
    for (; local && *local; local++)
        if (strlen(*local) == n && strncmp(arg, *local, n) == 0)
            return 1;
    return 0;
}

long wl_request(char *out, size_t cap, const char *user, const char *service, long left_ms,
                int argc, const char **argv, const char *const *local)
{
    struct out o = {out, cap, 0, cap == 0};
    if (cap)
        out[0] = '\0';
    put(&o, "v=1", 3);
    put_token(&o, "", "user", 4, user ? user : "");
    put_token(&o, "", "service", 7, service ? service : "");
    if (left_ms >= 0) {
        char ms[24];
        snprintf(ms, sizeof ms, "%ld", left_ms);
        put_token(&o, "", "left_ms", 7, ms);
    }
    for (int i = 0; i < argc; i++) {
        size_t n = name_len(argv[i]);
        if (n == 0 || is_local(argv[i], n, local))
            continue;
        int later = 0;   /* as on any PAM line, the last of a repeated option wins */
        for (int j = i + 1; j < argc && !later; j++)
            later = name_len(argv[j]) == n && strncmp(argv[i], argv[j], n) == 0;
        if (later)
            continue;
        put_token(&o, "opt.", argv[i], n, argv[i][n] == '=' ? argv[i] + n + 1 : "");
    }
    put(&o, "\n", 1);
    if (o.full || o.len > WL_MAX_LINE)
        return -1;
    return (long)o.len;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode s[0..n) in place and NUL-terminate it; -1 on a bad escape, NUL or unescaped byte. */
static int unescape(char *s, size_t n)
{
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        unsigned char b = (unsigned char)s[i];
        if (b == '%') {
            if (n - i < 3)
                return -1;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            s[w++] = (char)(hi * 16 + lo);
            i += 3;
        } else if (plain(b)) {
            s[w++] = (char)b;
            i++;
        } else {
            return -1;
        }
    }
    s[w] = '\0';
    return 0;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as Python decodes. */
static int utf8_ok(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s;
        int k;
        unsigned min, cp;
        if (c < 0x80) { s++; continue; }
        if ((c & 0xe0) == 0xc0) { k = 1; cp = c & 0x1f; min = 0x80; }
        else if ((c & 0xf0) == 0xe0) { k = 2; cp = c & 0x0f; min = 0x800; }
        else if ((c & 0xf8) == 0xf0) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        for (int i = 1; i <= k; i++) {
            if ((s[i] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
            return 0;
        s += k + 1;
    }
    return 1;
}

static int env_name_ok(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return 0;
    for (s++; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

int wl_parse_reply(char *line, size_t len, struct wl_reply *r)
{
    static const char *const verdicts[] = {"adopt", "allow", "deny", "ignore", NULL};
    const char *keys[WL_MAX_TOKENS];
    size_t nkeys = 0;

    memset(r, 0, sizeof *r);
    r->reason = r->msg = r->ns = "";
    if (len == 0 || len > WL_MAX_LINE || line[len - 1] != '\n' || memchr(line, '\0', len))
        return -1;
    line[len - 1] = '\0';
    for (char *tok = line;;) {
        char *end = strchr(tok, ' ');
        size_t tlen = end ? (size_t)(end - tok) : strlen(tok);
        char *eq = memchr(tok, '=', tlen);
        if (!eq || eq == tok || nkeys == WL_MAX_TOKENS)
            return -1;
        char *key = tok, *value = eq + 1;
        if (unescape(key, (size_t)(eq - tok)) != 0 || unescape(value, tlen - (size_t)(eq - tok) - 1) != 0)
            return -1;
        if (!utf8_ok((const unsigned char *)key) || !utf8_ok((const unsigned char *)value))
            return -1;
        for (size_t i = 0; i < nkeys; i++)
            if (strcmp(keys[i], key) == 0)
                return -1;
        if (nkeys == 0 && (strcmp(key, "v") != 0 || strcmp(value, "1") != 0))
            return -1;
        keys[nkeys++] = key;
        if (strcmp(key, "verdict") == 0) {
            r->verdict = value;
        } else if (strcmp(key, "reason") == 0) {
            r->reason = value;
        } else if (strcmp(key, "msg") == 0) {
            r->msg = value;
        } else if (strcmp(key, "ns") == 0) {
            r->ns = value;
        } else if (strcmp(key, "job") == 0) {   /* a decimal job id or a SLUID */
            size_t n = strlen(value);
            if (n == 0 || n > 64 || strspn(value, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.-") != n)
                return -1;
            r->job = value;
        } else if (strcmp(key, "gid") == 0) {
            size_t n = strlen(value);
            if (n == 0 || n > 10 || strspn(value, "0123456789") != n)
                return -1;
            unsigned long long g = strtoull(value, NULL, 10);
            if (g == 0 || g >= 0xffffffffULL)   /* never root's group, never (gid_t)-1 */
                return -1;
            r->gid = value;
        } else if (strncmp(key, "env.", 4) == 0) {
            if (!env_name_ok(key + 4) || r->nenv == WL_MAX_ENV)
                return -1;
            r->env_name[r->nenv] = key + 4;
            r->env_value[r->nenv++] = value;
        }   /* other keys: from a newer daemon, ignored */
        if (!end)
            break;
        tok = end + 1;
    }
    int known = 0;
    for (int i = 0; verdicts[i]; i++)
        known |= r->verdict && strcmp(r->verdict, verdicts[i]) == 0;
    return known ? 0 : -1;
}
