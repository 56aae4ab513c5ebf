-- gateway.base: the FFI declarations of the C core's flat ABI (src/ffi.h),
-- the return codes, and the ABI check.
--
-- Every gw_ffi_* prototype the Lua library uses is declared here, once, so
-- that a mismatch with the binary is caught in one place: the module refuses
-- to load unless gw_ffi_abi_version() equals ABI below.
local ffi = require "ffi"

local ABI = 13

ffi.cdef [[
typedef struct gw_req_s gw_req_t;
typedef struct gw_task_s gw_task_t;
typedef struct gw_ffi_head_s {
  const char *method; size_t method_len;
  const char *uri; size_t uri_len; size_t path_len;
  const char *host; size_t host_len;
  int http_minor;
  int tls;
} gw_ffi_head_t;

int gw_ffi_abi_version(void);
int gw_ffi_req_head(gw_req_t *r, uint32_t s, gw_ffi_head_t *out);
int gw_ffi_req_header(gw_req_t *r, uint32_t s, const char *name, size_t nlen,
                      const char **value, size_t *vlen);
int gw_ffi_req_set_header(gw_req_t *r, uint32_t s, const char *name, size_t nlen,
                          const char *value, size_t vlen);
int gw_ffi_req_header_at(gw_req_t *r, uint32_t s, int i, const char **name, size_t *nlen,
                         const char **value, size_t *vlen);
const char *gw_ffi_req_ip(gw_req_t *r, uint32_t s, size_t *len);
const char *gw_ffi_req_id(gw_req_t *r, uint32_t s, size_t *len);
int gw_ffi_req_set_id(gw_req_t *r, uint32_t s, const char *id, size_t len);
int gw_ffi_req_body(gw_task_t *t, uint32_t ts, gw_req_t *r, uint32_t s, const char **body,
                    size_t *len, const char **err, uint32_t *wait_id);
int gw_ffi_resp_start(gw_req_t *r, uint32_t s, int status);
int gw_ffi_resp_header(gw_req_t *r, uint32_t s, const char *name, size_t nlen,
                       const char *value, size_t vlen);
int gw_ffi_resp_send(gw_req_t *r, uint32_t s, const char *body, size_t len);
int gw_ffi_resp_send_head_of(gw_req_t *r, uint32_t s, double length);
int gw_ffi_resp_sent(gw_req_t *r, uint32_t s);
int gw_ffi_resp_simple(gw_req_t *r, uint32_t s, int status, const char *ctype, size_t clen,
                       const char *body, size_t len);
void gw_ffi_log(int level, const char *msg, size_t len, int one_line);
double gw_ffi_now(void);
double gw_ffi_monotonic(void);
int gw_ffi_sleep(gw_task_t *t, uint32_t ts, double seconds, uint32_t *wait_id);
int gw_ffi_timer_start(int id, double after, double every);
int gw_ffi_worker_index(void);
void gw_ffi_load_budget(double seconds);
int gw_ffi_upstream_error_status(const char *msg);
long gw_ffi_json_check(const char *s, size_t n);
int gw_ffi_tls_check(const char *cert, const char *key, char *err, size_t errlen);
int gw_ffi_tls_check_ca(const char *path, char *err, size_t errlen);
typedef struct gw_ffi_cert_s {
  const char *subject; const char *issuer; const char *serial; const char *fingerprint;
  const char *error; int verified;
} gw_ffi_cert_t;
int gw_ffi_req_client_cert(gw_req_t *r, uint32_t s, gw_ffi_cert_t *out);

typedef struct gw_shdict_s gw_shdict_t;
typedef struct gw_ffi_shval_s { int type; double num; const char *str; size_t len; } gw_ffi_shval_t;
size_t gw_ffi_shdict_min_size(void);
gw_shdict_t *gw_ffi_shdict_find(const char *name, size_t len, size_t *size);
int gw_ffi_shdict_get(gw_shdict_t *d, const char *key, size_t klen, gw_ffi_shval_t *out);
int gw_ffi_shdict_set(gw_shdict_t *d, const char *key, size_t klen, int type, double num,
                      const char *str, size_t len, double ttl, int add, const char **err);
int gw_ffi_shdict_incr(gw_shdict_t *d, const char *key, size_t klen, double by, int has_init,
                       double init, double ttl, double *out, const char **err);
int gw_ffi_shdict_delete(gw_shdict_t *d, const char *key, size_t klen);
typedef struct gw_ffi_gcra_s { int allowed; double remaining; double reset_ms; double retry_after_ms; } gw_ffi_gcra_t;
int gw_ffi_shdict_gcra(gw_shdict_t *d, const char *key, size_t klen, double emission_ms,
                       double tolerance_ms, double now_ms, gw_ffi_gcra_t *out, const char **err);
]]

local C = ffi.C
local got = C.gw_ffi_abi_version()
if got ~= ABI then
  error(("gateway: lua library ABI %d does not match the binary's %d"):format(ABI, got), 0)
end

return {
  C = C,
  ffi = ffi,
  OK = 0,
  ERROR = -1,
  AGAIN = -2,
  DECLINED = -5,
  BAD_CONTEXT = -101,
  -- Scratch out-parameters shared by the wrappers. They are read right after
  -- the call that fills them, with no yield in between.
  out_str = ffi.new("const char *[1]"),
  out_str2 = ffi.new("const char *[1]"),
  out_len = ffi.new("size_t[1]"),
  out_len2 = ffi.new("size_t[1]"),
  out_err = ffi.new("const char *[1]"),
  out_wait = ffi.new("uint32_t[1]"),
  head = ffi.new("gw_ffi_head_t"),
  req_ptr = ffi.typeof("gw_req_t *"),
  task_ptr = ffi.typeof("gw_task_t *"),
  FINISHED = "request already finished",
}
