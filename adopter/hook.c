/*
 * callerid-pam-hook: the pam_exec hook. Asks the adopter daemon, enforces the
 * deadline, maps its verdict to an exit code.
 *
 * It runs for every ssh login, so it is a small C program (a Python hook cost
 * ~25-33 ms of process start-up per login; this costs ~1 ms, see docs/BENCHMARKS.md).
 * It trusts nothing in its environment beyond PAM_USER, PAM_SERVICE and PAM_TYPE,
 * and sends no pid: the daemon takes the process to adopt from the socket's peer
 * credentials (this hook's parent, sshd [priv]). pam_exec waits for it forever, so
 * the deadline here is what bounds a login.
 *
 * PAM line (account stack, last):
 *   account required pam_exec.so stdout quiet /opt/callerid/libexec/callerid-pam-hook [name=value ...]
 * Arguments: any pam_slurm_adopt option (action_no_jobs=..., action_unknown=..., ...) plus
 *   socket=PATH      the adopter daemon's unix socket (default /run/callerid/adopter.sock)
 *   deadline=SECS    total time allowed (default 5, at least 0.1)
 * pam_exec turns any non-zero exit into an error, so "ignore" and "allow" exit 0 and
 * "deny" exits 1 (adopter/policy.py pam_exit_code).
 *
 * Wire contract with adopter/daemon.py parse_request and adopter/service.py Reply.encode, one line of
 * JSON each way:
 *   request  {"v":1,"user":U,"service":S,"type":T,"options":{name:value,...}}\n
 *   reply    {"v":1,"verdict":...,"exit":N,"message":M or null,"job":J or null}\n
 *            (J: the job adopted into, decimal id or SLUID; unused here)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/callerid/adopter.sock"
#define MAX_REQUEST 16384   /* adopter/daemon.py MAX_REQUEST */
#define MAX_REPLY 65536

static const char *generic_action = "ignore";  /* action_generic_failure */

/* Write all of buf; async-signal-safe, so the SIGALRM path may use it. */
static void put(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        buf += w;
        n -= (size_t)w;
    }
}

static void puts_fd(int fd, const char *s) { put(fd, s, strlen(s)); }

/* Apply action_generic_failure: the daemon could not be asked. Async-signal-safe. */
static void fail(const char *why)
{
    int deny = strcmp(generic_action, "deny") == 0;
    puts_fd(2, "callerid: adopter unavailable (");
    puts_fd(2, why);
    puts_fd(2, "); action_generic_failure=");
    puts_fd(2, generic_action);
    puts_fd(2, "\n");
    if (deny)
        puts_fd(1, "Access denied by callerid: cannot determine the job of this session\n");
    _exit(deny ? 1 : 0);
}

static void on_alarm(int sig)
{
    (void)sig;
    fail("deadline passed");   /* whatever blocked, the login goes on */
}

/* Growing-free request buffer: everything must fit in MAX_REQUEST. */
struct buf {
    char data[MAX_REQUEST + 1];
    size_t len;
    int overflow;
};

static void add(struct buf *b, const char *s, size_t n)
{
    if (b->overflow || n > MAX_REQUEST - b->len) {
        b->overflow = 1;
        return;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void add_s(struct buf *b, const char *s) { add(b, s, strlen(s)); }

/* A JSON string of the bytes s[0..n): quotes, backslashes and control characters escaped;
 * other bytes pass through (the daemon decodes UTF-8 and refuses what is not). */
static void add_json(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            add(b, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            add(b, e, 6);
        } else {
            add(b, (const char *)&c, 1);
        }
    }
    add(b, "\"", 1);
}

static void add_json_z(struct buf *b, const char *s) { add_json(b, s ? s : "", s ? strlen(s) : 0); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Socket timeouts for the time left; the itimer is the backstop if one misses. */
static void set_timeouts(int fd, double end)
{
    double left = end - now();
    if (left < 0.01)
        left = 0.01;
    struct timeval tv = {(time_t)left, (suseconds_t)((left - (double)(time_t)left) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* Position just after `"key":` (and spaces) in the reply, or NULL. */
static const char *field(const char *reply, const char *key)
{
    size_t k = strlen(key);
    for (const char *p = reply; (p = strchr(p, '"')) != NULL; p++) {
        if (strncmp(p + 1, key, k) == 0 && p[1 + k] == '"') {
            const char *q = p + 2 + k;
            while (*q == ' ')
                q++;
            if (*q != ':')
                continue;
            q++;
            while (*q == ' ')
                q++;
            return q;
        }
    }
    return NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static size_t utf8(unsigned cp, char *out)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xc0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f)); return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); out[3] = (char)(0x80 | (cp & 0x3f)); return 4;
}

/* Decode the JSON string at p (just past its opening quote) into out (cap bytes).
 * Control characters other than newline and tab become '?': the text reaches a terminal.
 * Returns 0, or -1 if the string is malformed or unterminated. */
static int json_string(const char *p, char *out, size_t cap)
{
    size_t n = 0;
    while (*p && *p != '"') {
        char tmp[4];
        size_t k = 1;
        unsigned char c = (unsigned char)*p++;
        if (c == '\\') {
            c = (unsigned char)*p++;
            switch (c) {
            case '"': case '\\': case '/': tmp[0] = (char)c; break;
            case 'b': case 'f': case 'r': tmp[0] = '?'; break;
            case 'n': tmp[0] = '\n'; break;
            case 't': tmp[0] = '\t'; break;
            case 'u': {
                int cp = hex4(p);
                if (cp < 0)
                    return -1;
                p += 4;
                if (cp >= 0xd800 && cp < 0xdc00 && p[0] == '\\' && p[1] == 'u') {
                    int lo = hex4(p + 2);
                    if (lo >= 0xdc00 && lo < 0xe000) {
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        p += 6;
                    }
                }
                if (cp >= 0xd800 && cp < 0xe000)
                    cp = '?';   /* a lone surrogate */
                if (cp < 0x20 && cp != '\n' && cp != '\t')
                    cp = '?';
                k = utf8((unsigned)cp, tmp);
                break;
            }
            default:
                return -1;
            }
        } else {
            tmp[0] = (c < 0x20 && c != '\t') ? '?' : (char)c;
        }
        if (n + k >= cap)
            return -1;
        memcpy(out + n, tmp, k);
        n += k;
    }
    if (*p != '"')
        return -1;
    out[n] = '\0';
    return 0;
}

int main(int argc, char **argv)
{
    const char *sock_path = DEFAULT_SOCKET;
    double deadline = 5.0;
    static struct buf req;

    /* First pass: the hook's own options and action_generic_failure, before anything can fail. */
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "socket=", 7) == 0) {
            sock_path = argv[i] + 7;
        } else if (strncmp(argv[i], "deadline=", 9) == 0) {
            char *end;
            double d = strtod(argv[i] + 9, &end);
            if (end != argv[i] + 9 && *end == '\0' && d == d)
                deadline = d < 0.1 ? 0.1 : (d > 3600 ? 3600 : d);
        } else if (strncmp(argv[i], "action_generic_failure=", 23) == 0) {
            generic_action = argv[i] + 23;
        }
    }
    double end = now() + deadline;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 0}, {(time_t)deadline, (suseconds_t)((deadline - (double)(time_t)deadline) * 1e6)}};
    setitimer(ITIMER_REAL, &it, NULL);

    add_s(&req, "{\"v\":1,\"user\":");
    add_json_z(&req, getenv("PAM_USER"));
    add_s(&req, ",\"service\":");
    add_json_z(&req, getenv("PAM_SERVICE"));
    add_s(&req, ",\"type\":");
    add_json_z(&req, getenv("PAM_TYPE"));
    add_s(&req, ",\"options\":{");
    int first = 1;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "socket=", 7) == 0 || strncmp(argv[i], "deadline=", 9) == 0)
            continue;
        const char *eq = strchr(argv[i], '=');
        size_t nlen = eq ? (size_t)(eq - argv[i]) : strlen(argv[i]);
        if (!first)
            add(&req, ",", 1);
        first = 0;
        add_json(&req, argv[i], nlen);   /* a bare word is passed on: the daemon warns about it */
        add(&req, ":", 1);
        add_json_z(&req, eq ? eq + 1 : "");
    }
    add_s(&req, "}}\n");
    if (req.overflow)
        fail("request too large");

    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(sock_path) >= sizeof addr.sun_path)
        fail("socket path too long");
    strcpy(addr.sun_path, sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail("socket() failed");
    set_timeouts(fd, end);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        fail(errno == ENOENT ? "no daemon socket" : errno == ECONNREFUSED ? "connection refused" : "cannot connect");
    for (size_t off = 0; off < req.len;) {
        set_timeouts(fd, end);
        ssize_t w = send(fd, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            fail("cannot send the request");
        off += (size_t)w;
    }

    static char reply[MAX_REPLY + 1];
    size_t got = 0;
    while (got < MAX_REPLY && (got == 0 || reply[got - 1] != '\n')) {
        set_timeouts(fd, end);
        ssize_t r = recv(fd, reply + got, MAX_REPLY - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            fail(errno == EAGAIN || errno == EWOULDBLOCK ? "no reply before the deadline" : "cannot read the reply");
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    reply[got] = '\0';

    const char *ex = field(reply, "exit");
    char *after;
    long code = ex ? strtol(ex, &after, 10) : 0;
    if (got == 0 || reply[got - 1] != '\n' || reply[0] != '{' || !ex || after == ex)
        fail(got == 0 ? "empty reply" : "malformed reply");

    static char message[MAX_REPLY];
    const char *m = field(reply, "message");
    if (m && *m == '"') {
        if (json_string(m + 1, message, sizeof message) != 0)
            fail("malformed reply");
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    if (message[0]) {
        puts_fd(1, message);
        puts_fd(1, "\n");
    }
    return code == 0 ? 0 : 1;
}
