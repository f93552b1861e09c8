/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Known-answer tests of the luks driver's crypto (block/luks-crypto.c):
 * PBKDF2 (RFC 6070 for HMAC-SHA1, RFC 7914 section 11 for HMAC-SHA256,
 * SHA512 as Python's hashlib computes it), XTS-AES (IEEE 1619 vectors 1, 2
 * and 10), CBC with essiv, the anti-forensic merge, and the header's byte
 * order. Expected values that no standard lists were computed with
 * Python's hashlib and pyca/cryptography, not with this code.
 */
#include "block/luks.h"

static void unhex(const char *hex, uint8_t *out, size_t len)
{
    g_assert_cmpuint(strlen(hex), ==, 2 * len);
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        g_assert(sscanf(hex + 2 * i, "%2x", &v) == 1);
        out[i] = v;
    }
}

static void assert_hex(const uint8_t *buf, size_t len, const char *hex)
{
    g_autofree uint8_t *want = g_malloc(len);

    unhex(hex, want, len);
    g_assert(memcmp(buf, want, len) == 0);
}

static void sha256_hex(const uint8_t *buf, size_t len, const char *hex)
{
    uint8_t d[32];

    luks_hash(luks_hash_find("sha256"), NULL, 0, buf, len, d);
    assert_hex(d, sizeof(d), hex);
}

static void pbkdf2_case(const char *hash, const char *pass, size_t plen,
                        const char *salt, size_t slen, uint32_t iters,
                        size_t len, const char *hex)
{
    uint8_t out[128];

    g_assert(len <= sizeof(out));
    luks_pbkdf2(luks_hash_find(hash), (const uint8_t *)pass, plen,
                (const uint8_t *)salt, slen, iters, out, len);
    assert_hex(out, len, hex);
}

static void test_pbkdf2(void)
{
    /* RFC 6070 */
    pbkdf2_case("sha1", "password", 8, "salt", 4, 1, 20,
                "0c60c80f961f0e71f3a9b524af6012062fe037a6");
    pbkdf2_case("sha1", "password", 8, "salt", 4, 2, 20,
                "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
    pbkdf2_case("sha1", "password", 8, "salt", 4, 4096, 20,
                "4b007901b765489abead49d926f721d065a429c1");
    pbkdf2_case("sha1", "passwordPASSWORDpassword", 24,
                "saltSALTsaltSALTsaltSALTsaltSALTsalt", 36, 4096, 25,
                "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038");
    /* RFC 7914, section 11 */
    pbkdf2_case("sha256", "passwd", 6, "salt", 4, 1, 64,
                "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c2"
                "0dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd50911"
                "2041d3a19783");
    pbkdf2_case("sha256", "Password", 8, "NaCl", 4, 80000, 64,
                "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b"
                "34ab56a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f"
                "62b397f33c8d");
    /* NUL bytes inside, output longer than one block */
    pbkdf2_case("sha512", "pass\0word", 9, "sa\0lt", 5, 1000, 70,
                "c50f36d34df3c2310621ce3b3815bb63af64415840884f3902e1566a44"
                "86e59811df5459af650b62035052e6eb80d08f37c8a0a40ad8e9a0116e"
                "9522eacb08f31ca1ce501149");
    g_assert(luks_hash_find("sha3") == NULL);
}

/* Through the sector cipher: xts-plain64's IV of sector n is IEEE 1619's
 * data unit sequence number n. */
static void xts_case(const char *alg, const char *key_hex, size_t key_len,
                     uint64_t sector, const uint8_t *pt, size_t len,
                     uint8_t *ct)
{
    uint8_t key[64];
    LuksCipher *c;

    unhex(key_hex, key, key_len);
    c = luks_cipher_new(luks_cipher_find(alg), LUKS_MODE_XTS,
                        LUKS_IVGEN_PLAIN64, NULL, key, key_len, NULL);
    memcpy(ct, pt, len);
    luks_cipher_encrypt(c, sector, ct, len);
    luks_cipher_free(c);
}

static void test_xts(void)
{
    uint8_t pt[512], ct[512], back[512];
    LuksCipher *c;
    uint8_t key[64];

    /* Vector 1: AES-128, both keys zero, zero data (only 32 bytes are
     * in the vector; XTS blocks are independent). */
    memset(pt, 0, sizeof(pt));
    xts_case("aes-128", "0000000000000000000000000000000000000000000000000"
             "000000000000000", 32, 0, pt, 512, ct);
    assert_hex(ct, 32, "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02"
               "c2652fbf922e");
    /* Vector 2 */
    memset(pt, 0x44, sizeof(pt));
    xts_case("aes-128", "1111111111111111111111111111111122222222222222222"
             "222222222222222", 32, 0x3333333333, pt, 512, ct);
    assert_hex(ct, 32, "c454185e6a16936e39334038acef838bfb186fff7480adc42893"
               "82ecd6d394f0");
    /* Vector 10: AES-256, a whole 512-byte data unit 0xff */
    for (int i = 0; i < 512; i++) {
        pt[i] = i & 0xff;
    }
    xts_case("aes-256", "2718281828459045235360287471352662497757247093699"
             "959574966967627314159265358979323846264338327950288419716939"
             "9375105820974944592", 64, 0xff, pt, 512, ct);
    assert_hex(ct, 32, "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae"
               "12d414a3e63b");
    assert_hex(ct + 480, 32, "773dad38014bd2092fa755c824bb5e54c4f36ffda9fc"
               "ea70b9c6e693e148c151");
    sha256_hex(ct, 512, "e97e974fa393af794f7a4684395814cf820de60a01eaec677d"
               "87b452e316b364");
    /* and back */
    unhex("2718281828459045235360287471352662497757247093699959574966967627"
          "3141592653589793238462643383279502884197169399375105820974944592",
          key, 64);
    c = luks_cipher_new(luks_cipher_find("aes-256"), LUKS_MODE_XTS,
                        LUKS_IVGEN_PLAIN64, NULL, key, 64, NULL);
    memcpy(back, ct, 512);
    luks_cipher_decrypt(c, 0xff, back, 512);
    g_assert(memcmp(back, pt, 512) == 0);
    luks_cipher_free(c);
}

static void test_cbc_essiv(void)
{
    uint8_t key[16], buf[512], pt[512];
    LuksCipher *c;
    Error *err = NULL;

    for (int i = 0; i < 16; i++) {
        key[i] = i;
    }
    for (int i = 0; i < 512; i++) {
        pt[i] = i & 0xff;
    }
    /* aes-128 data, essiv with sha256: an aes-256 IV cipher */
    c = luks_cipher_new(luks_cipher_find("aes-128"), LUKS_MODE_CBC,
                        LUKS_IVGEN_ESSIV, luks_hash_find("sha256"), key, 16,
                        NULL);
    memcpy(buf, pt, 512);
    luks_cipher_encrypt(c, 5, buf, 512);
    assert_hex(buf, 16, "33f8447dbf9412be02c63f77ecb81d3e");
    sha256_hex(buf, 512, "800bc7ac24b9ee7fd073b8ab9d4263cc915e95221193812"
               "6a782c8d32f749e42");
    luks_cipher_decrypt(c, 5, buf, 512);
    g_assert(memcmp(buf, pt, 512) == 0);
    luks_cipher_free(c);

    /* sha1's 20 bytes key no AES */
    c = luks_cipher_new(luks_cipher_find("aes-128"), LUKS_MODE_CBC,
                        LUKS_IVGEN_ESSIV, luks_hash_find("sha1"), key, 16,
                        &err);
    g_assert(!c && err);
    error_free(err);
    err = NULL;
    /* wrong key length */
    c = luks_cipher_new(luks_cipher_find("aes-256"), LUKS_MODE_XTS,
                        LUKS_IVGEN_PLAIN64, NULL, key, 16, &err);
    g_assert(!c && err);
    error_free(err);
}

static void af_merge_case(const char *hash, size_t bs, const char *hex)
{
    size_t len = bs * LUKS_STRIPES;
    g_autofree uint8_t *in = g_malloc(len);
    uint8_t key[64];

    for (size_t i = 0; i < len; i++) {
        in[i] = (i * 7) & 0xff;
    }
    luks_af_merge(luks_hash_find(hash), in, bs, LUKS_STRIPES, key);
    assert_hex(key, bs, hex);
}

static void test_af(void)
{
    const LuksHashAlg *h = luks_hash_find("sha256");
    g_autofree uint8_t *split = g_malloc(64 * LUKS_STRIPES);
    uint8_t key[64], back[64];

    /* 32 bytes: whole digests; 50 bytes with sha1: a partial last one */
    af_merge_case("sha256", 32, "60d71a5f21534975a525ed55a2a244da221b005f9"
                  "33b3976e38292e2c8eea704");
    af_merge_case("sha1", 50, "7042bc061304257bd8110b997c48a37559931648126f"
                  "b76759d79eaf3a130f74d47a20f4c758ecc3f274d64fce489114897c");
    for (int i = 0; i < 64; i++) {
        key[i] = 0xa0 ^ i;
    }
    g_assert(luks_af_split(h, key, 64, LUKS_STRIPES, split,
                           NULL) == 0);
    luks_af_merge(h, split, 64, LUKS_STRIPES, back);
    g_assert(memcmp(key, back, 64) == 0);
    /* a single changed bit anywhere loses the key */
    split[12345] ^= 1;
    luks_af_merge(h, split, 64, LUKS_STRIPES, back);
    g_assert(memcmp(key, back, 64) != 0);
}

static void test_header(void)
{
    LuksDiskHeader d;
    LuksHeader h, h2;

    memset(&h, 0, sizeof(h));
    h.version = 1;
    strcpy(h.cipher_name, "aes");
    strcpy(h.cipher_mode, "xts-plain64");
    strcpy(h.hash_spec, "sha256");
    h.payload_offset = 4040;
    h.key_bytes = 64;
    h.mk_digest_iter = 0x01020304;
    strcpy(h.uuid, "d9c7d313-6048-4456-82de-ba6befd7f8c6");
    h.slots[7].active = LUKS_SLOT_ACTIVE;
    h.slots[7].key_offset = 3536;
    luks_header_to_disk(&h, &d);
    g_assert(memcmp(d.magic, "LUKS\xba\xbe\x00\x01", 8) == 0);
    g_assert(memcmp((uint8_t *)&d + 104, "\x00\x00\x0f\xc8", 4) == 0);
    g_assert(memcmp((uint8_t *)&d + 164, "\x01\x02\x03\x04", 4) == 0);
    g_assert(memcmp((uint8_t *)&d + 208 + 7 * 48, "\x00\xac\x71\xf3", 4)
             == 0);
    g_assert(luks_header_to_cpu(&d, &h2));
    g_assert(memcmp(&h, &h2, sizeof(h)) == 0);
    d.magic[0] = 'l';
    g_assert(!luks_header_to_cpu(&d, &h2));
}

int main(int argc, char **argv)
{
    test_pbkdf2();
    test_xts();
    test_cbc_essiv();
    test_af();
    test_header();
    printf("PASS test-luks\n");
    return 0;
}
