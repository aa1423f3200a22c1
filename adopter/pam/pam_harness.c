/*
 * Test harness for pam_callerid.so under the real Linux-PAM, without sshd
 * (tests/unit/test_pam_module.py). A PAM stack folds PAM_IGNORE into the other modules'
 * results (a stack of one ignoring module fails), so to see the module's own return code
 * the harness makes a real PAM handle (pam_start_confdir: /etc/pam.d is never touched)
 * and calls the module's pam_sm_acct_mgmt on it, as libpam's dispatcher does.
 *   pam_harness CONFDIR SERVICE USER MODULE [ARG...]
 *   -> "error HEX" / "info HEX" per conversation message, "rc NAME", "env HEX" per
 *      PAM environment entry
 *   pam_harness CONFDIR SERVICE USER -
 *   -> the same through SERVICE's own stacks, plus (after pam_setcred, as sshd calls it
 *      after initgroups()) "setcred NAME" and "groups G,G,..." (the harness's own groups)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <grp.h>
#include <unistd.h>
#include <security/pam_appl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hexline(const char *tag, const char *s)
{
    printf("%s ", tag);
    for (; s && *s; s++)
        printf("%02x", (unsigned char)*s);
    printf("\n");
}

static int conv(int n, const struct pam_message **msg, struct pam_response **resp, void *data)
{
    (void)data;
    struct pam_response *r = calloc((size_t)n, sizeof *r);
    if (!r)
        return PAM_BUF_ERR;
    for (int i = 0; i < n; i++) {
        switch (msg[i]->msg_style) {
        case PAM_ERROR_MSG: hexline("error", msg[i]->msg); break;
        case PAM_TEXT_INFO: hexline("info", msg[i]->msg); break;
        default: hexline("prompt", msg[i]->msg); break;
        }
    }
    *resp = r;
    return PAM_SUCCESS;
}

static const char *name(int rc)
{
    switch (rc) {
    case PAM_SUCCESS: return "PAM_SUCCESS";
    case PAM_IGNORE: return "PAM_IGNORE";
    case PAM_PERM_DENIED: return "PAM_PERM_DENIED";
    case PAM_AUTH_ERR: return "PAM_AUTH_ERR";
    case PAM_USER_UNKNOWN: return "PAM_USER_UNKNOWN";
    case PAM_SYSTEM_ERR: return "PAM_SYSTEM_ERR";
    case PAM_SESSION_ERR: return "PAM_SESSION_ERR";
    default: return "OTHER";
    }
}

static void print_groups(void)
{
    gid_t groups[256];
    int n = getgroups(256, groups);
    printf("groups ");
    for (int i = 0; i < n; i++)
        printf("%s%u", i ? "," : "", (unsigned)groups[i]);
    printf("\n");
}

static void print_env(pam_handle_t *h)
{
    char **env = pam_getenvlist(h);
    for (char **e = env; e && *e; e++) {
        hexline("env", *e);
        free(*e);
    }
    free(env);
}

/* MODULE "-": run SERVICE's own stacks (pam_acct_mgmt, then pam_setcred as sshd does after
 * initgroups()); module data (pam_set_data) only works when libpam dispatches the call. */
static int run_stacks(pam_handle_t *h)
{
    int rc = pam_acct_mgmt(h, 0);
    printf("rc %s\n", name(rc));
    if (setgroups(0, NULL) == 0) {
        printf("setcred %s\n", name(pam_setcred(h, PAM_REINITIALIZE_CRED)));
        print_groups();
    }
    print_env(h);
    pam_end(h, rc);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: pam_harness CONFDIR SERVICE USER MODULE|- [ARG...]\n");
        return 2;
    }
    struct pam_conv c = {conv, NULL};
    pam_handle_t *h = NULL;
    int rc = pam_start_confdir(argv[2], argv[3], &c, argv[1], &h);
    if (rc != PAM_SUCCESS) {
        printf("start %s\n", name(rc));
        return 1;
    }
    if (strcmp(argv[4], "-") == 0)
        return run_stacks(h);
    void *mod = dlopen(argv[4], RTLD_NOW | RTLD_LOCAL);
    if (!mod) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    typedef int (*acct_fn)(pam_handle_t *, int, int, const char **);
    acct_fn acct;
    *(void **)&acct = dlsym(mod, "pam_sm_acct_mgmt");
    if (!acct) {
        fprintf(stderr, "no pam_sm_acct_mgmt in %s\n", argv[4]);
        return 2;
    }
    rc = acct(h, 0, argc - 5, (const char **)argv + 5);
    printf("rc %s\n", name(rc));
    print_env(h);
    pam_end(h, rc);
    dlclose(mod);
    return 0;
}
