/*
 * test_log.c: the error log's line prefix (src/log.c), whose date is
 * computed without gmtime_r so that the watchdog may log from a signal
 * handler.
 */
#include "../../src/log.c"

#include <stdint.h>
#include <time.h>

#include "runner.h"

static void check_against_gmtime(int64_t secs) {
  time_t tt = (time_t)secs;
  struct tm tm;
  REQUIRE(gmtime_r(&tt, &tm) != NULL);
  utc_time_t t = utc_time(secs);
  if (t.year != tm.tm_year + 1900L || t.month != tm.tm_mon + 1 || t.day != tm.tm_mday ||
      t.hour != tm.tm_hour || t.minute != tm.tm_min || t.second != tm.tm_sec)
    rt_fail_(__FILE__, __LINE__,
             "%lld: %ld-%02d-%02d %02d:%02d:%02d, gmtime_r says %d-%02d-%02d %02d:%02d:%02d", (long long)secs,
             t.year, t.month, t.day, t.hour, t.minute, t.second, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Every day boundary (and the second before it) from 1900 to 2400: leap
 * years, century years that are not leap years (1900, 2100, 2200, 2300) and
 * 2000, which is. */
TEST(utc_time_agrees_with_gmtime_on_every_day_boundary) {
  for (int64_t day = -25567; day <= 157000; day++) {
    check_against_gmtime(day * 86400);
    check_against_gmtime(day * 86400 - 1);
  }
}

TEST(utc_time_agrees_with_gmtime_within_days) {
  uint64_t x = 88172645463325252ULL; /* xorshift: spread over the same range, any second of the day */
  for (int i = 0; i < 200000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    check_against_gmtime((int64_t)(x % (182567ULL * 86400)) - 25567LL * 86400);
  }
}

TEST(prefix_has_the_date_level_role_and_pid) {
  char buf[256], want[64];
  gw_log_set_role("worker 7");
  time_t before = time(NULL);
  size_t n = format_prefix(buf, sizeof buf, GW_LOG_ERROR);
  time_t after = time(NULL);
  REQUIRE(n > 0 && n < sizeof buf);
  buf[n] = 0;
  struct tm tm;
  gmtime_r(&before, &tm);
  char stamp_before[32], stamp_after[32];
  strftime(stamp_before, sizeof stamp_before, "%Y-%m-%dT%H:%M:%S.", &tm);
  gmtime_r(&after, &tm);
  strftime(stamp_after, sizeof stamp_after, "%Y-%m-%dT%H:%M:%S.", &tm);
  CHECK(strncmp(buf, stamp_before, 20) == 0 || strncmp(buf, stamp_after, 20) == 0);
  snprintf(want, sizeof want, "Z [error] worker 7[%d]: ", (int)getpid());
  CHECK_STR_EQ(buf + 23, want);
}

TEST_LIST(T(utc_time_agrees_with_gmtime_on_every_day_boundary), T(utc_time_agrees_with_gmtime_within_days),
          T(prefix_has_the_date_level_role_and_pid))
