/* pylon native TLS connection driving: one C call per read or write of a server-side TLS connection.
 *
 * Compiled into the same module as keyhook.c (appended to it by _build.py), so a handshake that
 * pauses on a hooked key parks its operation in the connection's slot through pk_current directly.
 *
 * The SSL object is the one CPython created for an `ssl.SSLObject` (context.wrap_bio), taken from
 * the `_ssl._SSLSocket` behind it: every setting of the SSLContext applies (ciphers, ALPN, the SNI
 * callback, client-certificate verification, tickets, modes), and Python keeps reading the
 * negotiated parameters (peer certificate, ALPN, SNI, cipher) through the SSLObject as before.
 * Only the record I/O moves here: the SSL gets two fresh memory BIOs of its own, a read decrypts
 * everything the bytes brought in one call (no SSLWantReadError per read), a write encrypts in one.
 */

#define TN_OK 0         /* handshake complete / read ended wanting more bytes */
#define TN_WANT_READ 1  /* handshake needs more bytes from the peer */
#define TN_WANT_ASYNC 2 /* handshake paused: its key operation is parked in the slot */
#define TN_CLOSED 3     /* the peer sent close_notify */
#define TN_ERROR -1     /* failed; tn_conn.err holds the OpenSSL error */

typedef struct tn_conn {
    SSL *ssl;
    pk_slot *slot;      /* where a paused handshake parks its key operation (NULL: no hooked key) */
    int wire;           /* ciphertext left in the write BIO after the last call (for tn_take) */
    int more;           /* tn_read filled `out`: plaintext may be left to read */
    int status;         /* how the last tn_read ended: TN_OK, TN_CLOSED or TN_ERROR */
    unsigned long err;  /* the OpenSSL error of the last failure (ERR_peek_last_error) */
} tn_conn;

/* The SSL* of an `_ssl._SSLSocket`: CPython 3.11 lays it out as PyObject_HEAD, PyObject *Socket,
 * SSL *ssl. Trusted only when the SSL's app data points back at that object (CPython sets it). */
static SSL *tn_ssl_of(void *sslsock)
{
    SSL *ssl = *(SSL **)((char *)sslsock + sizeof(PyObject) + sizeof(PyObject *));
    return ssl != NULL && SSL_get_app_data(ssl) == sslsock ? ssl : NULL;
}

/* Take over the record I/O of the `_ssl._SSLSocket` at `sslsock`: give its SSL two memory BIOs of
 * its own (the ones wrap_bio set are released). 1 on success, 0 when `sslsock` is not what we expect. */
static int tn_attach(tn_conn *c, void *sslsock, pk_slot *slot)
{
    SSL *ssl = tn_ssl_of(sslsock);
    BIO *rbio, *wbio;
    memset(c, 0, sizeof(*c));
    if (ssl == NULL) return 0;
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    if (rbio == NULL || wbio == NULL) { BIO_free(rbio); BIO_free(wbio); ERR_clear_error(); return 0; }
    BIO_set_mem_eof_return(rbio, -1);  /* empty means "want read", not EOF: the socket says when it ends */
    BIO_set_mem_eof_return(wbio, -1);
    SSL_set_bio(ssl, rbio, wbio);
    c->ssl = ssl;
    c->slot = slot;
    return 1;
}

static int tn_fail(tn_conn *c)
{
    c->err = ERR_peek_last_error();
    ERR_clear_error();
    c->wire = (int)BIO_ctrl_pending(SSL_get_wbio(c->ssl));  /* an alert, if OpenSSL wrote one */
    return TN_ERROR;
}

/* Queue `len` bytes from the peer without driving anything (a handshake parked on its key). 1 on success. */
static int tn_feed(tn_conn *c, const char *data, int len)
{
    return len <= 0 || BIO_write(SSL_get_rbio(c->ssl), data, len) == len;
}

/* Feed `len` bytes and drive the handshake. TN_OK, TN_WANT_READ, TN_WANT_ASYNC or TN_ERROR. */
static int tn_handshake(tn_conn *c, const char *data, int len)
{
    int rc, result;
    if (!tn_feed(c, data, len)) return tn_fail(c);
    pk_current = c->slot;
    rc = SSL_do_handshake(c->ssl);
    pk_current = NULL;
    if (rc == 1) {
        /* No private key operation follows a handshake (renegotiation is off): records need no ASYNC job. */
        SSL_clear_mode(c->ssl, SSL_MODE_ASYNC);
        result = TN_OK;
    } else {
        switch (SSL_get_error(c->ssl, rc)) {
        case SSL_ERROR_WANT_READ: result = TN_WANT_READ; break;
        case SSL_ERROR_WANT_ASYNC:
            if (c->slot != NULL && c->slot->state == PK_PENDING) { result = TN_WANT_ASYNC; break; }
            return tn_fail(c);
        default: return tn_fail(c);
        }
    }
    c->wire = (int)BIO_ctrl_pending(SSL_get_wbio(c->ssl));
    return result;
}

/* Fail the parked key operation and let OpenSSL's paused ASYNC job run to its end (no fiber leaks). */
static void tn_unwind(tn_conn *c)
{
    if (c->slot == NULL) return;
    c->slot->state = PK_FAILED;
    pk_current = c->slot;
    SSL_do_handshake(c->ssl);
    pk_current = NULL;
    ERR_clear_error();
}

/* Feed `len` bytes and decrypt all the records they complete into `out` (at most `cap` bytes).
 * Returns the plaintext length; `status` says how it ended, `more` that `out` filled up. */
static int tn_read(tn_conn *c, const char *data, int len, char *out, int cap)
{
    size_t total = 0, got;
    c->more = 0;
    c->status = TN_OK;
    if (!tn_feed(c, data, len)) { c->status = tn_fail(c); return 0; }
    while (total < (size_t)cap) {
        int rc = SSL_read_ex(c->ssl, out + total, (size_t)cap - total, &got);
        if (rc == 1) { total += got; continue; }
        switch (SSL_get_error(c->ssl, rc)) {
        case SSL_ERROR_WANT_READ: break;
        case SSL_ERROR_ZERO_RETURN: c->status = TN_CLOSED; break;
        default: c->status = tn_fail(c); return (int)total;
        }
        break;
    }
    c->more = total == (size_t)cap;
    c->wire = (int)BIO_ctrl_pending(SSL_get_wbio(c->ssl));  /* e.g. a KeyUpdate's answer */
    return (int)total;
}

/* Move up to `cap` bytes of ciphertext from the write BIO to `out`; `wire` says what is left. */
static int tn_take(tn_conn *c, char *out, int cap)
{
    int n = BIO_read(SSL_get_wbio(c->ssl), out, cap);
    c->wire = (int)BIO_ctrl_pending(SSL_get_wbio(c->ssl));
    return n > 0 ? n : 0;
}

/* Encrypt `len` bytes and take the records into `out` as tn_take does; -1 on failure. */
static int tn_write(tn_conn *c, const char *data, int len, char *out, int cap)
{
    size_t done = 0;
    if (SSL_write_ex(c->ssl, data, (size_t)len, &done) != 1 || done != (size_t)len) return tn_fail(c);
    return tn_take(c, out, cap);
}

/* Queue close_notify (the peer's is not awaited, as in Envoy) and take it into `out`. */
static int tn_shutdown(tn_conn *c, char *out, int cap)
{
    SSL_shutdown(c->ssl);
    ERR_clear_error();
    return tn_take(c, out, cap);
}

static const char *tn_reason(unsigned long err)
{
    const char *text = ERR_reason_error_string(err);
    return text != NULL ? text : "";
}
