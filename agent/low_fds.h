/* low_fds: a few descriptor numbers kept low, for connections of a loop
 * that must not grow.
 *
 * libev keeps a per-descriptor table indexed by descriptor number and never
 * shrinks it. The main loop serves the admin endpoint; a scrape that
 * arrives while the data plane holds 16,000 descriptors is accepted on
 * descriptor ~16,000, and the main loop's table stays at that size for
 * good. This reserve holds |count| low numbers (placeholders on /dev/null,
 * taken at start-up) and moves an accepted socket onto one of them: dup3
 * replaces a placeholder atomically, and closing puts it back the same way,
 * so the reserve never needs a free descriptor of its own.
 *
 * Single-threaded: use from one loop's thread. */
#ifndef MT_LOW_FDS_H
#define MT_LOW_FDS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_low_fds mt_low_fds;

/* Reserves up to |count| descriptors (fewer if the process has fewer
 * free). NULL when out of memory or when /dev/null cannot be opened. */
mt_low_fds *mt_low_fds_new(size_t count);
void mt_low_fds_free(mt_low_fds *reserve); /* closes the placeholders; accepts NULL */

/* |fd| moved onto a free reserved number below it (|fd| is closed), or
 * |fd| itself when none is free or lower, or on any error. Keeps the
 * descriptor's flags (O_NONBLOCK lives with the socket) and sets CLOEXEC. */
int mt_low_fds_take(mt_low_fds *reserve, int fd);

/* Closes |fd|: a reserved number gets its placeholder back, any other is
 * simply closed. Accepts a NULL reserve (plain close). */
void mt_low_fds_close(mt_low_fds *reserve, int fd);

/* Reserved numbers now holding a connection (tests). */
size_t mt_low_fds_in_use(const mt_low_fds *reserve);

#ifdef __cplusplus
}
#endif

#endif /* MT_LOW_FDS_H */
