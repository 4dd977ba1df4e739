"""cffi (API mode) build of `pylon.keys._keyhook`, the native private-key hook.

Used by setup.py (`cffi_modules`) and runnable directly to build in place
(`python src/pylon/keys/_build.py`). It links the system libssl/libcrypto: the
same instance CPython's `_ssl` uses (checked again at run time by
`pylon.keys.hook`). tlsconn.c, compiled into the same module, drives server-side
TLS connections (`pylon.proxy.tls_transport`). crypto_mb is not linked: it is dlopen'ed on demand, so the
hook works (without the cryptomb provider) where ipp-crypto is absent.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

CDEF = """
typedef struct pk_key { int type; int bits; int handle; ...; } pk_key;
typedef struct pk_slot {
    int state; int kind; pk_key *key; int in_len; unsigned char in[512]; int out_len; unsigned char out[512];
} pk_slot;
#define PK_IDLE 0
#define PK_PENDING 1
#define PK_DONE 2
#define PK_FAILED 3
#define PK_RSA 1
#define PK_ECDSA 2

extern "Python" int pk_sync_op(pk_slot *);

void pk_enter(pk_slot *slot);
void pk_slot_run(pk_slot *slot);
void pk_slot_complete(pk_slot *slot, const unsigned char *out, int len);
void pk_slot_fail(pk_slot *slot);
int pk_init(void);
int pk_key_init(pk_key *key, const unsigned char *spki, long len, int handle);
int pk_key_load_private(pk_key *key, const char *pem, int len);
int pk_install(void *ctx, pk_key *key);
int pk_use_chain_file(void *ctx, const char *path);
void pk_set_async(void *ctx);
long pk_get_mode(void *ctx);
unsigned long pk_openssl_version(void);
void *pk_ssl_ctx_new_address(void);
int mb_load(const char *const paths[], int count);
int mb_rsa_batch(pk_slot *const slots[], int count);
int mb_ecdsa_batch(pk_slot *const slots[], int count);

typedef struct tn_conn { int wire; int more; int status; unsigned long err; ...; } tn_conn;
#define TN_OK 0
#define TN_WANT_READ 1
#define TN_WANT_ASYNC 2
#define TN_CLOSED 3
#define TN_ERROR -1
int tn_attach(tn_conn *c, void *sslsock, pk_slot *slot);
int tn_feed(tn_conn *c, const char *data, int len);
int tn_handshake(tn_conn *c, const char *data, int len);
void tn_unwind(tn_conn *c);
int tn_read(tn_conn *c, const char *data, int len, char *out, int cap);
int tn_take(tn_conn *c, char *out, int cap);
int tn_write(tn_conn *c, const char *data, int len, char *out, int cap);
int tn_shutdown(tn_conn *c, char *out, int cap);
const char *tn_reason(unsigned long err);
"""

#: The C sources of the module, in order: tlsconn.c uses keyhook.c's slots and pk_current.
SOURCES = ("keyhook.c", "tlsconn.c")

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "pylon.keys._keyhook",
    "\n".join((HERE / name).read_text() for name in SOURCES),
    libraries=["ssl", "crypto", "dl"],
    extra_compile_args=["-O2", "-Wno-deprecated-declarations", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = ffibuilder.compile(tmpdir=tmp, verbose=False)
        target = HERE / pathlib.Path(built).name
        pathlib.Path(built).replace(target)
        print(target)
