/*
 * test_http1.c: the request parser of src/http1.c, over llhttp.
 *
 * Most cases are Markdown fixtures, spec/c/fixtures/http1/NAME.md (format in
 * that directory's README.md): an input, and the outcome expected for each
 * message in it. Every case runs in every feeding mode unless it names some
 * (`feed ...`), and must give the same outcome in each:
 *
 *   whole   one execute call over the whole input (one read)
 *   bytes   one execute call per byte (many reads)
 *   splits  for every k, two calls: bytes [0, k) then [k, n)
 *
 * The driver behaves like src/conn.c: bytes are appended to a buffer that
 * moves at every read (the old copy is poisoned before it is freed, so a
 * slice kept as a pointer instead of an offset reads garbage), a HEAD is
 * answered by resuming and reading the body, and after a MESSAGE the
 * consumed bytes are dropped from the front and a new request begins.
 *
 * The tests below the fixtures drive gw_http1_* directly for what a fixture
 * cannot say (pausing, discarding, sinks, positions).
 *
 * Built with llhttp's sources (assembled into vendor/llhttp by `make`):
 * spec-ldflags: -DLLHTTP_STRICT_MODE=1 vendor/llhttp/llhttp.c vendor/llhttp/api.c vendor/llhttp/http.c -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/mem.c"
#include "../../src/buf.c"
#include "../../src/request.c"
#include "../../src/http1.c"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>

#include "runner.h"

#define FIXTURE_DIR "spec/c/fixtures/http1"

/* ---- small helpers ---- */

static char *xfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xfmt(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  if (vasprintf(&s, fmt, ap) < 0) abort();
  va_end(ap);
  return s;
}

/* Printable form of bytes, for messages: \r \n \t \xHH escaped. */
static char *show(const char *p, size_t n) {
  gw_buf_t b;
  gw_buf_init(&b);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)p[i];
    char e[8];
    if (ch == '\r') gw_buf_append_str(&b, "\\r");
    else if (ch == '\n') gw_buf_append_str(&b, "\\n");
    else if (ch == '\t') gw_buf_append_str(&b, "\\t");
    else if (ch == '\\') gw_buf_append_str(&b, "\\\\");
    else if (ch < 0x20 || ch >= 0x7f) {
      snprintf(e, sizeof e, "\\x%02x", ch);
      gw_buf_append_str(&b, e);
    } else {
      gw_buf_append(&b, &ch, 1);
    }
  }
  gw_buf_append(&b, "", 1);
  return b.base;
}

/* Decodes a fixture's escapes (\r \n \t \0 \\ \xHH) into `out`; -1 on a bad one. */
static int unescape(const char *s, size_t n, gw_buf_t *out) {
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch != '\\') {
      gw_buf_append(out, &ch, 1);
      continue;
    }
    if (++i >= n) return -1;
    switch (s[i]) {
      case 'r': ch = '\r'; break;
      case 'n': ch = '\n'; break;
      case 't': ch = '\t'; break;
      case '0': ch = '\0'; break;
      case '\\': ch = '\\'; break;
      case 'x': {
        if (i + 2 >= n) return -1;
        if (!isxdigit((unsigned char)s[i + 1]) || !isxdigit((unsigned char)s[i + 2])) return -1;
        char hex[3] = {s[i + 1], s[i + 2], 0};
        ch = (char)strtol(hex, NULL, 16);
        i += 2;
        break;
      }
      default:
        return -1;
    }
    gw_buf_append(out, &ch, 1);
  }
  return 0;
}

/* ---- what the parser produced, per message ---- */

enum { R_NEED_MORE, R_HEAD, R_MESSAGE, R_UPGRADE, R_ERROR };
static const char *const result_names[] = {"NEED_MORE", "HEAD", "MESSAGE", "UPGRADE", "ERROR"};

typedef struct {
  int result;
  int status;
  const char *reason;
  int have_head;
  char *method, *target, *path, *version;
  unsigned nheaders;
  char **headers;   /* "Name: value", raw slices */
  unsigned nlookups;
  char **lookups;   /* "name" then the gw_req_header value, alternating */
  int keep_alive, chunked, upgrade, expect_continue;
  unsigned long long content_length;
  char *body;
  size_t body_len;
} outcome_t;

typedef struct {
  outcome_t *msgs;
  size_t n;
  char *trouble; /* a protocol problem of the wrapper itself (bad consumed count ...) */
} run_t;

static gw_conn_t fake_conn; /* gw_req_header resolves slices through conn->rbuf.base */

static char *slice(const char *base, uint32_t off, uint32_t len) { return gw_xstrndup(base + off, len); }

static void snapshot_head(outcome_t *o, gw_req_t *r, const char *base) {
  o->have_head = 1;
  o->method = gw_xstrndup(llhttp_method_name((llhttp_method_t)r->method),
                          strlen(llhttp_method_name((llhttp_method_t)r->method)));
  o->target = slice(base, r->url_off, r->url_len);
  o->path = slice(base, r->url_off, r->path_len);
  o->version = xfmt("%d.%d", r->http_major, r->http_minor);
  o->nheaders = r->nheaders;
  o->headers = gw_xcalloc(r->nheaders + 1, sizeof *o->headers);
  o->lookups = gw_xcalloc(2 * r->nheaders + 1, sizeof *o->lookups);
  fake_conn.rbuf.base = (char *)base;
  for (uint32_t i = 0; i < r->nheaders; i++) {
    const gw_header_t *h = &r->headers[i];
    /* "Name: value", or "Name:" for an empty value (fixture lines are trimmed). */
    o->headers[i] = xfmt("%.*s:%s%.*s", (int)h->name_len, base + h->name_off,
                         h->value_len ? " " : "", (int)h->value_len, base + h->value_off);
    char *lname = slice(base, h->name_off, h->name_len);
    for (char *c = lname; *c; c++) *c = (char)tolower((unsigned char)*c);
    int seen = 0;
    for (unsigned k = 0; k < o->nlookups; k++)
      if (strcmp(o->lookups[2 * k], lname) == 0) seen = 1;
    if (seen) continue;
    size_t vlen = 0;
    const char *v = gw_req_header(r, lname, strlen(lname), &vlen);
    o->lookups[2 * o->nlookups] = lname;
    o->lookups[2 * o->nlookups + 1] = v ? gw_xstrndup(v, vlen) : NULL;
    o->nlookups++;
  }
  o->keep_alive = r->keep_alive;
  o->chunked = r->chunked;
  o->upgrade = r->upgrade;
  o->expect_continue = r->expect_continue;
  o->content_length = (unsigned long long)r->content_length;
}

static void snapshot_body(outcome_t *o, gw_req_t *r) {
  o->body_len = r->body.len;
  o->body = gw_xstrndup(r->body.base ? r->body.base : "", r->body.len);
}

/* The buffer the "connection" reads into: input[shift, avail), moved (and the
 * old copy poisoned) whenever it changes. */
typedef struct {
  const char *input;
  size_t shift, avail;
  char *base;
  size_t len;
} rbuf_t;

static void rebuffer(rbuf_t *b) {
  size_t len = b->avail - b->shift;
  char *nb = gw_xmalloc(len ? len : 1);
  memcpy(nb, b->input + b->shift, len);
  if (b->base) {
    memset(b->base, '#', b->len);
    free(b->base);
  }
  b->base = nb;
  b->len = len;
}

/* Feeds `input` through a parser in reads ending at cuts[0..ncuts-1]
 * (ascending, the last one n) and records each message's outcome. */
static run_t drive(const char *input, size_t n, const size_t *cuts, size_t ncuts,
                   const gw_limits_t *limits) {
  run_t run = {0};
  gw_http1_t h;
  gw_http1_init(&h, limits);
  rbuf_t b = {input, 0, cuts[0], NULL, 0};
  rebuffer(&b);
  size_t ci = 0, parsed = 0;
  gw_req_t *r = NULL;
  outcome_t *o = NULL;
  for (long guard = 0;; guard++) {
    if (guard > 10 * (long)n + 1000) {
      run.trouble = xfmt("no progress after %ld calls", guard);
      break;
    }
    if (!r) {
      r = gw_req_new(&fake_conn);
      h.req = r;
      run.msgs = gw_xrealloc(run.msgs, (run.n + 1) * sizeof *run.msgs);
      o = &run.msgs[run.n++];
      memset(o, 0, sizeof *o);
      o->result = R_NEED_MORE;
    }
    size_t used = (size_t)-1;
    gw_http1_result_t res = gw_http1_execute(&h, b.base, parsed, b.len, &used);
    if (used > b.len - parsed) {
      run.trouble = xfmt("execute over [%zu, %zu) reported %zu bytes consumed", parsed, b.len, used);
      break;
    }
    parsed += used;
    if (res == GW_HTTP1_NEED_MORE) {
      if (parsed != b.len) {
        run.trouble = xfmt("NEED_MORE left %zu bytes unconsumed", b.len - parsed);
        break;
      }
      if (++ci >= ncuts) break;
      b.avail = cuts[ci];
      rebuffer(&b);
      continue;
    }
    if (res == GW_HTTP1_HEAD) {
      if (o->have_head) {
        run.trouble = xfmt("a second HEAD for one message");
        break;
      }
      snapshot_head(o, r, b.base);
      o->result = R_HEAD;
      gw_http1_resume(&h);
      continue;
    }
    if (res == GW_HTTP1_MESSAGE) {
      if (!o->have_head) {
        run.trouble = xfmt("MESSAGE without a HEAD");
        break;
      }
      o->result = R_MESSAGE;
      snapshot_body(o, r);
      if (!gw_http1_message_complete(&h)) {
        run.trouble = xfmt("MESSAGE but gw_http1_message_complete() is 0");
        break;
      }
      gw_http1_resume(&h);
      gw_req_free(r);
      r = NULL;
      /* Like conn.c's start_next: the rest of the buffer moves to the front. */
      b.shift += parsed;
      parsed = 0;
      rebuffer(&b);
      continue;
    }
    if (res == GW_HTTP1_UPGRADE) {
      /* llhttp completes the upgrade request's message first (MESSAGE), then
       * reports the upgrade on the next call: it belongs to that message. */
      if (!o->have_head && run.n >= 2) {
        run.n--;
        o = &run.msgs[run.n - 1];
      }
      o->result = R_UPGRADE;
      break;
    }
    /* GW_HTTP1_ERROR */
    o->result = R_ERROR;
    o->status = h.status;
    o->reason = h.reason ? h.reason : "(null)";
    snapshot_body(o, r);
    break;
  }
  /* A request that never began (input ended between messages) is no message. */
  if (run.n && run.msgs[run.n - 1].result == R_NEED_MORE && gw_http1_message_complete(&h))
    run.n--;
  else if (run.n && run.msgs[run.n - 1].result == R_HEAD)
    snapshot_body(&run.msgs[run.n - 1], r);
  memset(b.base, '#', b.len);
  free(b.base);
  return run;
}

/* ---- fixtures ---- */

typedef struct {
  char *key, *value;
  int line;
} expect_t;

typedef struct {
  char *file;   /* path, for messages */
  char *name;   /* the "## " heading */
  int line;     /* of the heading */
  char *input;
  size_t input_len;
  int have_input;
  gw_limits_t limits;
  int feed;     /* bit mask of FEED_* */
  expect_t *ex; /* in order; "result" starts a message */
  size_t nex;
  char *error;  /* a malformed fixture */
} fcase_t;

enum { FEED_WHOLE = 1, FEED_BYTES = 2, FEED_SPLITS = 4, FEED_ALL = 7 };

static fcase_t *cases;
static size_t ncases;

static fcase_t *new_case(const char *file, const char *name, int line) {
  cases = gw_xrealloc(cases, (ncases + 1) * sizeof *cases);
  fcase_t *c = &cases[ncases++];
  memset(c, 0, sizeof *c);
  c->file = gw_xstrndup(file, strlen(file));
  c->name = gw_xstrndup(name, strlen(name));
  c->line = line;
  c->limits.header_bytes = 8192;
  c->limits.headers = 100;
  c->limits.body_bytes = 1 << 20;
  c->feed = FEED_ALL;
  return c;
}

static void case_error(fcase_t *c, int line, const char *what) {
  if (!c->error) c->error = xfmt("%s:%d: %s", c->file, line, what);
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r')) s[--n] = '\0';
  return s;
}

static void expect_line(fcase_t *c, char *text, int line) {
  text = trim(text);
  if (!*text || *text == '#') return;
  char *sp = text + strcspn(text, " \t");
  char *value = "";
  if (*sp) {
    *sp = '\0';
    value = trim(sp + 1);
  }
  if (strcmp(text, "limit") == 0) {
    char name[32];
    unsigned long long v;
    if (sscanf(value, "%31s %llu", name, &v) != 2) return case_error(c, line, "limit NAME N");
    if (strcmp(name, "header_bytes") == 0) c->limits.header_bytes = (size_t)v;
    else if (strcmp(name, "headers") == 0) c->limits.headers = (size_t)v;
    else if (strcmp(name, "body_bytes") == 0) c->limits.body_bytes = (size_t)v;
    else case_error(c, line, "unknown limit");
    return;
  }
  if (strcmp(text, "feed") == 0) {
    c->feed = 0;
    char *save = NULL;
    for (char *w = strtok_r(value, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
      if (strcmp(w, "whole") == 0) c->feed |= FEED_WHOLE;
      else if (strcmp(w, "bytes") == 0) c->feed |= FEED_BYTES;
      else if (strcmp(w, "splits") == 0) c->feed |= FEED_SPLITS;
      else case_error(c, line, "feed takes whole, bytes, splits");
    }
    return;
  }
  static const char *const keys[] = {"result", "status", "reason", "method", "target", "path",
                                     "version", "headers", "header", "lookup", "no_lookup",
                                     "keep_alive", "chunked", "upgrade", "content_length",
                                     "expect_continue", "body", "body_text", NULL};
  int known = 0;
  for (int i = 0; keys[i]; i++) known |= strcmp(keys[i], text) == 0;
  if (!known) return case_error(c, line, "unknown expectation key");
  if (c->nex == 0 && strcmp(text, "result") != 0)
    return case_error(c, line, "the first expectation must be a result");
  c->ex = gw_xrealloc(c->ex, (c->nex + 1) * sizeof *c->ex);
  c->ex[c->nex].key = gw_xstrndup(text, strlen(text));
  c->ex[c->nex].value = gw_xstrndup(value, strlen(value));
  c->ex[c->nex].line = line;
  c->nex++;
}

static void load_fixture(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fcase_t *c = new_case(path, "(unreadable)", 0);
    c->error = xfmt("%s: %s", path, strerror(errno));
    return;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int lineno = 0;
  fcase_t *c = NULL;
  enum { PROSE, INPUT, EXPECT, OTHER } in = PROSE;
  gw_buf_t input;
  gw_buf_init(&input);
  while ((len = getline(&line, &cap, f)) >= 0) {
    lineno++;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (in == PROSE) {
      if (strncmp(line, "## ", 3) == 0) {
        c = new_case(path, trim(line + 3), lineno);
      } else if (strncmp(line, "```", 3) == 0) {
        char *lang = trim(line + 3);
        if (!c && (strcmp(lang, "http") == 0 || strcmp(lang, "expect") == 0)) {
          c = new_case(path, "(no heading)", lineno);
          case_error(c, lineno, "a block before the first ## heading");
        }
        if (strcmp(lang, "http") == 0) {
          if (c->have_input) case_error(c, lineno, "two http blocks in one case");
          in = INPUT;
          input.len = 0;
        } else if (strcmp(lang, "expect") == 0) {
          in = EXPECT;
        } else {
          in = OTHER;
        }
      }
      continue;
    }
    if (strncmp(line, "```", 3) == 0) {
      if (in == INPUT) {
        c->input = gw_xmalloc(input.len + 1);
        if (input.len) memcpy(c->input, input.base, input.len);
        c->input_len = input.len;
        c->have_input = 1;
      }
      in = PROSE;
      continue;
    }
    if (in == INPUT) {
      /* Line breaks in the block are layout only; bytes come from escapes. */
      if (unescape(line, (size_t)len, &input) != 0) case_error(c, lineno, "bad escape in input");
    } else if (in == EXPECT) {
      expect_line(c, line, lineno);
    }
  }
  if (in != PROSE && c) case_error(c, lineno, "unclosed ``` block");
  free(line);
  gw_buf_free(&input);
  fclose(f);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void load_fixtures(void) {
  DIR *d = opendir(FIXTURE_DIR);
  if (!d) {
    fcase_t *c = new_case(FIXTURE_DIR, "(missing)", 0);
    c->error = xfmt("%s: %s (run from the repository root)", FIXTURE_DIR, strerror(errno));
    return;
  }
  char **names = NULL;
  size_t n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t l = strlen(e->d_name);
    if (l > 3 && strcmp(e->d_name + l - 3, ".md") == 0 && strcmp(e->d_name, "README.md") != 0) {
      names = gw_xrealloc(names, (n + 1) * sizeof *names);
      names[n++] = xfmt("%s/%s", FIXTURE_DIR, e->d_name);
    }
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_str);
  for (size_t i = 0; i < n; i++) {
    load_fixture(names[i]);
    free(names[i]);
  }
  free(names);
}

/* ---- comparing an outcome with a case's expectations ---- */

static int as_bool(const char *v) { return strcmp(v, "1") == 0 || strcmp(v, "yes") == 0; }

/* Appends a mismatch to `out`. */
static void mismatch(gw_buf_t *out, const fcase_t *c, const expect_t *e, size_t msg,
                     const char *got) {
  char *s = xfmt("      %s:%d: message %zu: %s: expected \"%s\", got \"%s\"\n", c->file, e->line,
                 msg + 1, e->key, e->value, got);
  gw_buf_append_str(out, s);
  free(s);
}

static void compare(const fcase_t *c, const run_t *run, gw_buf_t *out) {
  if (run->trouble) {
    char *s = xfmt("      wrapper: %s\n", run->trouble);
    gw_buf_append_str(out, s);
    free(s);
  }
  size_t msg = (size_t)-1, nmsgs = 0, header_i = 0;
  for (size_t i = 0; i < c->nex; i++) nmsgs += strcmp(c->ex[i].key, "result") == 0;
  if (run->n != nmsgs) {
    char *s = xfmt("      %s:%d: expected %zu message(s), got %zu:", c->file, c->line, nmsgs, run->n);
    gw_buf_append_str(out, s);
    free(s);
    for (size_t k = 0; k < run->n; k++) {
      const outcome_t *o = &run->msgs[k];
      s = o->result == R_ERROR ? xfmt(" ERROR %d (%s)", o->status, o->reason)
                               : xfmt(" %s%s%s", result_names[o->result], o->have_head ? " " : "",
                                      o->have_head ? o->target : "");
      gw_buf_append_str(out, s);
      free(s);
    }
    gw_buf_append_str(out, "\n");
  }
  const outcome_t *o = NULL;
  for (size_t i = 0; i < c->nex; i++) {
    const expect_t *e = &c->ex[i];
    const char *k = e->key, *v = e->value;
    if (strcmp(k, "result") == 0) {
      msg++;
      header_i = 0;
      o = msg < run->n ? &run->msgs[msg] : NULL;
      if (!o) continue;
      if (strcmp(result_names[o->result], v) != 0) {
        char *got = o->result == R_ERROR ? xfmt("ERROR (%d %s)", o->status, o->reason)
                                         : xfmt("%s", result_names[o->result]);
        mismatch(out, c, e, msg, got);
        free(got);
      }
      continue;
    }
    if (!o) continue;
    char *got = NULL;
    int ok = 1;
    if (strcmp(k, "status") == 0) {
      got = xfmt("%d", o->status);
      ok = strcmp(got, v) == 0;
    } else if (strcmp(k, "reason") == 0) {
      got = xfmt("%s", o->reason ? o->reason : "");
      ok = o->reason && strstr(o->reason, v) != NULL;
    } else if (!o->have_head && strcmp(k, "body") != 0 && strcmp(k, "body_text") != 0) {
      got = xfmt("(no head)");
      ok = 0;
    } else if (strcmp(k, "method") == 0) {
      got = xfmt("%s", o->method);
      ok = strcmp(got, v) == 0;
    } else if (strcmp(k, "target") == 0 || strcmp(k, "path") == 0) {
      gw_buf_t dec;
      gw_buf_init(&dec);
      unescape(v, strlen(v), &dec);
      gw_buf_append(&dec, "", 1);
      const char *have = strcmp(k, "target") == 0 ? o->target : o->path;
      got = show(have, strlen(have));
      ok = strcmp(have, dec.base) == 0;
      gw_buf_free(&dec);
    } else if (strcmp(k, "version") == 0) {
      got = xfmt("%s", o->version);
      ok = strcmp(got, v) == 0;
    } else if (strcmp(k, "headers") == 0) {
      got = xfmt("%u", o->nheaders);
      ok = strcmp(got, v) == 0;
    } else if (strcmp(k, "header") == 0) {
      gw_buf_t dec;
      gw_buf_init(&dec);
      unescape(v, strlen(v), &dec);
      gw_buf_append(&dec, "", 1);
      if (header_i < o->nheaders) {
        got = show(o->headers[header_i], strlen(o->headers[header_i]));
        ok = strcmp(o->headers[header_i], dec.base) == 0;
      } else {
        got = xfmt("(only %u headers)", o->nheaders);
        ok = 0;
      }
      header_i++;
      gw_buf_free(&dec);
    } else if (strcmp(k, "lookup") == 0 || strcmp(k, "no_lookup") == 0) {
      /* "lookup name value": gw_req_header(name) gives value (joined). */
      char name[128] = "";
      size_t nl = strcspn(v, " \t");
      snprintf(name, sizeof name, "%.*s", (int)nl, v);
      const char *want = trim((char *)v + nl);
      const char *have = NULL;
      int found = 0;
      for (unsigned q = 0; q < o->nlookups; q++)
        if (strcasecmp(o->lookups[2 * q], name) == 0) {
          found = 1;
          have = o->lookups[2 * q + 1];
        }
      if (strcmp(k, "no_lookup") == 0) {
        got = found ? xfmt("present: %s", have ? have : "(null)") : xfmt("absent");
        ok = !found;
      } else {
        got = have ? show(have, strlen(have)) : xfmt("(absent)");
        ok = have && strcmp(have, want) == 0;
      }
    } else if (strcmp(k, "keep_alive") == 0) {
      got = xfmt("%d", o->keep_alive);
      ok = o->keep_alive == as_bool(v);
    } else if (strcmp(k, "chunked") == 0) {
      got = xfmt("%d", o->chunked);
      ok = o->chunked == as_bool(v);
    } else if (strcmp(k, "upgrade") == 0) {
      got = xfmt("%d", o->upgrade);
      ok = o->upgrade == as_bool(v);
    } else if (strcmp(k, "expect_continue") == 0) {
      got = xfmt("%d", o->expect_continue);
      ok = o->expect_continue == as_bool(v);
    } else if (strcmp(k, "content_length") == 0) {
      got = xfmt("%llu", o->content_length);
      ok = strcmp(got, v) == 0;
    } else if (strcmp(k, "body") == 0) {
      got = xfmt("%zu", o->body_len);
      ok = strcmp(got, v) == 0;
    } else if (strcmp(k, "body_text") == 0) {
      gw_buf_t dec;
      gw_buf_init(&dec);
      unescape(v, strlen(v), &dec);
      got = show(o->body ? o->body : "", o->body_len);
      ok = o->body_len == dec.len && (dec.len == 0 || memcmp(o->body, dec.base, dec.len) == 0);
      gw_buf_free(&dec);
    }
    if (!ok) mismatch(out, c, e, msg, got);
    free(got);
  }
}

/* Runs one feeding; on a mismatch prints it (once per mode) and returns 1. */
static int try_feed(const fcase_t *c, const char *mode, const size_t *cuts, size_t ncuts,
                    int *printed) {
  run_t run = drive(c->input, c->input_len, cuts, ncuts, &c->limits);
  gw_buf_t out;
  gw_buf_init(&out);
  compare(c, &run, &out);
  if (!out.len) return 0;
  if (!*printed) {
    gw_buf_append(&out, "", 1);
    printf("    [%s]\n%s", mode, out.base);
    *printed = 1;
  }
  gw_buf_free(&out);
  return 1;
}

static void run_case(void *arg) {
  const fcase_t *c = arg;
  if (c->error) {
    CHECK_MSG(0, "fixture error: %s", c->error);
    return;
  }
  if (!c->have_input) {
    CHECK_MSG(0, "%s:%d: case has no ```http block", c->file, c->line);
    return;
  }
  if (c->nex == 0) {
    CHECK_MSG(0, "%s:%d: case has no ```expect block", c->file, c->line);
    return;
  }
  size_t n = c->input_len;
  int failed_modes = 0;
  if (c->feed & FEED_WHOLE) {
    size_t cut = n;
    int printed = 0;
    if (try_feed(c, "whole: one read", &cut, 1, &printed)) failed_modes++;
  }
  if ((c->feed & FEED_BYTES) && n > 1) {
    size_t *cuts = gw_xmalloc(n * sizeof *cuts);
    for (size_t i = 0; i < n; i++) cuts[i] = i + 1;
    int printed = 0;
    if (try_feed(c, "bytes: one read per byte", cuts, n, &printed)) failed_modes++;
    free(cuts);
  }
  if ((c->feed & FEED_SPLITS) && n > 1) {
    int printed = 0, bad = 0;
    size_t first_bad = 0;
    for (size_t k = 1; k < n; k++) {
      size_t cuts[2] = {k, n};
      char mode[64];
      snprintf(mode, sizeof mode, "splits: two reads, split at byte %zu", k);
      if (try_feed(c, mode, cuts, 2, &printed)) {
        if (!bad) first_bad = k;
        bad++;
      }
    }
    if (bad) {
      printf("    [splits: %zu of %zu split points failed, the first at byte %zu]\n", (size_t)bad,
             n - 1, first_bad);
      failed_modes++;
    }
  }
  if (failed_modes) {
    char *in = show(c->input, n);
    printf("    input (%zu bytes): %s\n", n, in);
    free(in);
    CHECK_MSG(0, "%s:%d: %d feeding mode(s) failed", c->file, c->line, failed_modes);
  }
}

static void run_fixtures(void) {
  load_fixtures();
  for (size_t i = 0; i < ncases; i++) {
    const char *base = strrchr(cases[i].file, '/');
    char *name = xfmt("%s: %s", base ? base + 1 : cases[i].file, cases[i].name);
    rt_run(name, run_case, &cases[i]);
    free(name);
  }
}

/* ---- direct tests ---- */

static const gw_limits_t default_limits = {8192, 100, 1 << 20};

typedef struct {
  gw_http1_t h;
  gw_req_t *r;
  const char *buf;
  size_t len, parsed;
} parser_t;

static void start(parser_t *p, const gw_limits_t *limits, const char *text) {
  gw_http1_init(&p->h, limits ? limits : &default_limits);
  p->r = gw_req_new(&fake_conn);
  p->h.req = p->r;
  p->buf = text;
  p->len = strlen(text);
  p->parsed = 0;
  fake_conn.rbuf.base = (char *)text;
}

static gw_http1_result_t step(parser_t *p) {
  size_t used = 0;
  gw_http1_result_t res = gw_http1_execute(&p->h, p->buf, p->parsed, p->len, &used);
  p->parsed += used;
  return res;
}

TEST(head_then_message_without_body) {
  /* conn.c completes a body-less message with an empty execute after resume. */
  parser_t p;
  start(&p, NULL, "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n");
  CHECK_EQ(gw_http1_message_complete(&p.h), 1);
  CHECK_EQ(step(&p), GW_HTTP1_HEAD);
  CHECK_EQ(p.parsed, 28); /* exactly the first head */
  CHECK_EQ(gw_http1_message_complete(&p.h), 0);
  gw_http1_resume(&p.h);
  size_t used = 99;
  CHECK_EQ(gw_http1_execute(&p.h, p.buf, p.parsed, p.parsed, &used), GW_HTTP1_MESSAGE);
  CHECK_EQ(used, 0);
  CHECK_EQ(gw_http1_message_complete(&p.h), 1);
  gw_http1_resume(&p.h);
  gw_req_t *r2 = gw_req_new(&fake_conn);
  p.h.req = r2;
  CHECK_EQ(step(&p), GW_HTTP1_HEAD);
  CHECK_EQ(p.parsed, p.len);
  CHECK_MEM_EQ(p.buf + r2->url_off, r2->url_len, "/b");
  CHECK_EQ(r2->nheaders, 1);
  gw_http1_resume(&p.h);
  CHECK_EQ(step(&p), GW_HTTP1_MESSAGE);
}

TEST(paused_parser_consumes_nothing_more) {
  parser_t p;
  start(&p, NULL, "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
  CHECK_EQ(step(&p), GW_HTTP1_HEAD);
  size_t head = p.parsed;
  CHECK_EQ(p.r->content_length, 5);
  CHECK_EQ(p.r->body.len, 0); /* the body waits until the connection resumes */
  gw_http1_resume(&p.h);
  CHECK_EQ(step(&p), GW_HTTP1_MESSAGE);
  CHECK_EQ(p.parsed, head + 5);
  CHECK_MEM_EQ(p.r->body.base, p.r->body.len, "hello");
}

TEST(discard_body) {
  parser_t p;
  start(&p, NULL,
        "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n");
  CHECK_EQ(step(&p), GW_HTTP1_HEAD);
  p.h.discard_body = 1;
  gw_http1_resume(&p.h);
  CHECK_EQ(step(&p), GW_HTTP1_MESSAGE);
  CHECK_EQ(p.r->body.len, 0);
  CHECK_EQ(p.parsed, p.len);
}

typedef struct {
  gw_buf_t got;
  int calls, pause_after;
} sink_t;

static int sink(void *data, const char *at, size_t n, int end) {
  sink_t *s = data;
  gw_buf_append(&s->got, at, n);
  s->calls++;
  return s->calls == s->pause_after ? 1 : 0;
}

TEST(body_sink_gets_decoded_body_and_can_pause) {
  parser_t p;
  start(&p, NULL,
        "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
  CHECK_EQ(step(&p), GW_HTTP1_HEAD);
  sink_t s = {{0}, 0, 1};
  p.r->body_sink = sink;
  p.r->body_sink_data = &s;
  gw_http1_resume(&p.h);
  CHECK_EQ(step(&p), GW_HTTP1_MESSAGE);
  CHECK_MEM_EQ(s.got.base, s.got.len, "abcdefg");
  CHECK_EQ(p.h.sink_paused, 1); /* asked after the first piece */
  CHECK_EQ(p.r->body.len, 0);   /* streamed, not stored */
  /* Streamed bodies are not bounded by body_bytes. */
  gw_limits_t small = {8192, 100, 2};
  start(&p, &small, "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789");
  CHECK_EQ(step(&p), GW_HTTP1_HEAD);
  sink_t s2 = {{0}, 0, 0};
  p.r->body_sink = sink;
  p.r->body_sink_data = &s2;
  gw_http1_resume(&p.h);
  CHECK_EQ(step(&p), GW_HTTP1_MESSAGE);
  CHECK_EQ(s2.got.len, 10);
}

TEST(error_reports_consumed_up_to_the_error) {
  parser_t p;
  start(&p, NULL, "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
  CHECK_EQ(step(&p), GW_HTTP1_ERROR);
  CHECK_EQ(p.h.status, 400);
  CHECK(p.h.reason != NULL);
  CHECK(p.parsed <= p.len);
}

TEST(many_headers_grow_the_array) {
  /* More than the first array's 16 slots: earlier slices survive the copy. */
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_append_str(&b, "GET / HTTP/1.1\r\nHost: h\r\n");
  for (int i = 0; i < 60; i++) {
    char line[64];
    snprintf(line, sizeof line, "X-H%d: value-%d\r\n", i, i);
    gw_buf_append_str(&b, line);
  }
  gw_buf_append_str(&b, "\r\n");
  gw_buf_append(&b, "", 1);
  parser_t p;
  start(&p, NULL, b.base);
  CHECK_EQ(step(&p), GW_HTTP1_HEAD);
  REQUIRE_EQ(p.r->nheaders, 61);
  CHECK(p.r->headers_cap >= 61);
  CHECK_MEM_EQ(p.buf + p.r->headers[0].name_off, p.r->headers[0].name_len, "Host");
  for (int i = 0; i < 60; i++) {
    char name[16], value[16];
    snprintf(name, sizeof name, "X-H%d", i);
    snprintf(value, sizeof value, "value-%d", i);
    const gw_header_t *hd = &p.r->headers[i + 1];
    CHECK_MEM_EQ(p.buf + hd->name_off, hd->name_len, name);
    CHECK_MEM_EQ(p.buf + hd->value_off, hd->value_len, value);
  }
  CHECK_EQ(p.r->host_index, 1);
  gw_buf_free(&b);
}

TEST(error_is_sticky) {
  parser_t p;
  start(&p, NULL, "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue-please\r\n\r\n");
  CHECK_EQ(step(&p), GW_HTTP1_ERROR);
  CHECK_EQ(p.h.status, 417);
  /* Feeding more after a refusal does not revive the parser. */
  size_t used = 0;
  const char more[] = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  CHECK_EQ(gw_http1_execute(&p.h, more, 0, sizeof more - 1, &used), GW_HTTP1_ERROR);
}

/* RFC 9112 2.2: a server SHOULD ignore an empty line before a request line.
 * A read holding only that CRLF, after a message whose head was accepted,
 * must not be refused: the previous head's byte count is not this one's. */
TEST(empty_line_after_a_message_is_not_counted_as_head) {
  static const gw_limits_t lim = {64, 100, 1 << 20};
  /* 72 bytes in all; 64 from the target to the end of the last value. */
  static const char head[] =
      "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: 012345678901234567890123456789012345\r\n\r\n";
  parser_t p;
  start(&p, &lim, head);
  gw_http1_result_t res = step(&p);
  if (res == GW_HTTP1_ERROR) {
    CHECK_EQ(p.h.status, 431); /* refused as too large: consistent, nothing more to see */
    return;
  }
  REQUIRE_EQ(res, GW_HTTP1_HEAD);
  gw_http1_resume(&p.h);
  REQUIRE_EQ(step(&p), GW_HTTP1_MESSAGE);
  gw_http1_resume(&p.h);
  p.r = gw_req_new(&fake_conn);
  p.h.req = p.r;
  size_t used = 0;
  res = gw_http1_execute(&p.h, "\r\n", 0, 2, &used);
  CHECK_MSG(res == GW_HTTP1_NEED_MORE, "a lone CRLF after the message gave %d (status %d: %s)",
            (int)res, p.h.status, p.h.reason ? p.h.reason : "");
  /* And so must an empty read. */
  start(&p, &lim, head);
  REQUIRE_EQ(step(&p), GW_HTTP1_HEAD);
  gw_http1_resume(&p.h);
  REQUIRE_EQ(step(&p), GW_HTTP1_MESSAGE);
  gw_http1_resume(&p.h);
  res = gw_http1_execute(&p.h, head, p.parsed, p.parsed, &used);
  CHECK_MSG(res == GW_HTTP1_NEED_MORE, "an empty read after the message gave %d (status %d: %s)",
            (int)res, p.h.status, p.h.reason ? p.h.reason : "");
}

TEST_LIST_WITH(run_fixtures, T(head_then_message_without_body),
               T(paused_parser_consumes_nothing_more), T(discard_body),
               T(body_sink_gets_decoded_body_and_can_pause),
               T(error_reports_consumed_up_to_the_error), T(many_headers_grow_the_array),
               T(error_is_sticky), T(empty_line_after_a_message_is_not_counted_as_head))
