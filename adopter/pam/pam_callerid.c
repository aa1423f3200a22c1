/*
 * pam_callerid.so: the account module of callerid, a drop-in for pam_slurm_adopt.
 *
 *   account required pam_callerid.so [pam_slurm_adopt options] [socket=PATH] [deadline=SECS]
 *
 * It decides nothing itself: it asks the adopter daemon over its root-only unix socket
 * (line format: adopter/pamwire.py, C side wireline.c) and acts on the verdict. The
 * daemon takes the process to adopt from the socket's peer credentials, which are this
 * process (sshd [priv]), never from the request. What the module does itself is what
 * only the session's own process can do, and what must happen when the daemon cannot
 * answer:
 *   - the return code: adopt/allow -> PAM_SUCCESS, ignore -> PAM_IGNORE,
 *     deny -> PAM_PERM_DENIED (as pam_slurm_adopt);
 *   - the deny text, through the PAM conversation; diagnostics only to syslog (authpriv);
 *   - SLURM_JOB_ID and the job's device variables, with pam_putenv;
 *   - joining the job's mount namespace (job_container/tmpfs) with setns;
 *   - the total deadline: poll() with the time left on every step; past it, or if the
 *     daemon is unreachable or answers garbage, action_generic_failure applies. The time
 *     left is sent with the request, so the daemon stops working before the module gives up.
 * It never blocks a signal, sets an alarm or writes to stdout: it runs inside sshd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define PAM_SM_ACCOUNT
#include <security/pam_ext.h>
#include <security/pam_modules.h>

#include "wireline.h"

#define DEFAULT_SOCKET "/run/callerid/adopter.sock"
#define DEFAULT_DEADLINE_MS 5000
/* adopter/policy.py MSG_GENERIC: what the user sees when the daemon gave no answer and
 * action_generic_failure=deny (a unit test checks the two agree). */
#define MSG_GENERIC "Access denied by callerid: access to this node could not be checked"
/* adopter/policy.py MSG_ADOPT_FAILED: joining the job's namespace failed, action_adopt_failure=deny. */
#define MSG_ADOPT_FAILED "Access denied by callerid: your session could not be added to your job on this node"

/* Options the module uses itself; everything else goes to the daemon (which also
 * reads action_generic_failure, action_adopt_failure and log_level). */
static const char *const local_options[] = {"socket", "deadline", NULL};

struct cfg {
    const char *socket;
    long deadline_ms;
    int max_prio;            /* log_level as a syslog priority; -1: quiet */
    const char *generic;     /* action_generic_failure */
    const char *adopt_fail;  /* action_adopt_failure */
};

static void say(pam_handle_t *pamh, const struct cfg *c, int prio, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void say(pam_handle_t *pamh, const struct cfg *c, int prio, const char *fmt, ...)
{
    if (prio > c->max_prio)
        return;
    va_list ap;
    va_start(ap, fmt);
    pam_vsyslog(pamh, prio, fmt, ap);   /* facility LOG_AUTHPRIV */
    va_end(ap);
}

static const char *value_of(const char *arg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && arg[n] == '=' ? arg + n + 1 : NULL;
}

/* pam_slurm_adopt's log_level names, as syslog priorities. */
static int log_level(const char *v)
{
    static const struct { const char *name; int prio; } levels[] = {
        {"quiet", -1}, {"fatal", LOG_CRIT}, {"error", LOG_ERR}, {"info", LOG_INFO},
        {"verbose", LOG_INFO}, {"debug", LOG_DEBUG}, {"debug2", LOG_DEBUG}, {"debug3", LOG_DEBUG},
        {"debug4", LOG_DEBUG}, {"debug5", LOG_DEBUG},
    };
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcasecmp(v, levels[i].name) == 0)
            return levels[i].prio;
    return -2;
}

static int one_of(const char *v, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (strcasecmp(v, *allowed) == 0)
            return 1;
    return 0;
}

/* The module's own options; a bad value is logged and the default kept (as pam_slurm_adopt). */
static void parse_cfg(pam_handle_t *pamh, struct cfg *c, int argc, const char **argv)
{
    static const char *const generic[] = {"ignore", "allow", "deny", NULL};
    static const char *const adopt_fail[] = {"allow", "deny", NULL};
    char esc[256];
    *c = (struct cfg){DEFAULT_SOCKET, DEFAULT_DEADLINE_MS, LOG_INFO, "ignore", "allow"};
    for (int i = 0; i < argc; i++) {   /* log_level first, so it governs the warnings below */
        const char *v = value_of(argv[i], "log_level");
        if (v && log_level(v) != -2)
            c->max_prio = log_level(v);
    }
    for (int i = 0; i < argc; i++) {
        const char *v;
        if ((v = value_of(argv[i], "socket")) != NULL) {
            c->socket = v;
        } else if ((v = value_of(argv[i], "deadline")) != NULL) {
            char *end;
            double d = strtod(v, &end);
            if (end != v && *end == '\0' && d >= 0.1 && d <= 3600)
                c->deadline_ms = (long)(d * 1000);
            else
                say(pamh, c, LOG_WARNING, "deadline=%s: expected seconds between 0.1 and 3600; keeping %ld ms",
                    wl_escape(esc, sizeof esc, v), c->deadline_ms);
        } else if ((v = value_of(argv[i], "action_generic_failure")) != NULL) {
            if (one_of(v, generic))
                c->generic = v;   /* the daemon logs a bad value; here it just keeps the default */
        } else if ((v = value_of(argv[i], "action_adopt_failure")) != NULL) {
            if (one_of(v, adopt_fail))
                c->adopt_fail = v;
        } else if ((v = value_of(argv[i], "log_level")) != NULL) {
            if (log_level(v) == -2)
                say(pamh, c, LOG_WARNING, "log_level=%s: unknown level; keeping the default",
                    wl_escape(esc, sizeof esc, v));
        }
    }
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for events on fd until end_ms; 1 ready, 0 deadline passed, -1 error. */
static int wait_fd(int fd, short events, long end_ms)
{
    for (;;) {
        long left = end_ms - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r;
        return 1;
    }
}

/* The daemon's socket must be root's, in a directory only root can change: a socket
 * anyone could create would let them answer "allow" for every login. */
static const char *socket_untrusted(const char *path)
{
    struct stat st;
    char dir[sizeof ((struct sockaddr_un *)0)->sun_path];
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? "no daemon socket" : "cannot stat the daemon socket";
    if (!S_ISSOCK(st.st_mode) || st.st_uid != 0)
        return "the daemon socket is not a socket owned by root";
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return "the daemon socket path is not absolute";
    *(slash == dir ? slash + 1 : slash) = '\0';
    if (stat(dir, &st) != 0 || st.st_uid != 0 || (st.st_mode & 022))
        return "the daemon socket's directory is not root's alone";
    return NULL;
}

/* Send req and read one reply line into reply (cap bytes); returns its length, or -1
 * with *why set. Every step is bounded by end_ms. */
static long ask(const char *path, const char *req, size_t req_len, char *reply, size_t cap, long end_ms,
                const char **why)
{
    struct sockaddr_un addr;
    if (strlen(path) >= sizeof addr.sun_path) {
        *why = "socket path too long";
        return -1;
    }
    if ((*why = socket_untrusted(path)) != NULL)
        return -1;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        *why = "socket() failed";
        return -1;
    }
    long got = -1;
    /* A unix connect() does not return EINPROGRESS: EAGAIN means the backlog is full. */
    while (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            *why = errno == ECONNREFUSED ? "connection refused" : errno == ENOENT ? "no daemon socket" : "cannot connect";
            goto out;
        }
        if (now_ms() >= end_ms) {
            *why = "deadline passed (connect)";
            goto out;
        }
        struct timespec nap = {0, 10 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    for (size_t off = 0; off < req_len;) {
        int w = wait_fd(fd, POLLOUT, end_ms);
        if (w <= 0) {
            *why = w == 0 ? "deadline passed (send)" : "poll failed";
            goto out;
        }
        ssize_t n = send(fd, req + off, req_len - off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            *why = "cannot send the request";
            goto out;
        }
        off += (size_t)n;
    }
    size_t len = 0;
    while (len == 0 || reply[len - 1] != '\n') {
        if (len == cap) {
            *why = "reply too long";
            goto out;
        }
        int w = wait_fd(fd, POLLIN, end_ms);
        if (w <= 0) {
            *why = w == 0 ? "deadline passed (no reply)" : "poll failed";
            goto out;
        }
        ssize_t n = recv(fd, reply + len, cap - len, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            *why = "cannot read the reply";
            goto out;
        }
        if (n == 0) {
            *why = len ? "reply cut short" : "the daemon closed the connection without a reply";
            goto out;
        }
        len += (size_t)n;
    }
    got = (long)len;
out:
    close(fd);
    return got;
}

static int pam_code(const char *verdict)
{
    if (strcmp(verdict, "deny") == 0)
        return PAM_PERM_DENIED;
    if (strcmp(verdict, "ignore") == 0)
        return PAM_IGNORE;
    return PAM_SUCCESS;   /* adopt, allow */
}

/* Tell the user (PAM conversation); control characters never reach their terminal. */
static void tell(pam_handle_t *pamh, const char *msg)
{
    char clean[1024];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p && n + 1 < sizeof clean; p++)
        clean[n++] = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
    clean[n] = '\0';
    if (n)
        pam_error(pamh, "%s", clean);
}

/* action_generic_failure: the daemon could not be asked, or its answer was unusable. */
static int generic_failure(pam_handle_t *pamh, const struct cfg *c, const char *user, const char *why)
{
    char esc[512];
    say(pamh, c, LOG_ERR, "user=%s adopter unavailable (%s); action_generic_failure=%s",
        wl_escape(esc, sizeof esc, user), why, c->generic);
    if (strcasecmp(c->generic, "deny") == 0) {
        tell(pamh, MSG_GENERIC);
        return PAM_PERM_DENIED;
    }
    return strcasecmp(c->generic, "allow") == 0 ? PAM_SUCCESS : PAM_IGNORE;
}

/* Join the job's mount namespace (job_container/tmpfs); the daemon has checked the path. */
static int join_namespace(pam_handle_t *pamh, const struct cfg *c, const char *path)
{
    char esc[512];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || st.st_uid != 0 || setns(fd, CLONE_NEWNS) != 0) {
        int err = errno;
        say(pamh, c, LOG_ERR, "cannot join the job's mount namespace %s: %s",
            wl_escape(esc, sizeof esc, path), strerror(err));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

#define GID_DATA "pam_callerid_job_gid"

static void free_data(pam_handle_t *pamh, void *data, int status)
{
    (void)pamh;
    (void)status;
    free(data);
}

/* Remember the job's group for pam_sm_setcred: sshd resets the groups (initgroups)
 * after the account step, then calls pam_setcred to add what modules grant. */
static void keep_group(pam_handle_t *pamh, const struct cfg *c, const char *gid)
{
    gid_t *g = malloc(sizeof *g);
    if (!g)
        return;
    *g = (gid_t)strtoul(gid, NULL, 10);
    if (pam_set_data(pamh, GID_DATA, g, free_data) != PAM_SUCCESS) {
        free(g);
        say(pamh, c, LOG_ERR, "cannot keep the job's group %s for setcred", gid);
    }
}

/* The session's environment: SLURM_JOB_ID (as pam_slurm_adopt) and the job's variables. */
static void put_env(pam_handle_t *pamh, const struct cfg *c, const struct wl_reply *r)
{
    char kv[WL_MAX_LINE + 16];
    if (r->job) {
        snprintf(kv, sizeof kv, "SLURM_JOB_ID=%s", r->job);
        if (pam_putenv(pamh, kv) != PAM_SUCCESS)
            say(pamh, c, LOG_ERR, "pam_putenv(SLURM_JOB_ID) failed");
    }
    for (size_t i = 0; i < r->nenv; i++) {
        if ((size_t)snprintf(kv, sizeof kv, "%s=%s", r->env_name[i], r->env_value[i]) >= sizeof kv)
            continue;
        if (pam_putenv(pamh, kv) != PAM_SUCCESS)
            say(pamh, c, LOG_ERR, "pam_putenv(%s) failed", r->env_name[i]);
    }
}

/* Built with -fvisibility=hidden: this is the one symbol PAM needs. */
__attribute__((visibility("default")))
PAM_EXTERN int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)flags;
    struct cfg c;
    parse_cfg(pamh, &c, argc, argv);
    long end_ms = now_ms() + c.deadline_ms;

    const char *user = NULL, *service = NULL;
    if (pam_get_item(pamh, PAM_USER, (const void **)&user) != PAM_SUCCESS || !user)
        user = "";
    if (pam_get_item(pamh, PAM_SERVICE, (const void **)&service) != PAM_SUCCESS || !service)
        service = "";

    char *req = malloc(WL_MAX_LINE + 1), *reply = malloc(WL_MAX_LINE + 1);
    int rc;
    const char *why = NULL;
    struct wl_reply r;
    long req_len, len = -1;
    if (!req || !reply) {
        rc = generic_failure(pamh, &c, user, "out of memory");
        goto out;
    }
    /* the time left goes with the request: the daemon's work ends before the module gives up */
    long left_ms = end_ms - now_ms();
    req_len = wl_request(req, WL_MAX_LINE + 1, user, service, left_ms > 0 ? left_ms : 0, argc, argv,
                         local_options);
    if (req_len < 0) {
        rc = generic_failure(pamh, &c, user, "request too large");
        goto out;
    }
    len = ask(c.socket, req, (size_t)req_len, reply, WL_MAX_LINE, end_ms, &why);
    if (len < 0) {
        rc = generic_failure(pamh, &c, user, why);
        goto out;
    }
    if (wl_parse_reply(reply, (size_t)len, &r) != 0) {
        rc = generic_failure(pamh, &c, user, "malformed reply");
        goto out;
    }
    rc = pam_code(r.verdict);
    if (strcmp(r.verdict, "adopt") == 0) {
        if (*r.ns && join_namespace(pamh, &c, r.ns) != 0 && strcasecmp(c.adopt_fail, "deny") == 0) {
            /* sshd is already in the job's cgroup; the session would see the host's /tmp */
            r.msg = MSG_ADOPT_FAILED;
            r.verdict = "deny";
            rc = PAM_PERM_DENIED;
        } else {
            put_env(pamh, &c, &r);
            if (r.gid)
                keep_group(pamh, &c, r.gid);
        }
    }
    if (rc == PAM_PERM_DENIED)
        tell(pamh, r.msg);
    {
        char esc[512], resc[256];
        say(pamh, &c, LOG_INFO, "user=%s verdict=%s reason=%s job=%s", wl_escape(esc, sizeof esc, user), r.verdict,
            wl_escape(resc, sizeof resc, r.reason), r.job ? r.job : "-");
    }
out:
    free(req);
    free(reply);
    return rc;
}

/* auth: nothing to authenticate; the module is in the auth stack only for setcred. */
__attribute__((visibility("default")))
PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    (void)pamh;
    (void)flags;
    (void)argc;
    (void)argv;
    return PAM_IGNORE;
}

/* setcred (auth stack, `auth optional pam_callerid.so`): add the adopted job's group to the
 * session's supplementary groups, after sshd's initgroups(). The real gid stays the
 * user's: `newgrp` is still needed where the real gid counts (ptrace, new files). */
__attribute__((visibility("default")))
PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    const void *data = NULL;
    struct cfg c;
    if (!(flags & (PAM_ESTABLISH_CRED | PAM_REINITIALIZE_CRED)) ||
        pam_get_data(pamh, GID_DATA, &data) != PAM_SUCCESS || !data)
        return PAM_IGNORE;
    parse_cfg(pamh, &c, argc, argv);
    gid_t want = *(const gid_t *)data;
    int n = getgroups(0, NULL);
    if (n < 0)
        return PAM_IGNORE;
    gid_t *groups = calloc((size_t)n + 1, sizeof *groups);
    if (!groups)
        return PAM_IGNORE;
    n = getgroups(n, groups);
    int have = 0;
    for (int i = 0; i < n; i++)
        have |= groups[i] == want;
    int rc = PAM_SUCCESS;
    if (n >= 0 && !have) {
        groups[n] = want;
        if (setgroups((size_t)n + 1, groups) != 0) {
            say(pamh, &c, LOG_ERR, "cannot add the job's group %u: %s", (unsigned)want, strerror(errno));
            rc = PAM_IGNORE;
        } else {
            say(pamh, &c, LOG_INFO, "added the job's group %u to the session's groups", (unsigned)want);
        }
    }
    free(groups);
    return rc;
}
