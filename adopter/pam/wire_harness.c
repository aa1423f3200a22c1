/*
 * Test harness for wireline.c (tests/unit/test_pam_wire.py): the C parser and encoder
 * on their own, without PAM.
 *   wire_harness reply    < LINE        -> "error" or one "FIELD HEX..." line per field
 *   wire_harness request USER SERVICE [ARG...]  -> the request line, as sent
 *     (with left_ms=$WL_LEFT_MS if that is set)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wireline.h"

static void hex(const char *s)
{
    for (; *s; s++)
        printf("%02x", (unsigned char)*s);
}

static void field(const char *name, const char *value)
{
    printf("%s ", name);
    hex(value);
    printf("\n");
}

int main(int argc, char **argv)
{
    static char buf[2 * WL_MAX_LINE + 1];
    static const char *const local[] = {"socket", "deadline", NULL};
    if (argc >= 4 && strcmp(argv[1], "request") == 0) {
        const char *left = getenv("WL_LEFT_MS");
        long n = wl_request(buf, sizeof buf, argv[2], argv[3], left ? strtol(left, NULL, 10) : -1,
                            argc - 4, (const char **)argv + 4, local);
        if (n < 0) {
            printf("error\n");
            return 1;
        }
        fwrite(buf, 1, (size_t)n, stdout);
        return 0;
    }
    if (argc != 2 || strcmp(argv[1], "reply") != 0) {
        fprintf(stderr, "usage: wire_harness reply < LINE | wire_harness request USER SERVICE [ARG...]\n");
        return 2;
    }
    size_t len = fread(buf, 1, sizeof buf - 1, stdin);
    struct wl_reply r;
    if (wl_parse_reply(buf, len, &r) != 0) {
        printf("error\n");
        return 1;
    }
    field("verdict", r.verdict);
    field("reason", r.reason);
    field("msg", r.msg);
    field("ns", r.ns);
    if (r.job)
        field("job", r.job);
    if (r.gid)
        field("gid", r.gid);
    for (size_t i = 0; i < r.nenv; i++) {
        printf("env ");
        hex(r.env_name[i]);
        printf(" ");
        hex(r.env_value[i]);
        printf("\n");
    }
    return 0;
}
