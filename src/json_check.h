/*
 * json_check.h: is a text exactly one JSON value (RFC 8259)?
 *
 * gw.aggregate splices the parts' bodies into its answer as the upstreams
 * sent them, so each must be valid JSON by itself. lua-cjson's decoder is
 * lenient (raw control bytes in strings, "1.", invalid UTF-8, NaN), and its
 * encoder loses digits and empty arrays, so neither can vouch for a body.
 * This checks the grammar and UTF-8 only; nothing is built.
 */
#ifndef GW_JSON_CHECK_H
#define GW_JSON_CHECK_H

#include <stddef.h>

/* Containers nested deeper than this make the text invalid (as lua-cjson's
 * decoder refuses them). */
#define GW_JSON_MAX_DEPTH 1000

/* Returns -1 when `s` (n bytes) is one JSON value, with optional whitespace
 * around it; else the offset of the first byte where it is not. */
long gw_json_check(const char *s, size_t n);

#endif
