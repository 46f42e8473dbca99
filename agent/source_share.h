/* source_share: how many inbound handshakes each source address has in
 * progress on one worker, so that one source cannot take them all.
 *
 * A flood of half-open or stalled (slowloris) connections from one address,
 * or a client opening connections as fast as it can, holds at most |limit|
 * handshakes at a time; every other source keeps its share of the worker.
 * The port is ignored (one host, one share); IPv4 and IPv4-mapped IPv6 are
 * the same source.
 *
 * One table per worker, used only on that worker's thread: no locks. The
 * table holds only sources with a handshake in progress (an entry goes when
 * its count returns to 0) and shrinks after a burst. Lookups hash with a
 * random per-table SipHash key, so chosen addresses cannot make probes long. */
#ifndef MT_SOURCE_SHARE_H
#define MT_SOURCE_SHARE_H

#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mt_source_share mt_source_share;

/* NULL when out of memory. */
mt_source_share *mt_source_share_new(void);
void mt_source_share_free(mt_source_share *share); /* accepts NULL */

/* Takes a slot for |source| if it holds fewer than |limit| (0 = no limit).
 * Returns 1 when taken (the caller gives it back exactly once), 0 when the
 * source already has its share, or when no memory could hold a new entry
 * (failing closed: the connection is refused rather than left uncounted). */
int mt_source_share_take(mt_source_share *share, const struct sockaddr *source, unsigned limit);

/* Gives back a slot taken for |source|. */
void mt_source_share_give(mt_source_share *share, const struct sockaddr *source);

/* Sources with at least one slot now, and the slots |source| holds (tests
 * and diagnostics). */
size_t mt_source_share_sources(const mt_source_share *share);
unsigned mt_source_share_held(const mt_source_share *share, const struct sockaddr *source);

#ifdef __cplusplus
}
#endif

#endif /* MT_SOURCE_SHARE_H */
