/* json_struct: a JSON object (jansson) as a google.protobuf.Struct
 * (protobuf-c), the form the SPIFFE Workload API gives a JWT-SVID's claims
 * in (ValidateJWTSVIDResponse.claims).
 *
 * The mapping is protobuf's own JSON one: object -> Struct, array ->
 * ListValue, string -> string_value, true/false -> bool_value, null ->
 * null_value, every number (integer or real) -> number_value, a double (so
 * an integer beyond 2^53 loses precision, as in every JSON reader that
 * follows protobuf). The result is one freshly allocated tree the caller
 * owns and frees with mt_json_struct_free, never with protobuf-c's
 * free_unpacked. Pure: no I/O, no logging. */
#ifndef MT_JSON_STRUCT_H
#define MT_JSON_STRUCT_H

#include <stddef.h>

#include <jansson.h>

#include "google/protobuf/struct.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* |object| must be a JSON object. Returns the Struct, or NULL when it is
 * not an object or memory runs out. */
Google__Protobuf__Struct *mt_json_struct_from_json(const json_t *object);

/* The same from JSON text (|len| bytes): NULL also when the text is not a
 * JSON object. */
Google__Protobuf__Struct *mt_json_struct_from_text(const char *text, size_t len);

void mt_json_struct_free(Google__Protobuf__Struct *s); /* accepts NULL */

#ifdef __cplusplus
}
#endif

#endif /* MT_JSON_STRUCT_H */
