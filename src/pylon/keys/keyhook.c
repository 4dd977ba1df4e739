/* pylon private-key hook: keys whose private operations leave OpenSSL.
 *
 * A hooked key is a legacy RSA / EC_KEY carrying only the certificate's public
 * key and a custom RSA_METHOD / EC_KEY_METHOD. OpenSSL 3 treats such a key as
 * "foreign" and routes libssl's signatures through the method, so every
 * CertificateVerify / ServerKeyExchange signature lands in pk_rsa_priv_enc or
 * pk_ec_sign below. Those reduce every operation to two primitives a provider
 * implements: raw RSA (m^d mod n on an already padded block) and ECDSA over a
 * digest.
 *
 * Suspension uses SSL_MODE_ASYNC: inside an ASYNC job the callback parks the
 * operation in the connection's slot (pk_current, set by the caller around
 * SSL_do_handshake) and pauses the job; SSL_do_handshake then returns
 * SSL_ERROR_WANT_ASYNC and the event loop serves other connections until the
 * provider completes the slot and the handshake is called again. Outside a job
 * (blocking use, client contexts under a foreign transport) the operation runs
 * synchronously: inline for in-process keys, through pk_sync_op otherwise.
 */
#include <dlfcn.h>
#include <string.h>
#include <openssl/async.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define PK_IDLE 0
#define PK_PENDING 1
#define PK_DONE 2
#define PK_FAILED 3
#define PK_RSA 1
#define PK_ECDSA 2
#define PK_MAX 512

typedef struct pk_key {
    int type;          /* PK_RSA or PK_ECDSA */
    int bits;
    int handle;        /* the Python provider's id for this key */
    RSA *rsa;          /* in-process private key (NULL when it lives elsewhere) */
    EC_KEY *ec;
    const BIGNUM *n, *e, *p, *q, *dp, *dq, *iqmp; /* views into rsa, for crypto_mb */
    const BIGNUM *d_ec;                        /* view into ec */
} pk_key;

typedef struct pk_slot {
    int state;
    int kind;
    pk_key *key;
    int in_len;
    unsigned char in[PK_MAX];
    int out_len;
    unsigned char out[PK_MAX];
} pk_slot;

static int pk_sync_op(pk_slot *);  /* cffi extern "Python": runs a provider in Python */

static __thread pk_slot *pk_current;
static RSA_METHOD *pk_rsa_method;
static EC_KEY_METHOD *pk_ec_method;
static int pk_rsa_idx = -1, pk_ec_idx = -1;

static void pk_enter(pk_slot *slot) { pk_current = slot; }

/* Perform the slot's operation with the in-process private key. Thread-safe; no GIL needed. */
static void pk_slot_run(pk_slot *slot)
{
    pk_key *key = slot->key;
    int ok = 0;
    if (slot->kind == PK_RSA && key->rsa != NULL) {
        ok = RSA_private_encrypt(slot->in_len, slot->in, slot->out, key->rsa, RSA_NO_PADDING) == slot->in_len;
        slot->out_len = slot->in_len;
    } else if (slot->kind == PK_ECDSA && key->ec != NULL) {
        unsigned int len = 0;
        ok = ECDSA_sign(0, slot->in, slot->in_len, slot->out, &len, key->ec) == 1;
        slot->out_len = (int)len;
    }
    if (!ok) ERR_clear_error();
    slot->state = ok ? PK_DONE : PK_FAILED;
}

static void pk_slot_complete(pk_slot *slot, const unsigned char *out, int len)
{
    if (len <= 0 || len > PK_MAX) { slot->state = PK_FAILED; return; }
    memcpy(slot->out, out, len);
    slot->out_len = len;
    slot->state = PK_DONE;
}

static void pk_slot_fail(pk_slot *slot) { slot->state = PK_FAILED; }

/* Run `slot` to completion: suspend in an ASYNC job, else synchronously. 1 on success. */
static int pk_perform(pk_slot *slot)
{
    pk_slot *conn = pk_current;
    if (conn != NULL && ASYNC_get_current_job() != NULL) {
        conn->kind = slot->kind;
        conn->key = slot->key;
        conn->in_len = slot->in_len;
        memcpy(conn->in, slot->in, slot->in_len);
        conn->state = PK_PENDING;
        while (conn->state == PK_PENDING)
            ASYNC_pause_job();
        int ok = conn->state == PK_DONE;
        if (ok) { slot->out_len = conn->out_len; memcpy(slot->out, conn->out, conn->out_len); }
        conn->state = PK_IDLE;
        return ok;
    }
    if ((slot->kind == PK_RSA && slot->key->rsa) || (slot->kind == PK_ECDSA && slot->key->ec))
        pk_slot_run(slot);
    else
        slot->state = pk_sync_op(slot) ? PK_DONE : PK_FAILED;
    return slot->state == PK_DONE;
}

static int pk_rsa_priv_enc(int flen, const unsigned char *from, unsigned char *to, RSA *rsa, int padding)
{
    pk_key *key = RSA_get_ex_data(rsa, pk_rsa_idx);
    int size = RSA_size(rsa);
    pk_slot slot;
    if (key == NULL || size > PK_MAX) return -1;
    slot.kind = PK_RSA; slot.key = key; slot.in_len = size; slot.state = PK_IDLE;
    if (padding == RSA_NO_PADDING && flen == size)
        memcpy(slot.in, from, size);                      /* RSA-PSS: libcrypto already encoded */
    else if (padding == RSA_PKCS1_PADDING) {
        if (RSA_padding_add_PKCS1_type_1(slot.in, size, from, flen) != 1) return -1;
    } else
        return -1;
    if (!pk_perform(&slot) || slot.out_len != size) return -1;
    memcpy(to, slot.out, size);
    return size;
}

/* RSA key transport (TLS 1.2 kRSA) is deliberately unsupported: pylon's cipher lists exclude it. */
static int pk_rsa_priv_dec(int flen, const unsigned char *from, unsigned char *to, RSA *rsa, int padding)
{
    return -1;
}

static int pk_ec_sign(int type, const unsigned char *dgst, int dlen, unsigned char *sig,
                      unsigned int *siglen, const BIGNUM *kinv, const BIGNUM *r, EC_KEY *eckey)
{
    pk_key *key = EC_KEY_get_ex_data(eckey, pk_ec_idx);
    pk_slot slot;
    int cap = ECDSA_size(eckey);
    if (key == NULL || dlen <= 0 || dlen > 64) return 0;
    slot.kind = PK_ECDSA; slot.key = key; slot.in_len = dlen; slot.state = PK_IDLE;
    memcpy(slot.in, dgst, dlen);
    if (!pk_perform(&slot) || slot.out_len > cap) return 0;
    memcpy(sig, slot.out, slot.out_len);
    *siglen = (unsigned int)slot.out_len;
    return 1;
}

static int pk_init(void)
{
    if (pk_rsa_method != NULL) return 1;
    pk_rsa_idx = RSA_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    pk_ec_idx = EC_KEY_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    RSA_METHOD *rm = RSA_meth_dup(RSA_PKCS1_OpenSSL());
    EC_KEY_METHOD *em = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    if (pk_rsa_idx < 0 || pk_ec_idx < 0 || rm == NULL || em == NULL) return 0;
    RSA_meth_set1_name(rm, "pylon key provider");
    RSA_meth_set_flags(rm, RSA_meth_get_flags(rm) | RSA_FLAG_EXT_PKEY);
    RSA_meth_set_priv_enc(rm, pk_rsa_priv_enc);
    RSA_meth_set_priv_dec(rm, pk_rsa_priv_dec);
    int (*sign_setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = NULL;
    ECDSA_SIG *(*sign_sig)(const unsigned char *, int, const BIGNUM *, const BIGNUM *, EC_KEY *) = NULL;
    int (*sign)(int, const unsigned char *, int, unsigned char *, unsigned int *, const BIGNUM *,
                const BIGNUM *, EC_KEY *) = NULL;
    EC_KEY_METHOD_get_sign(em, &sign, &sign_setup, &sign_sig);
    EC_KEY_METHOD_set_sign(em, pk_ec_sign, sign_setup, sign_sig);
    pk_rsa_method = rm;
    pk_ec_method = em;
    return 1;
}

/* A key record for the public key of `der` (SubjectPublicKeyInfo); 0 if not RSA / P-256. */
static int pk_key_init(pk_key *key, const unsigned char *spki, long len, int handle)
{
    EVP_PKEY *pub = d2i_PUBKEY(NULL, &spki, len);
    memset(key, 0, sizeof(*key));
    key->handle = handle;
    if (pub == NULL) { ERR_clear_error(); return 0; }
    int ok = 1;
    if (EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA) {
        key->type = PK_RSA;
    } else if (EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC) {
        key->type = PK_ECDSA;
    } else ok = 0;
    key->bits = EVP_PKEY_get_bits(pub);
    EVP_PKEY_free(pub);
    return ok;
}

/* Load the in-process private key (PEM) into `key`: for the offload and cryptomb providers. */
static int pk_key_load_private(pk_key *key, const char *pem, int len)
{
    BIO *bio = BIO_new_mem_buf(pem, len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (pkey == NULL) { ERR_clear_error(); return 0; }
    int ok = 0;
    if (key->type == PK_RSA && EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA) {
        key->rsa = EVP_PKEY_get1_RSA(pkey);
        RSA_get0_key(key->rsa, &key->n, &key->e, NULL);
        RSA_get0_factors(key->rsa, &key->p, &key->q);
        RSA_get0_crt_params(key->rsa, &key->dp, &key->dq, &key->iqmp);
        ok = key->rsa != NULL;
    } else if (key->type == PK_ECDSA && EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC) {
        key->ec = EVP_PKEY_get1_EC_KEY(pkey);
        key->d_ec = key->ec ? EC_KEY_get0_private_key(key->ec) : NULL;
        ok = key->ec != NULL;
    }
    EVP_PKEY_free(pkey);
    return ok;
}

/* Install on `ctx` a hooked key for the current certificate (the one just loaded). */
static int pk_install(void *vctx, pk_key *key)
{
    SSL_CTX *ctx = vctx;
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    EVP_PKEY *pub = cert ? X509_get0_pubkey(cert) : NULL;
    EVP_PKEY *hooked = EVP_PKEY_new();
    int ok = 0;
    if (pub == NULL || hooked == NULL || !pk_init()) goto done;
    if (key->type == PK_RSA && EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA) {
        const BIGNUM *n = NULL, *e = NULL;
        RSA *src = EVP_PKEY_get1_RSA(pub);
        RSA *r = RSA_new();
        if (src == NULL || r == NULL) { RSA_free(src); RSA_free(r); goto done; }
        RSA_get0_key(src, &n, &e, NULL);
        RSA_set_method(r, pk_rsa_method);
        RSA_set0_key(r, BN_dup(n), BN_dup(e), NULL);
        RSA_set_ex_data(r, pk_rsa_idx, key);
        RSA_free(src);
        if (EVP_PKEY_assign_RSA(hooked, r) != 1) { RSA_free(r); goto done; }
    } else if (key->type == PK_ECDSA && EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC) {
        EC_KEY *src = EVP_PKEY_get1_EC_KEY(pub);
        EC_KEY *k = EC_KEY_new();
        if (src == NULL || k == NULL) { EC_KEY_free(src); EC_KEY_free(k); goto done; }
        EC_KEY_set_method(k, pk_ec_method);
        EC_KEY_set_group(k, EC_KEY_get0_group(src));
        EC_KEY_set_public_key(k, EC_KEY_get0_public_key(src));
        EC_KEY_set_ex_data(k, pk_ec_idx, key);
        EC_KEY_free(src);
        if (EVP_PKEY_assign_EC_KEY(hooked, k) != 1) { EC_KEY_free(k); goto done; }
    } else goto done;
    ok = SSL_CTX_use_PrivateKey(ctx, hooked) == 1 && SSL_CTX_check_private_key(ctx) == 1;
done:
    EVP_PKEY_free(hooked);
    if (!ok) ERR_clear_error();
    return ok;
}

static int pk_use_chain_file(void *vctx, const char *path)
{
    int ok = SSL_CTX_use_certificate_chain_file((SSL_CTX *)vctx, path) == 1;
    if (!ok) ERR_clear_error();
    return ok;
}

static void pk_set_async(void *vctx) { SSL_CTX_set_mode((SSL_CTX *)vctx, SSL_MODE_ASYNC); }
static long pk_get_mode(void *vctx) { return SSL_CTX_get_mode((SSL_CTX *)vctx); }
static unsigned long pk_openssl_version(void) { return OpenSSL_version_num(); }
static void *pk_ssl_ctx_new_address(void) { return (void *)&SSL_CTX_new; }

/* ---- crypto_mb (Intel multi-buffer), resolved at run time so it stays optional ---- */

typedef unsigned int (*mb_rsa_crt_fn)(const unsigned char *const[8], unsigned char *const[8],
                                      const BIGNUM *const[8], const BIGNUM *const[8], const BIGNUM *const[8],
                                      const BIGNUM *const[8], const BIGNUM *const[8], int);
typedef unsigned int (*mb_rsa_pub_fn)(const unsigned char *const[8], unsigned char *const[8],
                                      const BIGNUM *const[8], const BIGNUM *const[8], int);
typedef unsigned int (*mb_ecdsa_fn)(unsigned char *[8], unsigned char *[8], const unsigned char *const[8],
                                    const BIGNUM *const[8], const BIGNUM *const[8], unsigned char *);
typedef int (*mb_applicable_fn)(unsigned long long);

static mb_rsa_crt_fn mb_rsa_crt;
static mb_rsa_pub_fn mb_rsa_pub;
static mb_ecdsa_fn mb_ecdsa;

/* dlopen libcrypto_mb (its runtime deps first, by path: it has no RPATH). 0 ok, else a reason code:
 * 1 library missing, 2 symbol missing, 3 CPU not applicable. */
static int mb_load(const char *const paths[], int count)
{
    void *h = NULL;
    for (int i = 0; i < count; i++) {
        h = dlopen(paths[i], RTLD_NOW | RTLD_GLOBAL);
        if (h == NULL) return 1;
    }
    mb_applicable_fn applicable = (mb_applicable_fn)dlsym(h, "mbx_is_crypto_mb_applicable");
    mb_rsa_crt = (mb_rsa_crt_fn)dlsym(h, "mbx_rsa_private_crt_ssl_mb8");
    mb_rsa_pub = (mb_rsa_pub_fn)dlsym(h, "mbx_rsa_public_ssl_mb8");
    mb_ecdsa = (mb_ecdsa_fn)dlsym(h, "mbx_nistp256_ecdsa_sign_ssl_mb8");
    if (!applicable || !mb_rsa_crt || !mb_rsa_pub || !mb_ecdsa) { mb_rsa_crt = NULL; return 2; }
    if (!applicable(0)) { mb_rsa_crt = NULL; return 3; }
    return 0;
}

/* One crypto_mb RSA batch: up to 8 slots whose keys have the same size (e = 65537). Each result is
 * re-encrypted with the public key and compared with the input before it is used (no CRT fault
 * leaks a factor). Returns how many lanes succeeded; every slot ends DONE or FAILED. */
static int mb_rsa_batch(pk_slot *const slots[], int count)
{
    const unsigned char *from[8] = {0};
    unsigned char *to[8] = {0};
    const BIGNUM *p[8] = {0}, *q[8] = {0}, *dp[8] = {0}, *dq[8] = {0}, *iq[8] = {0}, *n[8] = {0}, *e[8] = {0};
    unsigned char check[8][PK_MAX];
    unsigned char *check_pa[8] = {0};
    const unsigned char *to_c[8] = {0};
    if (count < 1 || count > 8 || mb_rsa_crt == NULL) return 0;
    int bits = slots[0]->key->bits;
    for (int i = 0; i < count; i++) {
        pk_key *k = slots[i]->key;
        from[i] = slots[i]->in; to[i] = slots[i]->out; to_c[i] = slots[i]->out; check_pa[i] = check[i];
        p[i] = k->p; q[i] = k->q; dp[i] = k->dp; dq[i] = k->dq; iq[i] = k->iqmp; n[i] = k->n; e[i] = k->e;
    }
    unsigned int st = mb_rsa_crt(from, to, p, q, dp, dq, iq, bits);
    unsigned int vst = mb_rsa_pub(to_c, check_pa, e, n, bits);
    int good = 0;
    for (int i = 0; i < count; i++) {
        int len = slots[i]->in_len;
        int ok = ((st >> (4 * i)) & 0xF) == 0 && ((vst >> (4 * i)) & 0xF) == 0 &&
                 CRYPTO_memcmp(check[i], slots[i]->in, len) == 0;
        slots[i]->out_len = len;
        slots[i]->state = ok ? PK_DONE : PK_FAILED;
        good += ok;
    }
    OPENSSL_cleanse(check, sizeof(check));
    return good;
}

/* One crypto_mb ECDSA P-256 batch; fresh ephemeral keys from OpenSSL's RNG; DER signatures out. */
static int mb_ecdsa_batch(pk_slot *const slots[], int count)
{
    unsigned char r[8][32], s[8][32];
    unsigned char *r_pa[8] = {0}, *s_pa[8] = {0};
    const unsigned char *msg[8] = {0};
    const BIGNUM *eph[8] = {0}, *reg[8] = {0};
    BIGNUM *k[8] = {0};
    int good = 0;
    if (count < 1 || count > 8 || mb_ecdsa == NULL) return 0;
    for (int i = 0; i < count; i++) {
        const BIGNUM *order = EC_GROUP_get0_order(EC_KEY_get0_group(slots[i]->key->ec));
        k[i] = BN_secure_new();
        if (k[i] == NULL || slots[i]->in_len != 32) goto out;
        do { if (!BN_priv_rand_range(k[i], order)) goto out; } while (BN_is_zero(k[i]));
        r_pa[i] = r[i]; s_pa[i] = s[i]; msg[i] = slots[i]->in; eph[i] = k[i]; reg[i] = slots[i]->key->d_ec;
    }
    unsigned int st = mb_ecdsa(r_pa, s_pa, msg, eph, reg, NULL);
    for (int i = 0; i < count; i++) {
        int ok = ((st >> (4 * i)) & 0xF) == 0;
        if (ok) {
            ECDSA_SIG *sig = ECDSA_SIG_new();
            BIGNUM *br = BN_bin2bn(r[i], 32, NULL), *bs = BN_bin2bn(s[i], 32, NULL);
            unsigned char *der = slots[i]->out;
            ok = sig && br && bs && ECDSA_SIG_set0(sig, br, bs);
            if (!ok) { BN_free(br); BN_free(bs); }
            slots[i]->out_len = ok ? i2d_ECDSA_SIG(sig, &der) : 0;
            ok = ok && slots[i]->out_len > 0;
            ECDSA_SIG_free(sig);
        }
        slots[i]->state = ok ? PK_DONE : PK_FAILED;
        good += ok;
    }
out:
    for (int i = 0; i < count; i++) {
        BN_clear_free(k[i]);
        if (good == 0) slots[i]->state = PK_FAILED;
    }
    ERR_clear_error();
    return good;
}
