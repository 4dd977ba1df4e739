"""cffi (API mode) build of `pylon.proxy.http._nghttp2`, the binding under the HTTP/2 codec.

Used by setup.py (`cffi_modules`) and runnable directly to build in place
(`python src/pylon/proxy/http/_h2_build.py`; the .so lands beside this file
and .gitignore keeps it out of git). It links the system libnghttp2
(`libnghttp2-dev`). API mode, not ABI mode: struct layouts are checked
against the header at build time. The cdef is only what `h2_session` uses;
the per-header and per-frame-header work is C (`h2_shim.c`), and so are
outbound bodies (copied in, framed from the copy). C never calls Python: what
Python must see is recorded as events and read after each receive and send.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

CDEF = """
typedef struct nghttp2_session nghttp2_session;
typedef struct pyl_out pyl_out;
typedef struct pyl_h2 {
    nghttp2_session *session;
    uint8_t *ebuf;
    size_t elen, ecap;
    size_t max_outbound_frames;
    size_t max_header_bytes;
    uint32_t max_headers_count;
    uint32_t max_empty;
    uint32_t max_continuations;
    uint64_t max_priority_per_stream;
    uint64_t max_wu_per_data;
    int tripped;
    uint64_t rx_reset, tx_reset, rx_messaging_error, goaway_sent;
    uint64_t pending_send_bytes;
    pyl_out *outs;
    ...;
} pyl_h2;

#define PYL_TRIP_EMPTY 1
#define PYL_TRIP_PRIORITY 2
#define PYL_TRIP_WINDOW_UPDATE 3
#define PYL_TRIP_HEADER_OVERFLOW 4
#define PYL_TRIP_CONTINUATIONS 5
#define PYL_TRIP_RAPID_RESET 6

#define PYL_EV_HEADERS 1
#define PYL_EV_DATA 2
#define PYL_EV_END 3
#define PYL_EV_GOAWAY 4
#define PYL_EV_PING_ACK 5
#define PYL_EV_CLOSE 6
#define PYL_ST_EVENTS 1
#define PYL_ST_ENDED 2
#define PYL_ST_OUTBOUND_FLOOD 4

#define NGHTTP2_HCAT_REQUEST 0
#define NGHTTP2_HCAT_RESPONSE 1
#define NGHTTP2_ERR_FLOODED -904
#define NGHTTP2_ERR_TOO_MANY_CONTINUATIONS -905
#define NGHTTP2_SETTINGS_HEADER_TABLE_SIZE 1
#define NGHTTP2_SETTINGS_ENABLE_PUSH 2
#define NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS 3
#define NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE 4
#define NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL 8

typedef struct { int32_t settings_id; uint32_t value; } nghttp2_settings_entry;

static int pyl_has_reset_rate_limit(void);
static int pyl_has_max_continuations(void);
static int pyl_new(pyl_h2 *c, int server, int max_outbound_ack, int reset_burst, int reset_rate);
static void pyl_del(pyl_h2 *c);
static int64_t pyl_recv(pyl_h2 *c, const uint8_t *in, size_t inlen);
static int64_t pyl_send(pyl_h2 *c, const uint8_t **out);
static int32_t pyl_submit_request(pyl_h2 *c, const char *block, size_t len, size_t count, int with_body);
static int pyl_submit_response(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count,
                               int with_body, const uint8_t *body, size_t bodylen, int ended);
static int64_t pyl_data(pyl_h2 *c, int32_t stream_id, const uint8_t *data, size_t len, int end);
static int pyl_trailers(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count);
static int pyl_submit_response_trailers(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count,
                                        const uint8_t *body, size_t bodylen, const char *tblock, size_t tlen,
                                        size_t tcount);
static size_t pyl_pending(pyl_h2 *c, int32_t stream_id);
static int pyl_submit_headers(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count,
                              int end_stream);

int nghttp2_session_want_read(nghttp2_session *session);
int nghttp2_session_want_write(nghttp2_session *session);
int nghttp2_submit_settings(nghttp2_session *session, uint8_t flags, const nghttp2_settings_entry *iv, size_t niv);
int nghttp2_session_set_local_window_size(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                                          int32_t window_size);
int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size);
int nghttp2_session_consume_connection(nghttp2_session *session, size_t size);
int nghttp2_submit_rst_stream(nghttp2_session *session, uint8_t flags, int32_t stream_id, uint32_t error_code);
int nghttp2_submit_shutdown_notice(nghttp2_session *session);
int nghttp2_submit_ping(nghttp2_session *session, uint8_t flags, const uint8_t *opaque_data);
int nghttp2_submit_goaway(nghttp2_session *session, uint8_t flags, int32_t last_stream_id, uint32_t error_code,
                          const uint8_t *opaque_data, size_t opaque_data_len);
int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code);
int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session *session);
size_t nghttp2_session_get_outbound_queue_size(nghttp2_session *session);
int32_t nghttp2_session_get_stream_remote_window_size(nghttp2_session *session, int32_t stream_id);
int32_t nghttp2_session_get_remote_window_size(nghttp2_session *session);
const char *nghttp2_strerror(int lib_error_code);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pylon.proxy.http._nghttp2",
    (HERE / "h2_shim.c").read_text(),
    libraries=["nghttp2", "dl"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-function"],
)

if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = ffibuilder.compile(tmpdir=tmp, verbose=False)
        target = HERE / pathlib.Path(built).name
        pathlib.Path(built).replace(target)
        print(target)
