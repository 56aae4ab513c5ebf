/*
 * test_json_check.c: src/json_check.c, the strict JSON check gw.aggregate
 * runs on each part before splicing it into its answer.
 *
 * What it proves: every RFC 8259 form passes (scalars, nesting, escapes,
 * UTF-8, whitespace around); what lua-cjson lets through does not (raw
 * control bytes in strings, "1.", NaN, hex, invalid UTF-8, trailing text),
 * nor do broken structures; the offset returned is where the text goes
 * wrong; nesting stops at GW_JSON_MAX_DEPTH.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/buf.c"
#include "../../src/json_check.c"
#include "../../src/mem.c"

#include "runner.h"

static long check(const char *text) { return gw_json_check(text, strlen(text)); }

TEST(valid_texts_pass) {
  const char *ok[] = {"0", "-0", "12345678901234567890", "-1.5e+10", "1E-2", "0.25", "true", "false",
                      "null", "\"\"", "\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\"",
                      "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"", "[]", "{}", " [ 1 , [ ] , { } ] ",
                      "{\"a\":{\"b\":[1,{\"c\":null}]},\"d\":\"e\"}", "\t\r\n{\"k\" : 1}\n"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    CHECK_EQ(check(ok[i]), -1);
    if (check(ok[i]) != -1) printf("    refused: %s\n", ok[i]);
  }
}

TEST(what_cjson_lets_through_is_refused) {
  CHECK_EQ(check("\"a\x01" "b\""), 2); /* a raw control byte in a string */
  CHECK_EQ(check("\"a\tb\""), 2);      /* a raw tab too */
  CHECK_EQ(check("1."), 2);
  CHECK_EQ(check("NaN"), 0);
  CHECK_EQ(check("[Infinity]"), 1);
  CHECK_EQ(check("0x10"), 1);
  CHECK_EQ(check("\"\xff\""), 1);          /* not UTF-8 */
  CHECK_EQ(check("\"\xc3\""), 1);          /* a cut sequence */
  CHECK_EQ(check("\"\xed\xa0\x80\""), 1);  /* a surrogate as UTF-8 */
  CHECK_EQ(check("{} trailing"), 3);
  CHECK_EQ(check("01"), 1);
  CHECK_EQ(check("+1"), 0);
  CHECK_EQ(check("1e"), 2);
  CHECK_EQ(check("-"), 1);
}

TEST(broken_structures_are_refused) {
  CHECK_EQ(check(""), 0);
  CHECK_EQ(check("   "), 3);
  CHECK_EQ(check("["), 1);
  CHECK_EQ(check("[1,]"), 3);
  CHECK_EQ(check("[1 2]"), 3);
  CHECK_EQ(check("{\"a\"}"), 4);
  CHECK_EQ(check("{\"a\":}"), 5);
  CHECK_EQ(check("{a:1}"), 1);
  CHECK_EQ(check("{\"a\":1,}"), 7);
  CHECK_EQ(check("[}"), 1);
  CHECK_EQ(check("{]"), 1);
  CHECK_EQ(check("\"abc"), 4);
  CHECK_EQ(check("\"\\x\""), 1);
  CHECK_EQ(check("\"\\u12g4\""), 1);
  /* Surrogates only as a high-low pair. */
  CHECK_EQ(check("\"\\ud800\""), 7); /* where the low half should be */
  CHECK_EQ(check("\"\\udc00\""), 1);
  CHECK_EQ(check("\"\\ud83dx\""), 7);
  CHECK_EQ(check("\"\\ud83d\\u0041\""), 7);
  CHECK_EQ(check("\"\\uDBFF\\uDFFF\""), -1);
  CHECK_EQ(check("tru"), 0);
  CHECK_EQ(check("[1][2]"), 3);
  /* A NUL ends nothing: the length is what counts. */
  CHECK_EQ(gw_json_check("[1]\0", 4), 3);
}

TEST(nesting_is_bounded) {
  size_t n = GW_JSON_MAX_DEPTH;
  char *deep = malloc(2 * n + 3);
  for (size_t i = 0; i < n; i++) deep[i] = '[', deep[2 * n - 1 - i] = ']';
  CHECK_EQ(gw_json_check(deep, 2 * n), -1);
  memmove(deep + 1, deep, 2 * n);
  deep[0] = '[';
  deep[2 * n + 1] = ']';
  CHECK_EQ(gw_json_check(deep, 2 * n + 2), (long)n);
  free(deep);
}

TEST_LIST(T(valid_texts_pass), T(what_cjson_lets_through_is_refused), T(broken_structures_are_refused),
          T(nesting_is_bounded))
