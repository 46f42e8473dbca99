/* Fuzz target: the permissive-port peek on arbitrary first bytes.
 * Invariants: never reads out of bounds (ASan), and a verdict about TLS is
 * stable under truncation: a prefix of a buffer classified as a complete
 * ClientHello (mesh or other) is never classified as "not TLS". */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "agent/client_hello.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mt_hello_kind whole = mt_client_hello_classify(data, size, "mtlsd");
  if (whole != MT_HELLO_TLS_MESH && whole != MT_HELLO_TLS_OTHER) return 0;
  for (size_t n = 0; n < size; n++) {
    if (mt_client_hello_classify(data, n, "mtlsd") == MT_HELLO_NOT_TLS) {
      fprintf(stderr, "prefix of %zu bytes judged not TLS, whole input is a ClientHello\n", n);
      abort();
    }
  }
  return 0;
}
