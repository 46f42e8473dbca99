/* jitter.c: a uniform random spread around a delay. */
#include "agent/jitter.h"

#include <stdint.h>

#include <openssl/rand.h>

double mt_jitter(double value, int percent) {
  uint32_t r = 0;
  RAND_bytes((uint8_t *)&r, sizeof(r));
  double unit = (double)r / (double)UINT32_MAX * 2.0 - 1.0; /* [-1, 1] */
  return value * (1.0 + unit * percent / 100.0);
}
