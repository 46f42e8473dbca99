/* sandbox: what the running agent may still do once it serves.
 *
 * The agent needs privileges only to set itself up (binding a port below the
 * kernel's unprivileged range, if configured), never to move bytes. main.c
 * calls two steps:
 *
 *   mt_sandbox_enter, before the first thread exists: sets no_new_privs,
 *     empties the capability bounding and ambient sets (when it may) and
 *     keeps in the permitted and effective sets at most
 *     CAP_NET_BIND_SERVICE. Threads created later inherit that.
 *   mt_sandbox_lock, once every listener is bound and every thread that
 *     start-up creates is running: drops the calling thread's remaining
 *     capabilities and installs the seccomp allowlist on every thread of
 *     the process (SECCOMP_FILTER_FLAG_TSYNC).
 *
 * The allowlist holds the system calls the agent makes while serving
 * (sandbox.c lists them with the reason for each). Anything else fails with
 * EPERM, which the caller reports as it reports any failed call; the
 * process is not killed. socket() is limited to AF_INET, AF_INET6, AF_UNIX
 * and AF_NETLINK (glibc's getaddrinfo); clone() to new threads; clone3
 * answers ENOSYS so glibc falls back to the clone() the filter can inspect.
 * Builds with AddressSanitizer also allow what LeakSanitizer's exit-time
 * scan needs (a traced helper: clone, ptrace, wait4).
 *
 * The unit test applies the same filter in a child process
 * (tests/unit/sandbox_test.cc). */
#ifndef MT_SANDBOX_H
#define MT_SANDBOX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* security.seccomp in the config. */
typedef enum {
  MT_SECCOMP_ON = 0, /* default: unlisted calls fail with EPERM */
  MT_SECCOMP_OFF,    /* no filter (valgrind, strace -f of a new call) */
  MT_SECCOMP_LOG,    /* unlisted calls are allowed and logged by the kernel (audit) */
} mt_seccomp_mode;

/* "true", "false" or "log", as the config spells it. */
const char *mt_seccomp_mode_str(mt_seccomp_mode mode);

/* 1 when binding |port| needs CAP_NET_BIND_SERVICE on this machine (below
 * net.ipv4.ip_unprivileged_port_start; 1024 when that cannot be read).
 * Port 0 (any free port) never does. */
int mt_sandbox_port_is_privileged(uint16_t port);

/* Step one (see above). |keep_bind|: keep CAP_NET_BIND_SERVICE for the
 * listeners, if the process has it. Returns 1, or 0 with the reason in
 * |err|. */
int mt_sandbox_enter(int keep_bind, char *err, size_t err_len);

/* Step two (see above). Returns 1, or 0 with the reason in |err|. */
int mt_sandbox_lock(mt_seccomp_mode mode, char *err, size_t err_len);

/* The filter alone, on every thread of the calling process (also sets
 * no_new_privs, which the kernel requires). MT_SECCOMP_OFF does nothing.
 * Returns 1, or 0 with the reason in |err|. */
int mt_sandbox_apply_seccomp(mt_seccomp_mode mode, char *err, size_t err_len);

/* How many system calls the allowlist names (for the start-up log line). */
size_t mt_sandbox_allowed_count(void);

#ifdef __cplusplus
}
#endif

#endif /* MT_SANDBOX_H */
