/* The C half of pylon's HTTP/2 codec (see h2_session.py for the Python half and _h2_build.py for the build).
 *
 * Why C here at all: libnghttp2 calls back once per header, per frame header and per frame. Each call into Python
 * costs ~120 ns before it does anything (mesh-facts B3), so the calls that need no Python object stay here:
 * header fields are collected into one NUL-separated block per HEADERS frame (HTTP/2 forbids NUL in fields and
 * nghttp2 checks it), Envoy's inbound flood limits are counted per frame header, and the counters the proxy
 * reports are kept in the connection struct. What needs a Python object (a HEADERS frame, a DATA chunk, a stream's
 * end or close, GOAWAY, a PING's ACK) is recorded as an event (pyl_event) in the connection's event buffer, and
 * Python reads the events of a pyl_recv or pyl_send once it returns: no call from C into Python at all (a cffi
 * callback costs ~375 ns compiled, decoding an event ~85 ns). Outbound bodies live here too (pyl_out): `pyl_data`
 * copies each piece in, `pyl_trailers` the trailers' block, and nghttp2's DATA reads take from that copy, so framing
 * a body never calls into Python.
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

/* One piece of an outbound body, copied from Python's bytes. */
typedef struct pyl_chunk {
    struct pyl_chunk *next;
    size_t len, off;
    uint8_t data[];
} pyl_chunk;

/* A stream's outbound body: the pieces not framed yet, whether more may come, and the trailers that end it (a
 * "name\0value\0..." block). It is the stream's user data and its data provider's source, from the submission
 * that opened the body until its last DATA read or the stream's close; linked into its connection so pyl_del frees
 * what an abandoned session left. */
typedef struct pyl_out {
    struct pyl_out *prev, *next;
    int32_t stream_id;
    pyl_chunk *head, *tail;
    size_t size;  /* bytes queued, not framed yet: the stream's share of the back-pressure */
    int ended, deferred;
    char *trailers;  /* the trailers' block, copied */
    nghttp2_nv *tnva;  /* its fields, pointing into that copy (checked when submitted) */
    size_t tcount;
} pyl_out;

/* An event, as recorded in the event buffer: this header, then `len` bytes (a HEADERS block, or DATA copied; DATA
 * still in pyl_recv's input is not copied: `a` is its offset there and `flag` is 1). */
typedef struct pyl_event {
    uint8_t kind;  /* PYL_EV_* */
    uint8_t flag;  /* HEADERS: END_STREAM; DATA: the payload is in the input at offset `a` */
    uint16_t cat;  /* HEADERS: nghttp2_headers_category */
    int32_t stream_id;
    uint32_t a, b;  /* GOAWAY: last stream id, error code; CLOSE: error code */
    uint32_t len;
} pyl_event;

#define PYL_EV_HEADERS 1
#define PYL_EV_DATA 2
#define PYL_EV_END 3
#define PYL_EV_GOAWAY 4
#define PYL_EV_PING_ACK 5
#define PYL_EV_CLOSE 6

/* pyl_recv's status bits (a negative result is nghttp2's error) and pyl_send's (below its length, shifted by 2). */
#define PYL_ST_EVENTS 1
#define PYL_ST_ENDED 2  /* the session wants to read no more: a connection error, or a GOAWAY drain is over */
#define PYL_ST_OUTBOUND_FLOOD 4

/* An event buffer grown past this is freed before the next pyl_recv or pyl_send: one large read (a burst of header
 * blocks) must not pin its size for the connection's life. DATA is not copied, so a read of a few requests' headers
 * stays below it. */
#define PYL_EVENTS_KEEP 16384

typedef struct pyl_h2 {
    nghttp2_session *session;
    uint8_t *ebuf;  /* the events of the last pyl_recv or pyl_send */
    size_t elen, ecap;
    const uint8_t *in;  /* pyl_recv's input, while nghttp2 parses it */
    size_t inlen;
    size_t max_outbound_frames;
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
    uint64_t pending_send_bytes;  /* body bytes accepted, not framed yet (Envoy's http2.pending_send_bytes) */
    pyl_out *outs;  /* open outbound bodies */
} pyl_h2;

#define PYL_TRIP_EMPTY 1
#define PYL_TRIP_PRIORITY 2
#define PYL_TRIP_WINDOW_UPDATE 3
#define PYL_TRIP_HEADER_OVERFLOW 4
#define PYL_TRIP_CONTINUATIONS 5
#define PYL_TRIP_RAPID_RESET 6

/* Record an event of size `len`, its payload copied after it unless `payload` is NULL (none, or DATA left in the
 * input); a failed allocation fails the callback (the session ends). */
static int ev_add(pyl_h2 *c, int kind, int flag, int cat, int32_t stream_id, uint32_t a, uint32_t b,
                  const uint8_t *payload, size_t len) {
    pyl_event e;
    size_t need = c->elen + sizeof e + (payload ? len : 0);
    if (need > c->ecap) {
        size_t cap = c->ecap ? c->ecap : 1024;
        uint8_t *p;
        while (cap < need) cap *= 2;
        p = realloc(c->ebuf, cap);
        if (!p) return NGHTTP2_ERR_CALLBACK_FAILURE;
        c->ebuf = p;
        c->ecap = cap;
    }
    e.kind = (uint8_t)kind;
    e.flag = (uint8_t)flag;
    e.cat = (uint16_t)cat;
    e.stream_id = stream_id;
    e.a = a;
    e.b = b;
    e.len = (uint32_t)len;
    memcpy(c->ebuf + c->elen, &e, sizeof e);
    if (payload && len) memcpy(c->ebuf + c->elen + sizeof e, payload, len);
    c->elen = need;
    return 0;
}

static void ev_reset(pyl_h2 *c) {
    if (c->ecap > PYL_EVENTS_KEEP) {
        free(c->ebuf);
        c->ebuf = NULL;
        c->ecap = 0;
    }
    c->elen = 0;
}

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
        return ev_add(c, PYL_EV_HEADERS, end, f->headers.cat, f->hd.stream_id, 0, 0, c->hbuf, c->hlen);
    case NGHTTP2_DATA:
        return end ? ev_add(c, PYL_EV_END, 0, 0, f->hd.stream_id, 0, 0, NULL, 0) : 0;
    case NGHTTP2_RST_STREAM:  /* the stream's close follows: that is the event */
        c->rx_reset++;
        if (c->reset_burst > 0 && !rapid_reset_ok(c)) return trip(c, PYL_TRIP_RAPID_RESET);
        return 0;
    case NGHTTP2_GOAWAY:
        return ev_add(c, PYL_EV_GOAWAY, 0, 0, 0, (uint32_t)f->goaway.last_stream_id, f->goaway.error_code, NULL, 0);
    case NGHTTP2_PING:  /* only an ACK reaches Python (keepalive); nghttp2 answers the peer's own PINGs */
        return (f->hd.flags & NGHTTP2_FLAG_ACK) ? ev_add(c, PYL_EV_PING_ACK, 0, 0, 0, 0, 0, NULL, 0) : 0;
    default:
        return 0;
    }
}

/* A DATA chunk: nghttp2 hands it out of pyl_recv's input (padded or not), so only its offset is recorded and Python
 * slices its own bytes, one copy as before. A chunk from anywhere else (no libnghttp2 here does that) is copied. */
static int cb_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                         void *ud) {
    pyl_h2 *c = ud;
    (void)s;
    (void)flags;
    if (c->in && data >= c->in && data + len <= c->in + c->inlen)
        return ev_add(c, PYL_EV_DATA, 1, 0, stream_id, (uint32_t)(data - c->in), 0, NULL, len);
    return ev_add(c, PYL_EV_DATA, 0, 0, stream_id, 0, 0, data, len);
}

static pyl_out *out_new(pyl_h2 *c) {
    pyl_out *o = calloc(1, sizeof(pyl_out));
    if (!o) return NULL;
    o->next = c->outs;
    if (o->next) o->next->prev = o;
    c->outs = o;
    return o;
}

static void out_free(pyl_h2 *c, pyl_out *o) {
    if (o->prev) o->prev->next = o->next;
    else c->outs = o->next;
    if (o->next) o->next->prev = o->prev;
    while (o->head) {
        pyl_chunk *k = o->head;
        o->head = k->next;
        free(k);
    }
    c->pending_send_bytes -= o->size;
    free(o->tnva);
    free(o->trailers);
    free(o);
}

static int out_append(pyl_h2 *c, pyl_out *o, const uint8_t *data, size_t len) {
    pyl_chunk *k = malloc(sizeof(pyl_chunk) + len);
    if (!k) return NGHTTP2_ERR_NOMEM;
    k->next = NULL;
    k->len = len;
    k->off = 0;
    memcpy(k->data, data, len);
    if (o->tail) o->tail->next = k;
    else o->head = k;
    o->tail = k;
    o->size += len;
    c->pending_send_bytes += len;
    return 0;
}

static int cb_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *ud) {
    pyl_h2 *c = ud;
    pyl_out *o = nghttp2_session_get_stream_user_data(s, stream_id);
    if (o) out_free(c, o);  /* reset before its body was framed */
    return ev_add(c, PYL_EV_CLOSE, 0, 0, stream_id, error_code, 0, NULL, 0);
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

/* nghttp2's DATA read: as much of the queued pieces as the windows allow; once the body ended and all of it went, the
 * trailers (their HEADERS ends the stream) or END_STREAM on this frame. With nothing queued and more to come, the
 * stream waits (DEFERRED) until pyl_data or pyl_trailers resumes it. */
static ssize_t cb_read(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
                       nghttp2_data_source *source, void *ud) {
    pyl_h2 *c = ud;
    pyl_out *o = source->ptr;
    size_t n = 0;
    while (o->head && n < length) {
        pyl_chunk *k = o->head;
        size_t take = k->len - k->off;
        if (take > length - n) take = length - n;
        memcpy(buf + n, k->data + k->off, take);
        n += take;
        k->off += take;
        if (k->off == k->len) {
            o->head = k->next;
            if (!o->head) o->tail = NULL;
            free(k);
        }
    }
    o->size -= n;
    c->pending_send_bytes -= n;
    if (o->head) return (ssize_t)n;
    if (!o->ended) {
        if (n) return (ssize_t)n;
        o->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (o->tnva) {
        if (nghttp2_submit_headers(s, NGHTTP2_FLAG_END_STREAM, stream_id, NULL, o->tnva, o->tcount, NULL) < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  /* the stream is reset; its close frees `o` */
        *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    } else {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    nghttp2_session_set_stream_user_data(s, stream_id, NULL);
    out_free(c, o);
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
    /* As Envoy: no closed stream is kept for RFC 7540's priority tree. A server session otherwise keeps up to
     * max_concurrent_streams (1024) of them in its stream map, memory per connection and a larger map to search on
     * every frame. */
    nghttp2_option_set_no_closed_streams(opt, 1);
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
    while (c->outs) out_free(c, c->outs);
    free(c->hbuf);
    c->hbuf = NULL;
    c->hcap = c->hlen = 0;
    free(c->obuf);
    c->obuf = NULL;
    c->ocap = 0;
    free(c->ebuf);
    c->ebuf = NULL;
    c->ecap = c->elen = 0;
}

/* Fields whose value is new on every request (the proxy's x-request-id, a client's remaining grpc-timeout) go out as
 * literals never indexed: indexing one would only evict a field that repeats, and nghttp2's encoder walks every
 * indexed field of the same name (one bucket of its table) on each look-up, so a table full of request ids made each
 * request's header block slower to encode. */
static uint8_t nv_flags(const char *name, size_t len) {
    if (len == 12 && (memcmp(name, "x-request-id", 12) == 0 || memcmp(name, "grpc-timeout", 12) == 0))
        return NGHTTP2_NV_FLAG_NO_INDEX;
    return NGHTTP2_NV_FLAG_NONE;
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
        nva[i].flags = nv_flags(p, nva[i].namelen);
        p = vz + 1;
    }
    if (p != end) {  /* a NUL inside a name or value: more separators than fields */
        free(nva);
        return NULL;
    }
    return nva;
}

/* A request's HEADERS; with a body, its pyl_out (the stream's user data from the start). Returns the stream id. */
static int32_t pyl_submit_request(pyl_h2 *c, const char *block, size_t len, size_t count, int with_body) {
    nghttp2_data_provider prd;
    nghttp2_nv *nva = nva_from_block(block, len, count);
    pyl_out *o = NULL;
    int32_t rv;
    if (!nva) return NGHTTP2_ERR_INVALID_ARGUMENT;
    if (with_body && !(o = out_new(c))) {
        free(nva);
        return NGHTTP2_ERR_NOMEM;
    }
    prd.source.ptr = o;
    prd.read_callback = cb_read;
    rv = nghttp2_submit_request(c->session, NULL, nva, count, o ? &prd : NULL, o);
    free(nva);
    if (o) {
        if (rv < 0) out_free(c, o);
        else o->stream_id = rv;
    }
    return rv;
}

/* A response's HEADERS and, with a body, its pyl_out holding `bodylen` bytes of `body` to start with; `ended`: that
 * is all of it (the stream ends with its last DATA frame). Framed in C: the usual small proxied response costs one
 * call into C and none back. */
static int pyl_submit_response(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count,
                               int with_body, const uint8_t *body, size_t bodylen, int ended) {
    nghttp2_data_provider prd;
    nghttp2_nv *nva = nva_from_block(block, len, count);
    pyl_out *o = NULL;
    int rv;
    if (!nva) return NGHTTP2_ERR_INVALID_ARGUMENT;
    if (with_body) {
        if (!(o = out_new(c)) || (bodylen && out_append(c, o, body, bodylen) != 0)) {
            if (o) out_free(c, o);
            free(nva);
            return NGHTTP2_ERR_NOMEM;
        }
        o->ended = ended;
    }
    prd.source.ptr = o;
    prd.read_callback = cb_read;
    rv = nghttp2_submit_response(c->session, stream_id, nva, count, o ? &prd : NULL);
    free(nva);
    if (rv != 0) {
        if (o) out_free(c, o);
        return rv;
    }
    if (o) {
        o->stream_id = stream_id;
        nghttp2_session_set_stream_user_data(c->session, stream_id, o);
    }
    return 0;
}

/* A stream's body: its user data once nghttp2 opened the stream; a request's stream opens only as its HEADERS is
 * framed, so until then it is found in the connection's list. */
static pyl_out *find_out(pyl_h2 *c, int32_t stream_id) {
    pyl_out *o = nghttp2_session_get_stream_user_data(c->session, stream_id);
    if (!o)
        for (o = c->outs; o && o->stream_id != stream_id; o = o->next) {}
    return o;
}

static pyl_out *open_out(pyl_h2 *c, int32_t stream_id) {
    pyl_out *o = find_out(c, stream_id);
    return o && !o->ended ? o : NULL;
}

static void out_resume(pyl_h2 *c, int32_t stream_id, pyl_out *o) {
    if (o->deferred) {
        o->deferred = 0;
        nghttp2_session_resume_data(c->session, stream_id);
    }
}

/* Body bytes for a stream whose body is open (copied); `end`: the body ends with them. Returns the bytes the stream
 * has queued now, or NGHTTP2_ERR_STREAM_CLOSED when it has no open body. */
static int64_t pyl_data(pyl_h2 *c, int32_t stream_id, const uint8_t *data, size_t len, int end) {
    pyl_out *o = open_out(c, stream_id);
    if (!o) return NGHTTP2_ERR_STREAM_CLOSED;
    if (len && out_append(c, o, data, len) != 0) return NGHTTP2_ERR_NOMEM;
    if (end) o->ended = 1;
    out_resume(c, stream_id, o);
    return (int64_t)o->size;
}

/* The trailers that end an open body (a copy of the block, checked now): sent after its last DATA. */
static int pyl_trailers(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count) {
    pyl_out *o = open_out(c, stream_id);
    char *copy;
    if (!o) return NGHTTP2_ERR_STREAM_CLOSED;
    if (!(copy = malloc(len ? len : 1))) return NGHTTP2_ERR_NOMEM;
    memcpy(copy, block, len);
    if (!(o->tnva = nva_from_block(copy, len, count))) {
        free(copy);
        return NGHTTP2_ERR_INVALID_ARGUMENT;
    }
    o->trailers = copy;
    o->tcount = count;
    o->ended = 1;
    out_resume(c, stream_id, o);
    return 0;
}

/* A whole response whose body ends with trailers (a gRPC answer read in one piece from an HTTP/2 upstream): its
 * head, body and trailers in one call. A refused trailers block (a NUL in it) leaves the head and body submitted
 * with the body open, as a refused pyl_trailers after them would. */
static int pyl_submit_response_trailers(pyl_h2 *c, int32_t stream_id, const char *block, size_t len, size_t count,
                                        const uint8_t *body, size_t bodylen, const char *tblock, size_t tlen,
                                        size_t tcount) {
    int rv = pyl_submit_response(c, stream_id, block, len, count, 1, body, bodylen, 0);
    return rv ? rv : pyl_trailers(c, stream_id, tblock, tlen, tcount);
}

/* The bytes a stream's body has queued, not framed yet (0 once framed, or when it has none). */
static size_t pyl_pending(pyl_h2 *c, int32_t stream_id) {
    pyl_out *o = find_out(c, stream_id);
    return o ? o->size : 0;
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

/* Parse the peer's bytes. Returns nghttp2's error (negative; the events before it are recorded too) or PYL_ST_*
 * bits: events to read (c->ebuf, c->elen), the session ended, the outbound queue over max_outbound_frames (a peer
 * that does not read what it asks for). */
static int64_t pyl_recv(pyl_h2 *c, const uint8_t *in, size_t inlen) {
    ssize_t rv;
    int64_t st = 0;
    ev_reset(c);
    c->in = in;
    c->inlen = inlen;
    rv = nghttp2_session_mem_recv(c->session, in, inlen);
    c->in = NULL;
    if (rv < 0) return rv;
    if (c->elen) st |= PYL_ST_EVENTS;
    if (!nghttp2_session_want_read(c->session)) st |= PYL_ST_ENDED;
    if (nghttp2_session_get_outbound_queue_size(c->session) > c->max_outbound_frames) st |= PYL_ST_OUTBOUND_FLOOD;
    return st;
}

/* Frame everything nghttp2 will send now into one buffer (*out, valid until the next call: one Python call instead of
 * one per frame). Returns a negative error, or the length shifted left by 2 with PYL_ST_EVENTS (streams closed as
 * their last frame went out) and PYL_ST_ENDED below it. */
static int64_t pyl_send(pyl_h2 *c, const uint8_t **out) {
    size_t len = 0;
    int64_t st = 0;
    ev_reset(c);
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
    if (c->elen) st |= PYL_ST_EVENTS;
    if (!nghttp2_session_want_read(c->session)) st |= PYL_ST_ENDED;
    return ((int64_t)len << 2) | st;
}

/* cffi's wrappers, generated after this file, would release the GIL around every call above and save errno for
 * ffi.errno; each callback into Python would then take the GIL back (a mutex and a condition variable each way).
 * These calls never block and take microseconds, the worker runs one thread of Python, and pylon never reads
 * ffi.errno: the GIL stays held and errno is left alone, which saves ~0.2 us per call and per callback. */
#undef Py_BEGIN_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#undef Py_END_ALLOW_THREADS
#define Py_END_ALLOW_THREADS }
#undef _cffi_restore_errno
#define _cffi_restore_errno() ((void)0)
#undef _cffi_save_errno
#define _cffi_save_errno() ((void)0)
