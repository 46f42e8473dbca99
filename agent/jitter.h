/* jitter: spreading retries and renewals in time, so a fleet of agents
 * started together does not call its control plane or SPIRE agent
 * together. Pure but for the random draw (BoringSSL's RAND_bytes). */
#ifndef MT_JITTER_H
#define MT_JITTER_H

#ifdef __cplusplus
extern "C" {
#endif

/* |value| moved by a uniform random amount of at most |percent| percent
 * either way. */
double mt_jitter(double value, int percent);

#ifdef __cplusplus
}
#endif

#endif /* MT_JITTER_H */
