/*
 * test_resp_scan.c: src/resp_scan.c, the reply counter redis.c runs before
 * hiredis.
 *
 * What it proves: every RESP2 shape (status, error, integer, bulk, nil bulk,
 * arrays, nil and empty arrays, nesting) counts as one reply, however the
 * bytes are split (each stream is also fed one byte at a time and at every
 * split point); a length over the caps is refused as soon as its digits
 * pass the cap, before the line ends; and shapes hiredis refuses (another
 * type byte, a bad length) stop the counting instead of being miscounted.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/resp_scan.c"

#include "runner.h"

/* Replies counted in `text` fed whole, byte by byte and split at every
 * point; all three must agree (else -1). `rc` gets the last status. */
static long count(const char *text, int *rc) {
  size_t n = strlen(text);
  gw_resp_scan_t s;
  uint64_t whole = 0;
  memset(&s, 0, sizeof s);
  *rc = gw_resp_scan(&s, text, n, &whole);
  uint64_t bytes = 0;
  memset(&s, 0, sizeof s);
  for (size_t i = 0; i < n; i++)
    if (gw_resp_scan(&s, text + i, 1, &bytes) != GW_RESP_OK) break;
  if (bytes != whole) return -1;
  for (size_t cut = 1; cut < n; cut++) {
    uint64_t split = 0;
    memset(&s, 0, sizeof s);
    if (gw_resp_scan(&s, text, cut, &split) == GW_RESP_OK) gw_resp_scan(&s, text + cut, n - cut, &split);
    if (split != whole) return -1;
  }
  return (long)whole;
}

TEST(each_shape_is_one_reply) {
  int rc;
  CHECK_EQ(count("+OK\r\n", &rc), 1);
  CHECK_EQ(count("-ERR wrong type\r\n", &rc), 1);
  CHECK_EQ(count(":-42\r\n", &rc), 1);
  CHECK_EQ(count("$5\r\nhe\r\nl\r\n", &rc), 1); /* CR LF inside a bulk string is data */
  CHECK_EQ(count("$0\r\n\r\n", &rc), 1);
  CHECK_EQ(count("$-1\r\n", &rc), 1);
  CHECK_EQ(count("*-1\r\n", &rc), 1);
  CHECK_EQ(count("*0\r\n", &rc), 1);
  CHECK_EQ(count("*3\r\n$1\r\na\r\n:2\r\n*2\r\n+x\r\n$-1\r\n", &rc), 1);
  CHECK_EQ(count("*1\r\n*1\r\n*1\r\n*0\r\n", &rc), 1);
  CHECK_EQ(rc, GW_RESP_OK);
}

TEST(replies_in_a_row_are_counted_apart) {
  int rc;
  CHECK_EQ(count("$2\r\nhi\r\n+EXTRA\r\n", &rc), 2);
  CHECK_EQ(count("+OK\r\n:1\r\n*2\r\n:1\r\n:2\r\n$-1\r\n", &rc), 4);
  /* An incomplete reply is not counted yet. */
  CHECK_EQ(count("+OK\r\n*2\r\n:1\r\n", &rc), 1);
  CHECK_EQ(count("$10\r\nabc", &rc), 0);
}

TEST(lengths_over_the_caps_are_refused_early) {
  int rc;
  gw_resp_scan_t s;
  uint64_t r = 0;
  memset(&s, 0, sizeof s);
  CHECK_EQ(gw_resp_scan(&s, "*2147483647\r\n", 13, &r), GW_RESP_TOO_BIG);
  memset(&s, 0, sizeof s);
  /* Refused on its digits alone, before the line ends. */
  CHECK_EQ(gw_resp_scan(&s, "$99999999999", 12, &r), GW_RESP_TOO_BIG);
  char at_cap[32];
  snprintf(at_cap, sizeof at_cap, "*%d\r\n", GW_RESP_MAX_ELEMENTS);
  memset(&s, 0, sizeof s);
  CHECK_EQ(gw_resp_scan(&s, at_cap, strlen(at_cap), &r), GW_RESP_OK);
  snprintf(at_cap, sizeof at_cap, "*%d\r\n", GW_RESP_MAX_ELEMENTS + 1);
  memset(&s, 0, sizeof s);
  CHECK_EQ(gw_resp_scan(&s, at_cap, strlen(at_cap), &r), GW_RESP_TOO_BIG);
  CHECK_EQ(count("$536870913\r\n", &rc), 0);
  CHECK_EQ(rc, GW_RESP_TOO_BIG);
}

TEST(unknown_shapes_stop_counting) {
  const char *bad[] = {"%1\r\n", ",1.5\r\n", "$-5\r\n", "*x\r\n", "$\r\n", "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    gw_resp_scan_t s;
    uint64_t r = 0;
    memset(&s, 0, sizeof s);
    CHECK_EQ(gw_resp_scan(&s, bad[i], strlen(bad[i]), &r), GW_RESP_OK);
    CHECK(s.broken);
    /* Nothing after it is counted: hiredis refuses the stream. */
    gw_resp_scan(&s, "+OK\r\n", 5, &r);
    CHECK_EQ(r, 0);
  }
}

TEST_LIST(T(each_shape_is_one_reply), T(replies_in_a_row_are_counted_apart),
          T(lengths_over_the_caps_are_refused_early), T(unknown_shapes_stop_counting))
