/* The C half of pylon's HTTP/2 codec (see h2_session.py for the Python half and _h2_build.py for the build).
 *
 * Why C here at all: libnghttp2 calls back once per header, per frame header and per frame. Each call into Python
 * costs ~120 ns before it does anything (mesh-facts B3), so the calls that need no Python object stay here:
 * header fields are collected into one NUL-separated block per HEADERS frame (HTTP/2 forbids NUL in fields and
 * nghttp2 checks it), Envoy's inbound flood limits are counted per frame header, and the counters the proxy
 * reports are kept in the connection struct. Python is called once per HEADERS frame, DATA chunk, stream close
 * and DATA read: what needs a Python object. A small response submitted whole (pyl_submit_whole) is framed from a
 * copy here, with no DATA read in Python.
 *
 * Optional libnghttp2 symbols (the stream reset rate limit of CVE-2023-44487, the CONTINUATION limit of
 * CVE-2024-27316) are Debian backports on a 1.52 library, so the version says nothing: they are looked up with
 * dlsym at first use, and used where present. Where max_continuations is absent the limit is counted here instead.
 * The reset rate is counted here too, with the library's figures: nghttp2's own limit queues a GOAWAY but goes on
 * parsing the rest of the buffer (a 64 KiB read holds ~2,000 HEADERS+RST pairs, each a new request for the
 * proxy), while a callback failure stops mem_recv at once.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <nghttp2/nghttp2.h>

/* A small response body submitted whole with its head (pyl_submit_whole): nghttp2 frames it from here, with no
 * call into Python per DATA read. Linked into its connection so pyl_del frees what an abandoned session left. */
typedef struct pyl_body {
    struct pyl_body *prev, *next;
    size_t len, off;
    uint8_t data[];
} pyl_body;

typedef struct pyl_h2 {
    nghttp2_session *session;
    void *handle;  /* the Python H2Connection (ffi.new_handle), which keeps the handle alive */
    unsigned char *hbuf;
    size_t hlen, hcap;
    uint8_t *obuf;  /* pyl_send's output, reused */
    size_t ocap;
    uint32_t hcount;
    size_t max_header_bytes;
    uint32_t max_headers_count;
    uint32_t max_empty, consecutive_empty;
    uint32_t max_continuations, continuations;
    uint64_t max_priority_per_stream, priority_frames;
    uint64_t max_wu_per_data, wu_frames, data_frames_sent;
    uint64_t opened_streams;
    double reset_tokens, reset_burst, reset_rate, reset_at;  /* RST_STREAM token bucket (server sessions) */
    int tripped;  /* PYL_TRIP_*: the limit that ended the connection */
    uint64_t rx_reset, tx_reset, rx_messaging_error, goaway_sent;
    pyl_body *bodies;  /* whole bodies not framed yet */
} pyl_h2;

#define PYL_TRIP_EMPTY 1
#define PYL_TRIP_PRIORITY 2
#define PYL_TRIP_WINDOW_UPDATE 3
#define PYL_TRIP_HEADER_OVERFLOW 4
#define PYL_TRIP_CONTINUATIONS 5
#define PYL_TRIP_RAPID_RESET 6

/* Defined in Python (extern "Python" in the cdef). */
static int pyl_on_headers(void *, int32_t, int, int, const unsigned char *, size_t);
static int pyl_on_data(void *, int32_t, const uint8_t *, size_t);
static int pyl_on_frame(void *, int, int32_t, int, uint32_t, uint32_t);
static int pyl_on_close(void *, int32_t, uint32_t);
static ssize_t pyl_read(void *, int32_t, uint8_t *, size_t, uint32_t *);

typedef void (*reset_limit_fn)(nghttp2_option *, uint64_t, uint64_t);
typedef void (*continuations_fn)(nghttp2_option *, size_t);

static void *pyl_symbol(const char *name) { return dlsym(RTLD_DEFAULT, name); }

static int pyl_has_reset_rate_limit(void) { return pyl_symbol("nghttp2_option_set_stream_reset_rate_limit") != NULL; }

static int pyl_has_max_continuations(void) { return pyl_symbol("nghttp2_option_set_max_continuations") != NULL; }

static int trip(pyl_h2 *c, int which) {
    c->tripped = which;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static void count_empty(pyl_h2 *c, const nghttp2_frame_hd *hd, int *failed) {
    if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM)) {
        if (++c->consecutive_empty > c->max_empty) *failed = trip(c, PYL_TRIP_EMPTY);
    } else {
        c->consecutive_empty = 0;
    }
}

/* Envoy's inbound protocol constraints, counted per frame header as Envoy's codec does. */
static int cb_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *ud) {
    pyl_h2 *c = ud;
    int failed = 0;
    (void)s;
    switch (hd->type) {
    case NGHTTP2_HEADERS:
        c->continuations = 0;
        count_empty(c, hd, &failed);
        break;
    case NGHTTP2_DATA:
        count_empty(c, hd, &failed);
        break;
    case NGHTTP2_CONTINUATION:
        count_empty(c, hd, &failed);
        if (!failed && c->max_continuations && ++c->continuations > c->max_continuations)
            failed = trip(c, PYL_TRIP_CONTINUATIONS);
        break;
    case NGHTTP2_PRIORITY:
        if (++c->priority_frames > c->max_priority_per_stream * (1 + c->opened_streams))
            failed = trip(c, PYL_TRIP_PRIORITY);
        break;
    case NGHTTP2_WINDOW_UPDATE:
        if (++c->wu_frames > 5 + 2 * (c->opened_streams + c->max_wu_per_data * c->data_frames_sent))
            failed = trip(c, PYL_TRIP_WINDOW_UPDATE);
        break;
    default:
        break;
    }
    return failed;
}

static int cb_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    pyl_h2 *c = ud;
    (void)s;
    if (f->headers.cat == NGHTTP2_HCAT_REQUEST) c->opened_streams++;
    c->hlen = 0;
    c->hcount = 0;
    return 0;
}

/* Envoy counts name + value bytes against max_request_headers_kb and ends the connection when a block is larger
 * (or has more than max_headers_count fields): the CONTINUATION flood and HPACK bombs stop here. */
static int cb_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *ud) {
    pyl_h2 *c = ud;
    size_t need = c->hlen + namelen + valuelen + 2;
    (void)s;
    (void)f;
    (void)flags;
    if (need - 2 * (c->hcount + 1) > c->max_header_bytes || ++c->hcount > c->max_headers_count)
        return trip(c, PYL_TRIP_HEADER_OVERFLOW);
    if (need > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 1024;
        unsigned char *p;
        while (cap < need) cap *= 2;
        p = realloc(c->hbuf, cap);
        if (!p) return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->hbuf = p;
        c->hcap = cap;
    }
    memcpy(c->hbuf + c->hlen, name, namelen);
    c->hbuf[c->hlen + namelen] = 0;
    memcpy(c->hbuf + c->hlen + namelen + 1, value, valuelen);
    c->hbuf[need - 1] = 0;
    c->hlen = need;
    return 0;
}

static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CVE-2023-44487: a token bucket of RST_STREAMs received, `reset_burst` deep, refilled at `reset_rate` per second. */
static int rapid_reset_ok(pyl_h2 *c) {
    double now = now_sec();
    c->reset_tokens += (now - c->reset_at) * c->reset_rate;
    if (c->reset_tokens > c->reset_burst) c->reset_tokens = c->reset_burst;
    c->reset_at = now;
    c->reset_tokens -= 1;
    return c->reset_tokens >= 0;
}

static int cb_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    pyl_h2 *c = ud;
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    (void)s;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        return pyl_on_headers(c->handle, f->hd.stream_id, f->headers.cat, end, c->hbuf, c->hlen);
    case NGHTTP2_DATA:
        return end ? pyl_on_frame(c->handle, NGHTTP2_DATA, f->hd.stream_id, f->hd.flags, 0, 0) : 0;
    case NGHTTP2_RST_STREAM:
        c->rx_reset++;
        if (c->reset_burst > 0 && !rapid_reset_ok(c)) return trip(c, PYL_TRIP_RAPID_RESET);
        return pyl_on_frame(c->handle, NGHTTP2_RST_STREAM, f->hd.stream_id, 0, f->rst_stream.error_code, 0);
    case NGHTTP2_GOAWAY:
        return pyl_on_frame(c->handle, NGHTTP2_GOAWAY, 0, 0, (uint32_t)f->goaway.last_stream_id,
                            f->goaway.error_code);
    case NGHTTP2_PING:  /* only an ACK reaches Python (keepalive); nghttp2 answers the peer's own PINGs */
        return (f->hd.flags & NGHTTP2_FLAG_ACK) ? pyl_on_frame(c->handle, NGHTTP2_PING, 0, f->hd.flags, 0, 0) : 0;
    default:
        return 0;
    }
}

static int cb_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                         void *ud) {
    (void)s;
    (void)flags;
    return pyl_on_data(((pyl_h2 *)ud)->handle, stream_id, data, len);
}

static void body_free(pyl_h2 *c, pyl_body *b) {
    if (b->prev) b->prev->next = b->next;
    else c->bodies = b->next;
    if (b->next) b->next->prev = b->prev;
    free(b);
}

static int cb_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *ud) {
    pyl_h2 *c = ud;
    pyl_body *b = nghttp2_session_get_stream_user_data(s, stream_id);
    if (b) body_free(c, b);  /* reset before its body was framed */
    return pyl_on_close(c->handle, stream_id, error_code);
}

static int cb_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    pyl_h2 *c = ud;
    (void)s;
    switch (f->hd.type) {
    case NGHTTP2_DATA: c->data_frames_sent++; break;
    case NGHTTP2_RST_STREAM: c->tx_reset++; break;
    case NGHTTP2_GOAWAY: c->goaway_sent++; break;
    default: break;
    }
    return 0;
}

/* A violation of RFC 9113 section 8 (HTTP messaging: bad pseudo-headers, an invalid field, a body longer than its
 * content-length) on a stream: nghttp2 resets the stream with PROTOCOL_ERROR; Envoy counts rx_messaging_error. */
static int cb_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int lib_error, void *ud) {
    (void)s;
    (void)f;
    if (lib_error == NGHTTP2_ERR_HTTP_MESSAGING || lib_error == NGHTTP2_ERR_HTTP_HEADER)
        ((pyl_h2 *)ud)->rx_messaging_error++;
    return 0;
}

static ssize_t cb_read(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
                       nghttp2_data_source *source, void *ud) {
    (void)s;
    (void)source;
    return pyl_read(((pyl_h2 *)ud)->handle, stream_id, buf, length, data_flags);
}

/* The DATA reads of a whole body (pyl_submit_whole): all of it as the windows allow, then END_STREAM. */
static ssize_t cb_read_body(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
                            nghttp2_data_source *source, void *ud) {
    pyl_body *b = source->ptr;
    size_t n = b->len - b->off;
    if (n > length) n = length;
    memcpy(buf, b->data + b->off, n);
    b->off += n;
    if (b->off == b->len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        nghttp2_session_set_stream_user_data(s, stream_id, NULL);
        body_free(ud, b);
    }
    return (ssize_t)n;
}

/* One session with the callbacks above and Envoy's options; returns 0 or a negative nghttp2 error. */
static int pyl_new(pyl_h2 *c, int server, int max_outbound_ack, int reset_burst, int reset_rate) {
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    int rv;
    if ((rv = nghttp2_session_callbacks_new(&cbs)) != 0) return rv;
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, cb_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, cb_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, cb_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, cb_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, cb_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, cb_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, cb_frame_send);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, cb_invalid_frame);
    if ((rv = nghttp2_option_new(&opt)) != 0) {
        nghttp2_session_callbacks_del(cbs);
        return rv;
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, (size_t)max_outbound_ack);
    /* Flow control windows are Envoy's (256 MiB): the peer's SETTINGS decide how many streams it may open. */
    nghttp2_option_set_peer_max_concurrent_streams(opt, 2147483647u);
    if (server) {
        reset_limit_fn f = (reset_limit_fn)pyl_symbol("nghttp2_option_set_stream_reset_rate_limit");
        if (f) f(opt, (uint64_t)reset_burst, (uint64_t)reset_rate);
        c->reset_tokens = c->reset_burst = reset_burst;
        c->reset_rate = reset_rate;
        c->reset_at = now_sec();
    }
    {
        continuations_fn f = (continuations_fn)pyl_symbol("nghttp2_option_set_max_continuations");
        if (f) {
            f(opt, c->max_continuations);
            c->max_continuations = 0; /* the library counts */
        }
    }
    rv = server ? nghttp2_session_server_new2(&c->session, cbs, c, opt)
                : nghttp2_session_client_new2(&c->session, cbs, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    return rv;
}

static void pyl_del(pyl_h2 *c) {
    if (c->session) nghttp2_session_del(c->session);
    c->session = NULL;
    while (c->bodies) body_free(c, c->bodies);
    free(c->hbuf);
    c->hbuf = NULL;
    c->hcap = c->hlen = 0;
    free(c->obuf);
    c->obuf = NULL;
    c->ocap = 0;
}

/* Header lists cross as one "name\0value\0..." block of `count` fields: one Python join instead of one cdata
 * struct per field. nghttp2 copies names and values when the frame is submitted. */
static nghttp2_nv *nva_from_block(const char *block, size_t len, size_t count) {
    nghttp2_nv *nva = malloc(sizeof(nghttp2_nv) * (count ? count : 1));
    const char *p = block, *end = block + len;
    size_t i;
    if (!nva) return NULL;
    for (i = 0; i < count; i++) {
        const char *z = p < end ? memchr(p, 0, (size_t)(end - p)) : NULL;
        const char *v = z ? z + 1 : end;
        const char *vz = v < end ? memchr(v, 0, (size_t)(end - v)) : NULL;
        if (!vz) {
            free(nva);
            return NULL;
        }
        nva[i].name = (uint8_t *)p;
        nva[i].namelen = (size_t)(z - p);
        nva[i].value = (uint8_t *)v;
        nva[i].valuelen = (size_t)(vz - v);
        nva[i].flags = NGHTTP2_NV_FLAG_NONE;
        p = vz + 1;
    }
    if (p != end) {  /* a NUL inside a name or value: more separators than fields */
        free(nva);
        return NULL;
    }
    return nva;
}

static int32_t pyl_submit_request(pyl_h2 *c, const char *block, size_t len, size_t count, int with_body) {
    nghttp2_data_provider prd;
    nghttp2_nv *nva = nva_from_block(block, len, count);
    int32_t rv;
    if (!nva) return NGHTTP2_ERR_INVALID_ARGUMENT;
    prd.source.ptr = NULL;
    prd.read_callback = cb_read;
    rv = nghttp2_submit_request(c->session, NULL, nva, count, with_body ? &prd : NULL, NULL);
    free(nva);
    return rv;
}

static int pyl_submit_response(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count,
                               int with_body) {
    nghttp2_data_provider prd;
    nghttp2_nv *nva = nva_from_block(block, len, count);
    int rv;
    if (!nva) return NGHTTP2_ERR_INVALID_ARGUMENT;
    prd.source.ptr = NULL;
    prd.read_callback = cb_read;
    rv = nghttp2_submit_response(c->session, stream_id, nva, count, with_body ? &prd : NULL);
    free(nva);
    return rv;
}

/* A whole response at once: HEADERS, then `body` (copied here) as DATA ending the stream, framed in C. The usual
 * small proxied response then costs one call into C and none back per DATA read. */
static int pyl_submit_whole(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count,
                            const uint8_t *body, size_t bodylen) {
    nghttp2_data_provider prd;
    nghttp2_nv *nva = nva_from_block(block, len, count);
    pyl_body *b;
    int rv;
    if (!nva) return NGHTTP2_ERR_INVALID_ARGUMENT;
    b = malloc(sizeof(pyl_body) + bodylen);
    if (!b) {
        free(nva);
        return NGHTTP2_ERR_NOMEM;
    }
    b->len = bodylen;
    b->off = 0;
    memcpy(b->data, body, bodylen);
    prd.source.ptr = b;
    prd.read_callback = cb_read_body;
    rv = nghttp2_submit_response(c->session, stream_id, nva, count, &prd);
    free(nva);
    if (rv != 0) {
        free(b);
        return rv;
    }
    b->prev = NULL;
    b->next = c->bodies;
    if (b->next) b->next->prev = b;
    c->bodies = b;
    nghttp2_session_set_stream_user_data(c->session, stream_id, b);
    return 0;
}

/* Informational (1xx) responses and trailers: a HEADERS frame with no data provider. */
static int pyl_submit_headers(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count,
                              int end_stream) {
    nghttp2_nv *nva = nva_from_block(block, len, count);
    int rv;
    if (!nva) return NGHTTP2_ERR_INVALID_ARGUMENT;
    rv = nghttp2_submit_headers(c->session, end_stream ? NGHTTP2_FLAG_END_STREAM : NGHTTP2_FLAG_NONE, stream_id,
                                NULL, nva, count, NULL);
    free(nva);
    return rv;
}

/* Everything nghttp2 will frame now, in one buffer (one Python call instead of one per frame); sets *out and
 * returns its length, or a negative nghttp2 error. The buffer is valid until the next call. */
static ssize_t pyl_send(pyl_h2 *c, const uint8_t **out) {
    size_t len = 0;
    for (;;) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(c->session, &p);
        if (n < 0) return n;
        if (n == 0) break;
        if (len + (size_t)n > c->ocap) {
            size_t cap = c->ocap ? c->ocap : 16384;
            uint8_t *b;
            while (cap < len + (size_t)n) cap *= 2;
            b = realloc(c->obuf, cap);
            if (!b) return NGHTTP2_ERR_NOMEM;
            c->obuf = b;
            c->ocap = cap;
        }
        memcpy(c->obuf + len, p, (size_t)n);
        len += (size_t)n;
    }
    *out = c->obuf;
    return (ssize_t)len;
}
